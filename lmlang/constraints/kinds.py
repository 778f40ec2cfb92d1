"""Constraint kinds: one table that says, for every constraint a `where`
clause can write, what role it plays in a hole, how a script writes it, and
what it lowers to. The checker builds `is TYPE` shapes from it, the lowering
and the check-time judges split a conjunction by it, the graph's JSON export
knows the classes from it, and the highlighter takes its keywords. Torch-free.

Adding a constraint kind (docs/architecture.md has the whole list): its IR
class in `spec.py`, one entry here, the `where` clause in the grammar that
writes it (with its AST node and the checker's lowering in
`checker/holes.py`), and its lowering in `lower.py` if it is a shape.
"""

from __future__ import annotations

from . import spec as C
from ..frozen import frozen

SHAPE, STOP, LIMIT, GROUP = "shape", "stop", "limit", "group"
EXCLUDE = "exclude"  # `not in [...]`: texts the value may not be (second wave)


@frozen
class ConstraintKind:
    """`role`: SHAPE (what the value looks like; at most one per hole after
    the checker intersects them, see shapes.py), STOP (where the value ends),
    LIMIT (a budget; the tightest of each kind wins), GROUP (a conjunction),
    EXCLUDE (whole texts the value may not be; they add up).
    `lowers_to`: the mask backend's language for a shape ("regex", "json",
    "lark"), "" otherwise. `is_type`: the word after `is` for the shapes a
    script writes as `x is TYPE` (int, float, bool)."""

    name: str
    cls: type
    role: str
    syntax: str
    lowers_to: str = ""
    keywords: tuple = ()
    is_type: str = ""


CONSTRAINT_KINDS: dict[str, ConstraintKind] = {
    k.name: k
    for k in (
        ConstraintKind("choice", C.Choice, SHAPE, 'x in ["a", "b"]', "regex", ("in",)),
        ConstraintKind("regex", C.Regex, SHAPE, 'x matches r"[0-9]+"', "regex", ("matches",)),
        ConstraintKind("int", C.IntType, SHAPE, "x is int, x is int(0..150)", "regex", ("is",), is_type="int"),
        ConstraintKind("float", C.FloatType, SHAPE, "x is float", "regex", ("is",), is_type="float"),
        ConstraintKind("bool", C.BoolType, SHAPE, "x is bool", "regex", ("is",), is_type="bool"),
        ConstraintKind(
            "json", C.JsonSchema, SHAPE, 'x is json {name: str}, x is json "schema.json"', "json", ("is", "json")
        ),
        ConstraintKind("grammar", C.Grammar, SHAPE, 'x is grammar "file.lark"', "lark", ("is", "grammar")),
        ConstraintKind("stop", C.Stop, STOP, 'x stops at "."  /  x stops before "\\n"', "", ("stops", "at", "before")),
        ConstraintKind("max_tokens", C.MaxTokens, LIMIT, "tokens(x) <= 20", "", ("tokens",)),
        ConstraintKind("max_chars", C.MaxChars, LIMIT, "len(x) <= 80", "", ("len",)),
        ConstraintKind("all", C.All, GROUP, "a and b", "", ("and",)),
        # second wave (issue #15)
        ConstraintKind("or", C.AnyOf, SHAPE, 'x is int or x in ["unknown"]', "regex", ("or",)),
        ConstraintKind("not_in", C.NotIn, EXCLUDE, 'x not in ["other"]', "", ("not", "in")),
        ConstraintKind("in_param", C.ChoiceParam, SHAPE, "x in labels  (labels: list[str])", "regex", ("in",)),
    )
}

BY_CLASS: dict[type, ConstraintKind] = {k.cls: k for k in CONSTRAINT_KINDS.values()}
SHAPES: tuple[type, ...] = tuple(k.cls for k in CONSTRAINT_KINDS.values() if k.role == SHAPE)
IS_TYPES: dict[str, type] = {k.is_type: k.cls for k in CONSTRAINT_KINDS.values() if k.is_type}
KEYWORDS: tuple[str, ...] = tuple(dict.fromkeys(w for k in CONSTRAINT_KINDS.values() for w in k.keywords))


def kind_of(c: C.Constraint) -> ConstraintKind:
    return BY_CLASS[type(c)]


@frozen
class Parts:
    """A hole's constraint split by role: what lowering and the judges read."""

    shapes: tuple
    stops: tuple
    max_tokens: int | None
    max_chars: int | None
    excluded: tuple = ()  # the texts of every `not in`, in order, once each


def split(c: C.Constraint | None) -> Parts:
    parts = C.flatten(c)
    return Parts(
        shapes=tuple(p for p in parts if BY_CLASS[type(p)].role == SHAPE),
        stops=tuple(p for p in parts if isinstance(p, C.Stop)),
        max_tokens=min((p.n for p in parts if isinstance(p, C.MaxTokens)), default=None),
        max_chars=min((p.n for p in parts if isinstance(p, C.MaxChars)), default=None),
        excluded=tuple(dict.fromkeys(o for p in parts if isinstance(p, C.NotIn) for o in p.options)),
    )
