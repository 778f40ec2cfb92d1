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

TRAIN_OPTIONS: dict[str, Range] = {
    "rank": Range("int", 8, 1, doc="LoRA rank r"),
    "alpha": Range("number", 16, 0, lo_open=True, doc="LoRA alpha (the update is scaled by alpha / r)"),
    "epochs": Range("int", 3, 1, doc="passes over the data"),
    "lr": Range(
        "number",
        1e-3,
        0,
        1,
        lo_open=True,
        hi_open=True,
        hint="a typical LoRA learning rate is 1e-4 to 1e-3",
        doc="AdamW learning rate",
    ),
    "target_modules": Range("names", ("q_proj", "v_proj"), doc="names of the modules that get a LoRA"),
    "seed": Range("int", 0, doc="seed of the LoRA initialisation, dropout and data order"),
    "batch_size": Range("int", 8, 1, doc="rows per optimizer step"),
    "max_length": Range("int", 512, 8, doc="tokens per row; longer rows lose prompt tokens from the left"),
    "dropout": Range("number", 0.0, 0, 1, hi_open=True, doc="LoRA dropout"),
}
# A script's `train lora` block also takes `base: MODEL` (what to train on);
# the checker resolves it as a model expression, the runtime gets it built.
TRAIN_MODEL_OPTIONS = ("base",)
_TYPE_WORDS = {"int": "an integer", "number": "a number", "names": "a list"}


def train_option_names() -> tuple[str, ...]:
    """Every option a `train lora` block takes, in documentation order."""
    return (*TRAIN_MODEL_OPTIONS, *TRAIN_OPTIONS)


def train_defaults() -> dict[str, Any]:
    return {k: list(o.default) if o.type == "names" else o.default for k, o in TRAIN_OPTIONS.items()}


def check_train_option(name: str, value: Any) -> Problem | None:
    """The problem with one training hyperparameter (not `base`), or None."""
    spec = TRAIN_OPTIONS.get(name)
    if spec is None:
        return Problem(
            f"unknown training option '{name}'",
            did_you_mean(name, TRAIN_OPTIONS, known="options"),
            code="unknown-option",
            option=name,
        )
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


def normalize_train_options(options: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[Problem]]:
    """(defaults filled in, numbers as float, target_modules sorted and
    deduplicated; the problems). The normalized dict is what an adapter's
    cache key hashes, so its shape must not change without a format bump."""
    options = dict(options or {})
    problems = [p for p in (check_train_option(k, v) for k, v in options.items()) if p is not None]
    problems.sort(key=lambda p: p.code != "unknown-option")  # an unknown name first: it explains the rest
    out = {**train_defaults(), **options}
    if problems:
        return out, problems
    for key, spec in TRAIN_OPTIONS.items():
        if spec.type == "number":
            out[key] = float(out[key])
        elif spec.type == "names":
            out[key] = sorted(set(out[key]))
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
        return Problem(
            f"unknown option '{name}' for fuse {mode}", did_you_mean(name, allowed), code="unknown-option", option=name
        )
    spec = allowed[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not spec.fits(value):
        return Problem(f"fuse {name} must be a number in {spec.interval()}", code="bad-value", option=name)
    return None
