"""Lowering: an lmlang constraint -> a `Plan` the mask backends understand.

A Plan has one *shape* (what the value's text must be) and *limits* that are
enforced by lmlang's own Guide around any backend:

    kind     "free"   no shape: no backend, no mask beyond special tokens
             "regex"  full-match regex (Rust/derivre syntax); Choice, Int
                      (its bounds, int64 where open: an exact digit regex),
                      Float, Bool and `matches` all lower here
             "json"   a JSON Schema (canonical JSON text), its formats written
                      as keywords (formats.py) and its objects closed (closed.py)
             "lark"   a Lark grammar; also a regex intersected with a length
                      bound (`matches r"..." and len(x) <= n` -> exact, by
                      llguidance's lexeme `&`)
    stops, max_tokens, max_chars

Torch-free, backend-free: the checker uses it too.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from ..frozen import field, frozen, replace

from .closed import closed_schema_text
from .formats import lower_schema_text
from .kinds import kind_of
from .kinds import split as split_by_role
from .shapes import shape_regex, split_options, union_regex
from .spec import AnyOf, Choice, ChoiceParam, Constraint, Grammar, JsonSchema, Stop

if TYPE_CHECKING:  # the type only: the front end never imports llguidance
    from llguidance._lib import JsonCompileOptions

# JSON text layout lmlang generates and accepts: exactly what json.dumps writes.
JSON_ITEM_SEPARATOR = ", "
JSON_KEY_SEPARATOR = ": "

# Greedy closing (guide.py, check.py) prefers bytes that end structures, then short scalars.
# The comma ends a value and moves on (a number could take digits, a point or
# an exponent for ever), so it comes before every byte that extends a value.
CLOSING_PRIORITY = (
    b'}]",0'
    + b"123456789"
    + b":"
    + b"tfnle"
    + b"abcdghijkmopqrsuvwxyz"
    + b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    + b" .-+_/@#$%^&*!?~`'|\\;<>="
    + b"[{"
)

CLOSING_PRIORITY_IN_STRING = b'"' + CLOSING_PRIORITY.replace(b'"', b"")


def json_string_state(data: bytes, state: tuple[bool, bool] = (False, False)) -> tuple[bool, bool]:
    """(inside a JSON string, after a backslash) after reading `data` from `state`."""
    inside, escaped = state
    for b in data:
        if escaped:
            escaped = False
        elif inside and b == 0x5C:
            escaped = True
        elif b == 0x22:
            inside = not inside
    return inside, escaped


_META = set(".^$*+?()[]{}|\\#&-~ ")


def escape_regex(text: str) -> str:
    """Escape text as a literal for Rust-syntax regexes (also valid in Python)."""
    out = []
    for ch in text:
        if ch in _META:
            out.append(f"\\x{ord(ch):02x}" if ch in "#&-~ " else "\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def choice_regex(options: tuple[str, ...]) -> str:
    return "|".join(escape_regex(o) for o in options) if options else r"[^\s\S]"


# llguidance's Earley parser allows 2,000 items in one row, and a choice
# written as one rule of N alternatives predicts all N at its first byte.
# Longer lists become one lexeme (the lexer's union of the literals), which
# no row limit applies to; short ones keep the rule form.
CHOICE_RULE_MAX = 1000


def choice_lark(options: tuple[str, ...]) -> str:
    """A choice as a Lark grammar for llguidance: exactly the options."""
    body = " | ".join(json.dumps(o, ensure_ascii=False) for o in options)
    if len(options) <= CHOICE_RULE_MAX:
        return "start: " + body
    return "start: CHOICE\nCHOICE: " + body + "\n"


def lark_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def lark_regex(pattern: str) -> str:
    """A regex as a Lark /.../ literal."""
    return "/" + pattern.replace("/", "\\/") + "/"


@frozen
class Plan:
    kind: str  # "free" | "regex" | "json" | "lark"
    text: str = ""  # the regex, schema JSON, or lark grammar
    options: tuple[str, ...] | None = None  # set when the shape is a Choice
    stops: tuple[Stop, ...] = ()
    max_tokens: int | None = None
    max_chars: int | None = None
    source: str = ""  # what the shape came from: "choice", "int", "regex", ...
    notes: tuple[str, ...] = field(default=(), compare=False)

    def key(self) -> str:
        return json.dumps(
            [
                self.kind,
                self.text,
                self.options,
                [(s.text, s.include) for s in self.stops],
                self.max_tokens,
                self.max_chars,
                self.source,
            ]
        )

    @property
    def has_shape(self) -> bool:
        return self.kind != "free"


class LoweringError(ValueError):
    """A constraint combination lmlang cannot turn into one mask."""


def _shape_regex(c: Constraint) -> tuple[str, str] | None:
    """(regex, source) of a shape decoded as a regex."""
    if isinstance(c, Choice):
        return choice_regex(c.options), "choice"
    pattern = shape_regex(c)
    if pattern is None:
        return None
    return pattern, kind_of(c).name


def option_survives_stops(option: str, stops: tuple[Stop, ...]) -> bool:
    """A Choice option can be produced only if no stop ends the value before it is complete."""
    for s in stops:
        if not s.text:
            continue
        i = option.find(s.text)
        if i < 0:
            continue
        if not s.include or i + len(s.text) < len(option):
            return False
    return True


def lower(c: Constraint | None) -> Plan:
    split = split_by_role(c)
    stops, max_chars, shapes = split.stops, split.max_chars, list(split.shapes)
    limits: dict[str, Any] = dict(stops=stops, max_tokens=split.max_tokens, max_chars=max_chars)
    if any(isinstance(s, ChoiceParam) or (isinstance(s, AnyOf) and union_regex(s) is None) for s in shapes):
        raise LoweringError("a run-time list (`in NAME`) is lowered once the query is called")
    if split.excluded and not any(isinstance(s, Choice) for s in shapes):  # a choice drops them below
        return _lower_excluding(shapes, split.excluded, limits)
    if not shapes:
        return Plan("free", **limits, source="free")

    choices = [s for s in shapes if isinstance(s, Choice)]
    excluded = set(split.excluded)
    if choices:
        options = list(dict.fromkeys(choices[0].options))
        for other in shapes:
            if other is not choices[0]:
                options = list(split_options(options, other)[0])
        options = [o for o in options if option_survives_stops(o, stops) and o not in excluded]
        if max_chars is not None:
            options = [o for o in options if len(o) <= max_chars]
        opts = tuple(options)
        return Plan("regex", choice_regex(opts), options=opts, **limits, source="choice")

    if len(shapes) > 1:
        if any(isinstance(s, (JsonSchema, Grammar)) for s in shapes):
            raise LoweringError("a JSON or grammar shape cannot be combined with another shape")
        # regex-like shapes intersect exactly as lark lexemes
        rxs = [rx for s in shapes if (rx := _shape_regex(s)) is not None]
        assert len(rxs) == len(shapes)  # JSON and grammar shapes were ruled out above
        return _bounded_lark([r for r, _ in rxs], max_chars, limits, source="+".join(src for _, src in rxs))

    shape = shapes[0]
    rx = _shape_regex(shape)
    if rx is not None:
        pattern, source = rx
        if max_chars is not None:
            return _bounded_lark([pattern], max_chars, limits, source=source)
        return Plan("regex", pattern, **limits, source=source)
    if isinstance(shape, JsonSchema):
        return Plan("json", closed_schema_text(lower_schema_text(shape.schema, shape.formats)), **limits, source="json")
    if isinstance(shape, Grammar):
        return Plan("lark", shape.lark, **limits, source="grammar")
    raise LoweringError(f"unknown constraint {type(shape).__name__}")


# ---- second wave (issue #15): `not in [...]` ---------------------------------


def _lower_excluding(shapes: list, excluded: tuple[str, ...], limits: dict) -> Plan:
    """A shape (or free text) minus whole texts (a choice drops its options
    in lower() instead). A regex-like shape (or none) is intersected with the complement of the
    literals, one lark lexeme (`~` and `&` in llguidance's lexer), so the mask
    refuses exactly the tokens that could only complete an excluded text. A
    JSON or grammar shape has no such lexeme: refused (the checker says so
    first)."""
    if any(isinstance(s, (JsonSchema, Grammar)) for s in shapes):
        raise LoweringError("`not in` cannot be combined with a JSON or grammar shape")
    rxs = [rx for s in shapes if (rx := _shape_regex(s)) is not None]
    assert len(rxs) == len(shapes)  # JSON and grammar shapes were ruled out above
    # free text is any run of whole characters (a bare complement would allow invalid UTF-8)
    terms = [lark_regex(r) for r, _ in rxs] or [lark_regex("(?s:.*)")]
    terms.append("~" + lark_regex(choice_regex(excluded)))
    source = "+".join([src for _, src in rxs] + ["not_in"])
    if limits["max_chars"] is not None:
        terms.append(lark_regex(f"(?s:.{{0,{limits['max_chars']}}})"))
        source += "&len"
    return Plan("lark", "start: VALUE\nVALUE: " + " & ".join(terms) + "\n", **limits, source=source)


def _literal(text: str) -> str:
    """text as a regex matching itself, in a syntax every backend reads (hex escapes)."""
    return "".join(c if c.isascii() and c.isalnum() else f"\\x{{{ord(c):x}}}" for c in text)


def _bounded_lark(regexes: list[str], max_chars: int | None, limits: dict, source: str) -> Plan:
    terms = [lark_regex(r) for r in regexes]
    if max_chars is not None:
        terms.append(lark_regex(f"(?s:.{{0,{max_chars}}})"))
    grammar = "start: VALUE\nVALUE: " + " & ".join(terms) + "\n"
    return Plan("lark", grammar, **limits, source=source + "&len" if max_chars is not None else source)


def with_stops_folded(plan: Plan) -> Plan:
    """The plan local decoding compiles (and the check judges): a regex-like
    shape's stop strings folded into its language, one lark lexeme (an exact
    intersection), so a value a stop ends still matches the shape: with
    `stops before s` the value never contains s (the shape's own end ends it),
    with `stops at s` s occurs only at its end. A server (serving/) gets the
    plan as lowered, with its stops as stop strings."""
    if not plan.stops or plan.options is not None or plan.kind not in ("regex", "lark") or plan.source == "grammar":
        return plan
    terms = ["~" + lark_regex(f"(?s:.*{_literal(s.text)}{'.+' if s.include else '.*'})") for s in plan.stops]
    if plan.kind == "regex":
        text = "start: VALUE\nVALUE: " + " & ".join([lark_regex(plan.text)] + terms) + "\n"
    else:  # _bounded_lark's one VALUE line
        text = plan.text.rstrip("\n") + " & " + " & ".join(terms) + "\n"
    return replace(plan, kind="lark", text=text)


# --------------------------------------------------------------------- JSON Schema keyword support
# Keywords each backend *enforces* (not merely parses). A schema may fall back to a
# backend only when all of its keywords are in that backend's set; otherwise
# the backend would silently accept invalid values.
ANNOTATIONS = {
    "$schema",
    "$id",
    "id",
    "$comment",
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$defs",
    "definitions",
    "contentMediaType",
    "contentEncoding",
    "$anchor",
    "discriminator",
    "nullable",
    "x-guidance",
}
# (oneOf is left out of both: they treat it as anyOf and accept values matching several branches)
XGRAMMAR_ENFORCED = ANNOTATIONS | {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "prefixItems",
    "enum",
    "const",
    "anyOf",
    "$ref",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
}
OUTLINES_ENFORCED = ANNOTATIONS | {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "prefixItems",
    "enum",
    "const",
    "anyOf",
    "allOf",
    "$ref",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
}
# keywords whose *values* are schemas or maps of schemas (walked recursively)
_SUBSCHEMA = {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
_SUBSCHEMA_ONE = {
    "items",
    "additionalProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "additionalItems",
    "unevaluatedProperties",
    "unevaluatedItems",
}
_SUBSCHEMA_LIST = {"anyOf", "oneOf", "allOf", "prefixItems", "items"}


def schema_keywords(schema) -> set[str]:
    """Every keyword used anywhere in a schema (property names excluded)."""
    found: set[str] = set()

    def walk(s) -> None:
        if not isinstance(s, dict):
            return
        for k, v in s.items():
            found.add(k)
            if k in _SUBSCHEMA and isinstance(v, dict):
                for sub in v.values():
                    walk(sub)
            elif k in _SUBSCHEMA_LIST and isinstance(v, list):
                for sub in v:
                    walk(sub)
            elif k in _SUBSCHEMA_ONE and isinstance(v, dict):
                walk(v)

    walk(schema)
    return found


def llguidance_json_options() -> JsonCompileOptions:
    return {"whitespace_flexible": False, "item_separator": JSON_ITEM_SEPARATOR, "key_separator": JSON_KEY_SEPARATOR}
