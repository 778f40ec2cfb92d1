"""Torch-free option tables of the composition forms (issue #17):

    adapter small = compress senti { density: 0.1, quantize: ternary }
    model twin = merge twin { base: base, models: [base + a, base + b], router: by_example }
    model fit = merge atlas { base: base, models: [base + a, base + b], fit_on: "dev.jsonl" }

The checker judges a block against these tables before anything is built;
the runtime (runtime/build.py) passes the same options to the library
functions (merge/compress.py compress_lora, merge/twin.py build_twin,
merge/atlas.py fit_atlas), whose own checks repeat these rules for library
callers. `base`, `models`, `router` and `fit_on` are read by the checker
itself (they name models, a router and data); every other option is a
plain value judged here.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..frozen import frozen
from ..problems import Problem
from ..suggest import did_you_mean


@frozen
class ComposeOption:
    type: str  # "float" | "int" | "choice"
    default: Any  # None: optional with no default (the library decides)
    low: float | None = None  # bounds for numbers
    high: float | None = None
    low_open: bool = False  # (low, ...] rather than [low, ...]
    choices: tuple = ()  # for "choice": allowed words, first the default
    doc: str = ""

    def interval(self) -> str:
        left = "(" if self.low_open else "["
        high = "inf)" if self.high is None else f"{self.high:g}]"
        return f"{left}{self.low:g}, {high}" if self.low is not None else f"(-inf, {high}"

    def problem(self, name: str, value: Any) -> str:
        """What is wrong with `value` for this option, or ""."""
        if self.type == "choice":
            if value not in self.choices:
                return f"{name} must be one of {', '.join(self.choices)}, got {value!r}"
            return ""
        ok_types = (int,) if self.type == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_types):
            return f"{name} must be {'an integer' if self.type == 'int' else 'a number'}, got {value!r}"
        if value != value or value in (float("inf"), float("-inf")):
            return f"{name} must be a finite number, got {value!r}"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"{name} must be in {self.interval()}, got {value!r}"
        if self.high is not None and value > self.high:
            return f"{name} must be in {self.interval()}, got {value!r}"
        return ""


QUANTIZE = ("ternary", "int8", "none")  # merge/compress.py QUANTIZE (a test keeps them equal)
GRANULARITY = ("block", "tensor", "model")  # merge/atlas.py GRANULARITY
TWIN_CORES = ("ties", "task_arithmetic", "dare_ties", "breadcrumbs", "pcb", "tsv", "linear")  # twin.CORE_METHODS
ENCODERS = ("minilm", "base")  # runtime/pool.py ENCODERS
DEFAULT_ROUTER = "by_example"  # the twin's router when none is declared: each expert's training prompts

COMPRESS: dict[str, ComposeOption] = {
    "density": ComposeOption("float", 0.1, 0.0, 1.0, low_open=True, doc="fraction of each LoRA factor kept"),
    "quantize": ComposeOption("choice", "ternary", choices=QUANTIZE, doc="how the kept values are stored"),
    "alpha": ComposeOption(
        "float",
        None,
        0.0,
        None,
        low_open=True,
        doc="ComPEFT's alpha * std scale (ternary only; default: least squares)",
    ),
}

TWIN: dict[str, ComposeOption] = {
    "core": ComposeOption("choice", "ties", choices=TWIN_CORES, doc="the merge method of the shared core"),
    "density": ComposeOption("float", 0.5, 0.0, 1.0, low_open=True, doc="the core merge's density (ties, dare, pcb)"),
    "rank": ComposeOption("int", None, 1, None, doc="rank of each exclusive part (default: the sum of the ranks)"),
    "examples": ComposeOption("int", 16, 1, None, doc="training prompts per expert the default router embeds"),
    "top_k": ComposeOption("int", None, 1, None, doc="experts mixed per row (default: all)"),
    "temperature": ComposeOption("float", 0.05, 0.0, None, low_open=True, doc="softmax temperature of the scores"),
    "encoder": ComposeOption("choice", "minilm", choices=ENCODERS, doc="sentence model or the base's hidden states"),
}

ATLAS: dict[str, ComposeOption] = {
    "granularity": ComposeOption("choice", "block", choices=GRANULARITY, doc="one coefficient per block/tensor/model"),
    "steps": ComposeOption("int", 20, 1, None, doc="Adam steps"),
    "lr": ComposeOption("float", 0.01, 0.0, None, low_open=True, doc="learning rate of the coefficients"),
    "init": ComposeOption("float", None, doc="initial coefficient (default: 1 / number of models)"),
    "batch_size": ComposeOption("int", 8, 1, None, doc="rows per step"),
    "seed": ComposeOption("int", 0, 0, None, doc="shuffling seed"),
    "max_length": ComposeOption("int", 512, 1, None, doc="tokens per row"),
}

# The merges that compose adapters rather than mix tensors: `merge twin`,
# `merge atlas`. Their options and the keys the checker reads itself.
MERGES: dict[str, dict[str, ComposeOption]] = {"twin": TWIN, "atlas": ATLAS}
MODEL_KEYS = {"twin": ("base", "models", "router"), "atlas": ("base", "models", "fit_on")}
REQUIRED = {"twin": ("base", "models"), "atlas": ("base", "models", "fit_on")}
MIN_MODELS = {"twin": 2, "atlas": 1}
FORMS = {"compress": COMPRESS, **MERGES}


def option_names(form: str) -> list[str]:
    return [*MODEL_KEYS.get(form, ()), *FORMS[form]]


def check_option(form: str, name: str, value: Any) -> Problem | None:
    """The problem with one plain option of a form (`compress`, `twin`,
    `atlas`), or None. Keys the checker reads itself are not judged here."""
    table = FORMS[form]
    if name not in table:
        title = "compress" if form == "compress" else f"merge {form}"
        return Problem(
            f"unknown option '{name}' for {title}",
            did_you_mean(name, option_names(form), known="options"),
            code="unknown-option",
            option=name,
        )
    spec = table[name]
    message = spec.problem(name, value)
    if not message:
        return None
    hint = did_you_mean(str(value), spec.choices) if spec.type == "choice" else ""
    return Problem(message, hint or f"{name}: {spec.doc}", code="bad-value", option=name)


def check_combination(form: str, given: Mapping[str, Any]) -> Problem | None:
    """Rules across options: compress's alpha is ternary's scale only."""
    if form == "compress" and "alpha" in given and given.get("quantize", "ternary") != "ternary":
        return Problem(
            "alpha (ComPEFT's alpha * std scale) applies to quantize: ternary only",
            "drop alpha, or use quantize: ternary",
            code="bad-value",
            option="alpha",
        )
    return None


def resolved(form: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The options with defaults filled in (None defaults left out)."""
    out = {k: spec.default for k, spec in FORMS[form].items() if spec.default is not None}
    out.update(given)
    return out
