"""The constraint IR a hole carries from the checker to the runtime.

Torch-free and hashable: these objects sit inside graph node specs, so the
compiler can dedupe them and the disk cache can key on them.
"""

from __future__ import annotations

from ..frozen import frozen


@frozen
class Constraint:
    def describe(self) -> str:  # pragma: no cover - overridden
        return type(self).__name__


@frozen
class Choice(Constraint):
    """`x in ["a", "b"]`: the hole's text is exactly one option."""

    options: tuple[str, ...]


@frozen
class Regex(Constraint):
    """`x matches r"..."`: full match of a Python-style regex (no lookaround/backrefs)."""

    pattern: str


@frozen
class IntType(Constraint):
    """`x is int`; optional inclusive bounds come from `int(0..150)` in JSON types.
    Bounds are enforced while decoding (lowered to a JSON-Schema integer range)."""

    lo: int | None = None
    hi: int | None = None


@frozen
class FloatType(Constraint):
    pass


@frozen
class BoolType(Constraint):
    """`x is bool`: "true" or "false"."""


@frozen
class JsonSchema(Constraint):
    """`x is json {...}` or `x is json "schema.json"`: canonical JSON text of a JSON Schema.

    `formats` says what to do with a `format` lmlang cannot enforce while decoding
    (formats.py lists those it can): "enforce" (the default) refuses the schema at
    check time, naming the keyword's JSON path; "annotate" treats such a format
    as an annotation, as JSON Schema permits: not checked."""

    schema: str  # json.dumps(schema, sort_keys=True)
    formats: str = "enforce"  # "enforce" | "annotate"


@frozen
class Grammar(Constraint):
    """`x is grammar "file.lark"`: a Lark grammar text (start rule `start`)."""

    lark: str


@frozen
class Stop(Constraint):
    """`stops at "s"` (include=True: s is part of the value) / `stops before "s"` (include=False)."""

    text: str
    include: bool


@frozen
class MaxTokens(Constraint):
    """`tokens(x) <= n` (also < n, normalised to <=)."""

    n: int


@frozen
class MaxChars(Constraint):
    """`len(x) <= n` (also < n, normalised to <=)."""

    n: int


# ---- second wave (issue #15): `or`, `not in`, run-time lists ----------------


@frozen
class AnyOf(Constraint):
    """`x is int or x in ["unknown"]`: the value is a value of one of the
    alternatives. The checker builds it from `or` over ONE hole's shapes; each
    alternative is a regex-like shape (Choice, Regex, Int, Float, Bool) or a
    run-time list (ChoiceParam), so the union is one regex (shapes.shape_regex).
    Alternatives that are all choices are folded into one Choice instead."""

    alternatives: tuple[Constraint, ...]


@frozen
class NotIn(Constraint):
    """`x not in ["a", "b"]`: the whole value is none of these texts. With a
    literal choice the checker removes the options; with any other regex-like
    shape (or none) lowering intersects the shape with the complement."""

    options: tuple[str, ...]


@frozen
class ChoiceParam(Constraint):
    """`x in labels` where `labels: list[str]` is a parameter of the query: a
    choice whose options are known only when the query is called. The runtime
    replaces it with a Choice of the argument's strings (runtime_lists.resolve)
    before the hole's mask is compiled."""

    param: str


@frozen
class All(Constraint):
    """Conjunction. The checker normalises: at most one 'shape' constraint
    (Choice/Regex/Int/Float/Bool/JsonSchema/Grammar), any number of Stop,
    at most one MaxTokens and one MaxChars (the tightest)."""

    parts: tuple[Constraint, ...]


def flatten(c: Constraint | None) -> tuple[Constraint, ...]:
    if c is None:
        return ()
    if isinstance(c, All):
        out: list[Constraint] = []
        for p in c.parts:
            out.extend(flatten(p))
        return tuple(out)
    return (c,)
