"""The value of a hole constrained by `or` (`x is int or x in ["none"]`,
issue 15): which alternative the decoded text is, and so its type.

One rule, read by the checker (the hole's type: the union of its
alternatives' types, checker/holes.py) and by the runtime (the value:
runtime/decode.typed_value). A typed alternative (`is int`, `is float`,
`is bool`) wins over a text one when the text is a value of both, so
`x is int or x matches r"[0-9a-z]+"` gives 7 for "7", not "7": the author
asked for an int where there is one. Among typed alternatives, the first
written wins. Torch-free.
"""

from __future__ import annotations

import re

from . import spec as C
from .shapes import shape_regex

TYPED: dict[type, str] = {C.IntType: "int", C.FloatType: "float", C.BoolType: "bool"}
"""The alternatives whose values are not text, by the flow type they give."""


def alternative_types(c: C.AnyOf) -> tuple[str, ...]:
    """The flow type word of each alternative, in order ("str" for a choice,
    a regex or a run-time list), once each."""
    return tuple(dict.fromkeys(TYPED.get(type(a), "str") for a in c.alternatives))


def union_value(text: str, c: C.AnyOf):
    """The decoded text as the value of the first typed alternative it is a
    value of (the regex the decoder enforced decides), else the text."""
    for a in c.alternatives:
        kind = TYPED.get(type(a))
        if kind is None:
            continue
        pattern = shape_regex(a)
        if pattern is not None and re.fullmatch(pattern, text):
            return _convert(kind, text)
    return text


def _convert(kind: str, text: str):
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    return text == "true"
