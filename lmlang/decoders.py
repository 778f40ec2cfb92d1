"""Decoder names and their options, with ranges: one table the checker validates
against and the runtime reads defaults from. Torch-free."""

from __future__ import annotations

from typing import Any

from .frozen import frozen
from .problems import Problem
from .suggest import did_you_mean


@frozen
class Opt:
    type: type
    default: object
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself excluded (temperature > 0)
    doc: str = ""
    # left out of the resolved options while unset (an option added later:
    # programs that do not write it keep their node ids)
    implicit: bool = False


SAMPLING = {
    "temperature": Opt(float, 1.0, 0.0, 10.0, lo_open=True, doc="softmax temperature"),
    "top_p": Opt(float, 1.0, 0.0, 1.0, lo_open=True, doc="nucleus mass"),
    "top_k": Opt(int, 0, 0, 1_000_000, doc="keep the k most likely tokens (0 = all)"),
    "seed": Opt(int, 0, 0, 2**63 - 1, doc="random seed; equal seeds give equal outputs"),
}

DECODERS: dict[str, dict[str, Opt]] = {
    "argmax": {},
    "sample": {
        "n": Opt(int, 1, 1, 64, doc="values per hole; n > 1 makes each hole a list of n samples", implicit=True),
        **SAMPLING,
    },
    "beam": {"width": Opt(int, 4, 1, 64, doc="beams kept per step")},
    "best_of": {"n": Opt(int, 4, 1, 64, doc="samples drawn; the most likely wins"), **SAMPLING},
    "vote": {"n": Opt(int, 5, 1, 64, doc="samples drawn; the most frequent last hole wins"), **SAMPLING},
}

# The result fields a decoder adds beside the holes (issue #15; runtime/samples.py
# fills them, the checker types them and keeps holes off their names).
DETAIL_FIELDS: dict[str, tuple[str, ...]] = {"vote": ("samples", "votes"), "best_of": ("scores",)}


def resolve(name: str, given: dict) -> dict:
    """Defaults filled in; assumes `given` passed validate()."""
    spec = DECODERS[name]
    out: dict[str, Any] = {k: o.default for k, o in spec.items() if not o.implicit}
    out.update(given)
    for k, o in spec.items():
        if o.type is float and k in out:
            out[k] = float(out[k])
    return out


def validate(name: str, given: dict) -> list[Problem]:
    """Every problem with a decoder and its options (`option` names the
    option a problem is about; "" for the decoder itself)."""
    if name not in DECODERS:
        return [Problem(f"unknown decoder '{name}'", did_you_mean(name, DECODERS, known="decoders"), "unknown-decoder")]
    return validate_options("decoder", name, DECODERS[name], given)


def validate_options(what: str, name: str, spec: dict[str, Opt], given: dict) -> list[Problem]:
    """Every problem with the options of one entry of an option table (a
    decoder's, a guard's): unknown names, types, ranges."""
    problems = []
    for key, value in given.items():
        if key not in spec:
            hint = did_you_mean(key, spec) or (
                f"{name} takes: " + ", ".join(spec) if spec else f"{name} takes no options"
            )
            problems.append(Problem(f"unknown option '{key}' for {what} {name}", hint, "unknown-option", option=key))
            continue
        o = spec[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (o.type is int and not isinstance(value, int))
        ):
            problems.append(
                Problem(
                    f"{name}({key}) must be {'an integer' if o.type is int else 'a number'}",
                    code="bad-type",
                    option=key,
                )
            )
            continue
        low_bad = o.lo is not None and (value <= o.lo if o.lo_open else value < o.lo)
        high_bad = o.hi is not None and value > o.hi
        if low_bad or high_bad:
            lo = f"> {o.lo}" if o.lo_open else f">= {o.lo}"
            problems.append(
                Problem(
                    f"{name}({key}: {value}) is out of range",
                    f"{key} must be {lo} and <= {o.hi}",
                    "bad-value",
                    option=key,
                )
            )
    return problems
