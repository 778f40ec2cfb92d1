"""Options of the model-building steps a script writes besides merges
(`train lora on ... { ... }`, `fuse contrastive(...)`): one torch-free table
each, that the checker validates a script against and the runtime reads its
defaults and rules from. (Merge options live in lmlang.merge.options, decoder
options in lmlang.decoders.)

Imported by `lmlang check`, so it imports nothing heavy.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from ..frozen import frozen
from ..problems import Problem
from ..suggest import did_you_mean


@frozen
class Range:
    """A numeric option: its type, default and bounds (open or closed)."""

    type: str  # "int" | "number" | "names" (a non-empty list of strings)
    default: Any
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself excluded
    hi_open: bool = False  # hi itself excluded
    hint: str = ""  # shown with a value out of range
    doc: str = ""

    def bounds_text(self) -> str:
        """`positive`, `at least 8` or an interval (`in (0, 1)`, `in [0, 1)`)."""
        if self.hi is None:
            if self.lo == 0 and self.lo_open or (self.type == "int" and self.lo == 1):
                return "positive"
            return f"at least {self.lo}"
        return "in " + self.interval()

    def interval(self) -> str:
        """`(0, 1)`, `[0, 1)`, `(0.0, 1.0]`: the bounds as the table writes them."""
        return f"{'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"

    def fits(self, value: float) -> bool:
        low_ok = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
        high_ok = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        return low_ok and high_ok


# ---------------------------------------------------------------- training

_LR = Range(
    "number",
    1e-3,
    0,
    1,
    lo_open=True,
    hi_open=True,
    hint="a typical LoRA learning rate is 1e-4 to 1e-3",
    doc="AdamW learning rate",
)
# What every method's loop takes (lmlang's own training loop, not PEFT's).
_LOOP: dict[str, Range] = {
    "epochs": Range("int", 3, 1, doc="passes over the data"),
    "lr": _LR,
    "seed": Range("int", 0, doc="seed of the adapter's initialisation, dropout and data order"),
    "batch_size": Range("int", 8, 1, doc="rows per optimizer step"),
    "max_length": Range("int", 512, 8, doc="tokens per row; longer rows lose prompt tokens from the left"),
}
_ALPHA = Range("number", 16, 0, lo_open=True, doc="LoRA alpha (the update is scaled by alpha / r)")
_DROPOUT = Range("number", 0.0, 0, 1, hi_open=True, doc="dropout on the adapter's input")
_TARGETS = Range("names", ("q_proj", "v_proj"), doc="names of the modules that get an adapter")

# `train lora` as it always was: its normalized options (the adapter cache
# key) keep exactly these keys, so adapters trained before methods existed
# stay cached.
TRAIN_OPTIONS: dict[str, Range] = {
    "rank": Range("int", 8, 1, doc="LoRA rank r"),
    "alpha": _ALPHA,
    "epochs": _LOOP["epochs"],
    "lr": _LR,
    "target_modules": _TARGETS,
    "seed": _LOOP["seed"],
    "batch_size": _LOOP["batch_size"],
    "max_length": _LOOP["max_length"],
    "dropout": _DROPOUT,
}

# train METHOD on DATA { ... }: the options each PEFT method takes. DoRA is
# LoRA with a learned magnitude per output row (LoraConfig(use_dora=True));
# IA3 learns one scaling vector per module (on the output, or on the input of
# the feed-forward modules); AdaLoRA starts at rank init_r and prunes to an
# average of target_r over total_step steps (default: the run's step count).
TRAIN_METHODS: dict[str, dict[str, Range]] = {
    "lora": TRAIN_OPTIONS,
    "dora": TRAIN_OPTIONS,
    "ia3": {
        "target_modules": Range(
            "names", ("k_proj", "v_proj", "down_proj"), doc="names of the modules whose activations are scaled"
        ),
        "feedforward_modules": Range(
            "names",
            ("down_proj",),
            doc="the target modules whose input (not output) is scaled; a subset of target_modules",
        ),
        **_LOOP,
        "lr": Range("number", 3e-3, 0, 1, lo_open=True, hi_open=True, doc="AdamW learning rate"),
    },
    "adalora": {
        "init_r": Range("int", 12, 1, doc="the rank every module starts with"),
        "target_r": Range("int", 8, 1, doc="the average rank the budget prunes to"),
        "total_step": Range("int", None, 1, doc="steps of the rank schedule (default: the run's own step count)"),
        "alpha": _ALPHA,
        "dropout": _DROPOUT,
        "target_modules": _TARGETS,
        "orth_reg_weight": Range(
            "number", 0.5, 0, doc="weight of the penalty keeping P and Q orthogonal (the SVD form's ||PP^T - I||)"
        ),
        **_LOOP,
    },
}
TRAIN_METHOD_DOCS = {
    "lora": "low-rank update B A (Hu et al. 2021)",
    "dora": "LoRA plus a learned magnitude per output row (Liu et al. 2024)",
    "ia3": "learned scaling vectors on activations (Liu et al. 2022)",
    "adalora": "LoRA in SVD form whose rank budget is pruned while training (Zhang et al. 2023)",
}
# A script's `train` block also takes `base: MODEL` (what to train on) and
# `compatible_with: MODEL` (the old model an update must stay compatible with,
# MUSCLE); the checker resolves them as model expressions, the runtime gets them built.
TRAIN_MODEL_OPTIONS = ("base", "compatible_with")
# Options of every method that only mean something with `compatible_with`
# (kept out of the method tables so a plain adapter's cache key never changes).
COMPAT_OPTIONS: dict[str, Range] = {
    "flip_weight": Range(
        "number",
        1.0,
        0,
        lo_open=False,
        doc="weight of the term KL(old || new) on the rows the old model gets right (MUSCLE)",
    ),
}
_TYPE_WORDS = {"int": "an integer", "number": "a number", "names": "a list"}


def train_option_names(method: str = "lora") -> tuple[str, ...]:
    """Every option a `train METHOD` block takes, in documentation order."""
    return (*TRAIN_MODEL_OPTIONS, *TRAIN_METHODS[method], *COMPAT_OPTIONS)


def train_defaults(method: str = "lora") -> dict[str, Any]:
    return {k: list(o.default) if o.type == "names" else o.default for k, o in TRAIN_METHODS[method].items()}


def check_train_method(method: str) -> Problem | None:
    if method in TRAIN_METHODS:
        return None
    return Problem(
        f"unknown training method '{method}'",
        did_you_mean(method, TRAIN_METHODS, known="methods"),
        code="unknown-method",
    )


def check_train_option(name: str, value: Any, method: str = "lora") -> Problem | None:
    """The problem with one training hyperparameter (not `base`), or None."""
    table = TRAIN_METHODS[method]
    spec = table.get(name) or COMPAT_OPTIONS.get(name)
    if spec is None:
        hint = did_you_mean(name, table, known="options")
        owners = [m for m, t in TRAIN_METHODS.items() if name in t]
        if owners and not hint.startswith("did you mean"):
            hint = f"'{name}' is an option of {' and '.join(owners)}; {method} takes: {', '.join(table)}"
        where = f" for train {method}" if method != "lora" else ""
        return Problem(f"unknown training option '{name}'{where}", hint, code="unknown-option", option=name)
    if spec.type == "names":
        if not isinstance(value, (list, tuple)):
            return Problem(f"training option '{name}' must be a list", code="bad-type", option=name)
        if not value or not all(isinstance(m, str) and m for m in value):
            return Problem(
                f"{name} takes a non-empty list of module names",
                'for example ["q_proj", "v_proj"]',
                code="bad-value",
                option=name,
            )
        return None
    types = (int,) if spec.type == "int" else (int, float)
    if isinstance(value, bool) or not isinstance(value, types):
        return Problem(f"training option '{name}' must be {_TYPE_WORDS[spec.type]}", code="bad-type", option=name)
    if not math.isfinite(value) or not spec.fits(value):
        return Problem(
            f"training option '{name}' must be {spec.bounds_text()}", spec.hint, code="bad-value", option=name
        )
    return None


def check_train_combination(method: str, options: Mapping[str, Any]) -> Problem | None:
    """Rules across options (each option already valid on its own)."""
    out = {**train_defaults(method), **options}
    if method == "ia3":
        outside = sorted(set(out["feedforward_modules"]) - set(out["target_modules"]))
        if outside:
            return Problem(
                f"feedforward module '{outside[0]}' is not one of the target_modules",
                "IA3 scales the input of a feed-forward module it adapts: list it in target_modules too",
                code="bad-value",
                option="feedforward_modules" if "feedforward_modules" in options else "target_modules",
            )
    if method == "adalora" and out["target_r"] > out["init_r"]:
        return Problem(
            f"target_r ({out['target_r']}) is above init_r ({out['init_r']})",
            "AdaLoRA prunes from init_r down to target_r",
            code="bad-value",
            option="target_r" if "target_r" in options else "init_r",
        )
    return None


def normalize_train_options(
    options: Mapping[str, Any] | None, method: str = "lora"
) -> tuple[dict[str, Any], list[Problem]]:
    """(defaults filled in, numbers as float, module lists sorted and
    deduplicated; the problems). The normalized dict is what an adapter's
    cache key hashes, so its shape must not change without a format bump:
    plain `lora` has no `method` key (its keys predate the other methods)."""
    options = dict(options or {})
    flip_weight = options.pop("flip_weight", None)
    table = TRAIN_METHODS[method]
    if flip_weight is not None:
        problem = check_train_option("flip_weight", flip_weight, method)
        if problem is not None:
            return {**train_defaults(method), **options}, [problem]
    problems = [p for p in (check_train_option(k, v, method) for k, v in options.items()) if p is not None]
    problems.sort(key=lambda p: p.code != "unknown-option")  # an unknown name first: it explains the rest
    out = {**train_defaults(method), **options}
    if not problems:
        combined = check_train_combination(method, options)
        problems = [combined] if combined is not None else []
    if problems:
        return out, problems
    for key, spec in table.items():
        if spec.type == "number":
            out[key] = float(out[key])
        elif spec.type == "names":
            out[key] = sorted(set(out[key]))
    if method != "lora":
        out["method"] = method
    if flip_weight is not None:
        out["flip_weight"] = float(flip_weight)
    return out, []


# ---------------------------------------------------------------- fusion

# fuse MODE(option: value, ...) { model: weight, ... }: the options each mode takes.
FUSE_MODES: dict[str, dict[str, Range]] = {
    "linear": {},
    "contrastive": {
        "plausibility": Range(
            "number",
            0.1,
            0.0,
            1.0,
            lo_open=True,
            doc="a token counts as plausible when the experts give it at least this share "
            "of their most likely token's probability",
        ),
    },
    # fuse dynamic(anchor: MODEL, target: MODEL, grid: N, max: X) { a, b }:
    # per-step weights (runtime/fusion_dynamic.py); anchor and target are
    # models, checked as models (FUSE_MODEL_OPTIONS), not numbers
    "dynamic": {
        "grid": Range("int", 10, 1, doc="weights are searched in steps of 1/grid (anchored: max/grid)"),
        "max": Range("number", 2.0, 0.0, lo_open=True, doc="anchored: the largest weight of one expert's shift"),
    },
}

# Options whose value is a model: (mode, option) -> what it means.
FUSE_MODEL_OPTIONS: dict[tuple[str, str], str] = {
    ("dynamic", "anchor"): "the model the fused experts were tuned from",
    ("dynamic", "target"): "the model that receives the experts' shifts (default: the anchor)",
}


def fuse_default(name: str) -> Any:
    """The default of a fuse option, whichever mode takes it."""
    for options in FUSE_MODES.values():
        if name in options:
            return options[name].default
    raise KeyError(name)


def check_fuse_option(mode: str, name: str, value: Any) -> Problem | None:
    """The problem with one option of `fuse MODE(...)` (MODE known), or None."""
    allowed = FUSE_MODES[mode]
    if name not in allowed:
        known = [*allowed, *(o for m, o in FUSE_MODEL_OPTIONS if m == mode)]
        return Problem(
            f"unknown option '{name}' for fuse {mode}", did_you_mean(name, known), code="unknown-option", option=name
        )
    spec = allowed[name]
    whole = spec.type == "int"
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or not spec.fits(value):
        what = "whole number" if whole else "number"
        bounds = spec.bounds_text()
        text = f"a positive {what}" if bounds == "positive" else f"a {what} {bounds}"
        return Problem(f"fuse {name} must be {text}", code="bad-value", option=name)
    return None
