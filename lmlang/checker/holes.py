"""A hole's where-constraints lowered to one lmlang.constraints.spec
constraint, with contradictions and unenforceable constraints reported.

* A hole needs something that says where it ends (a shape, a stop string or
  a length bound) unless it is the last thing in an assistant message or in
  a plain prompt: there the model's end-of-turn token ends it.
* Two shapes on one hole combine by lmlang.constraints.shapes.merge_shapes,
  the rule lowering and constraint checking share.
* Anything a constraint backend cannot enforce while decoding is an error
  here (lmlang.constraints.check), never a silent post-hoc check.
"""

from __future__ import annotations

import json

from .. import ast as A
from .. import types as T
from ..constraints import spec as C
from ..constraints.kinds import IS_TYPES
from ..jsontypes import JsonTypeError, to_schema
from ..source import Span
from ..values import plain_value
from .context import Context, name_span
from .limits import MAX_SCHEMA_DEPTH, grammar_problem, schema_problem

_IS_KINDS = IS_TYPES  # `x is int|float|bool`, from the constraint-kind table


def lower_constraints(cx: Context, hole: str, conds: list, node: A.Hole, q: A.QueryDecl):
    """The hole's constraint (None when it has none, or errors)."""
    shapes: list[tuple[C.Constraint, A.Node]] = []
    stops: list[C.Constraint] = []
    bounds: dict[str, int] = {}  # "tokens" | "len" -> the tightest bound
    excluded: list[tuple[C.NotIn, A.Node]] = []  # second wave: `not in [...]`
    for c in conds:
        if isinstance(c, A.CNotIn):
            ex = _not_in(cx, hole, c)
            if ex is not None:
                excluded.append((ex, c))
        elif isinstance(c, A.CStop):
            if not c.text:
                cx.error("a stop string cannot be empty", c)
            else:
                stops.append(C.Stop(c.text, c.include))
        elif isinstance(c, A.CLen):
            n = _length_bound(cx, hole, c)
            if n is not None:
                bounds[c.fn] = min(bounds.get(c.fn, n), n)
        else:
            shape = _shape(cx, hole, c, q)
            if shape is not None:
                shapes.append((shape, c))
    shape = shapes[0][0] if shapes else None
    if len(shapes) > 1:
        shape = _merge(cx, hole, shapes)
        if shape is None:
            return None
    if excluded:
        shape, kept = _exclude(cx, hole, shape, shapes, excluded)
        if kept is None:
            return None
    parts: list = [shape] if shape is not None else []
    if excluded and kept:
        parts.append(C.NotIn(kept))
    parts.extend(stops)
    if "tokens" in bounds:
        parts.append(C.MaxTokens(bounds["tokens"]))
    if "len" in bounds:
        parts.append(C.MaxChars(bounds["len"]))
    if not parts:
        if conds or cx.report.reported_at(node.span):
            return None  # its constraints (or the hole) already have errors
        if not _hole_ends_turn(q, hole):
            cx.error(
                f"hole [{hole}] has no constraint, so nothing says where it ends",
                node,
                f"add `where {hole} stops at \"...\"`, `tokens({hole}) <= N` or a shape",
            )
        return None
    constraint = parts[0] if len(parts) == 1 else C.All(tuple(parts))
    _report_problems(cx, hole, constraint, _span_over(conds) if conds else node.span)
    return constraint


def _merge(cx: Context, hole: str, shapes: list):
    from ..constraints.shapes import merge_shapes  # only holes with two shapes need the rule

    (a, _an), (b, bn) = shapes[0], shapes[1]
    if isinstance(a, C.ChoiceParam) or isinstance(b, C.ChoiceParam):
        cx.error(
            f"a run-time list on [{hole}] cannot be combined with another shape",
            bn,
            "a run-time list combines with `not in`, stops and length bounds; filter the list before the call",
        )
        return None
    merged = merge_shapes(a, b)
    if merged is None:
        cx.error(f"constraints on [{hole}] contradict: {_shape_words(a)} and {_shape_words(b)}", bn, "keep one of them")
        return None
    if len(shapes) > 2:
        cx.error(f"too many shape constraints on [{hole}]", shapes[2][1], "keep one of in/matches/is")
        return None
    return merged


def _length_bound(cx: Context, hole: str, c: A.CLen) -> int | None:
    """`tokens(x) <= n` / `len(x) < n` as an inclusive upper bound."""
    if c.op not in ("<=", "<"):
        cx.error(f"{c.fn}({hole}) takes an upper bound (<= or <)", c, f"write {c.fn}({hole}) <= {c.n}")
        return None
    n = c.n if c.op == "<=" else c.n - 1
    if n < 1:
        cx.error(f"{c.fn}({hole}) {c.op} {c.n} leaves no room for a value", c)
        return None
    return n


def _shape(cx: Context, hole: str, c, q: A.QueryDecl | None = None) -> C.Constraint | None:
    """The shape one `in` / `matches` / `is` constraint says (None on error)."""
    if isinstance(c, A.COr):
        return _or_shape(cx, hole, c, q)
    if isinstance(c, A.CInName):
        return _in_param(cx, hole, c, q)
    if isinstance(c, A.CIn):
        opts = plain_value(c.options)
        if not isinstance(opts, list) or not opts or not all(isinstance(o, str) for o in opts):
            cx.error(f"`{hole} in [...]` takes a non-empty list of strings", c.options)
            return None
        return C.Choice(tuple(dict.fromkeys(opts)))
    if isinstance(c, A.CMatches):
        return C.Regex(c.pattern)
    if isinstance(c, A.CIs):
        return _is_shape(cx, hole, c)
    if isinstance(c, A.CJson):
        schema = _json_schema(cx, c)
        # Declared property order is kept: the decoder writes keys in
        # schema order, so `{name, age}` comes out name first.
        formats = _json_formats(cx, c)
        return None if schema is None or formats is None else C.JsonSchema(json.dumps(schema), formats=formats)
    if isinstance(c, A.CGrammar):
        path = cx.file_ref("grammar", c.file, c)
        if path is None:
            return None
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            cx.error(f"cannot read grammar {c.file}: {getattr(e, 'strerror', None) or e}", c)
            return None
        problem = grammar_problem(text)
        if problem is not None:
            cx.error(f"grammar {c.file}: {problem[0]}", c, problem[1])
            return None
        return C.Grammar(text)
    return None


def _is_shape(cx: Context, hole: str, c: A.CIs) -> C.Constraint | None:
    if c.type not in _IS_KINDS:
        cx.error(
            f"unknown type '{c.type}' in constraint",
            c,
            cx.did_you_mean(c.type, _IS_KINDS)
            or "write `is int`, `is float`, `is bool`, `is json {...}` or `is grammar \"file.lark\"`",
        )
        return None
    if c.range is None:
        return _IS_KINDS[c.type]()
    lo, hi = c.range.lo, c.range.hi
    if c.type != "int":
        cx.error(f"`is {c.type}` takes no range", c.range, f"write `{hole} is int(lo..hi)`, or a JSON type")
        return None
    if any(v is not None and float(v) != int(v) for v in (lo, hi)):
        cx.error("an int range takes integers", c.range)
        return None
    if lo is not None and hi is not None and lo > hi:
        cx.error(f"empty range {lo:g}..{hi:g}", c.range, "write the lower bound first")
        return None
    return C.IntType(int(lo) if lo is not None else None, int(hi) if hi is not None else None)


def _json_formats(cx: Context, c: A.CJson) -> str | None:
    """The `formats` option of `json(formats: "annotate")`: "enforce" (the
    default) or "annotate"; None after an error."""
    from ..constraints.formats import ENFORCE, MODES
    from ..suggest import did_you_mean

    formats = ENFORCE
    for kw in c.options:
        if kw.name != "formats":
            cx.error(
                f"unknown json option '{kw.name}'",
                name_span(kw),
                did_you_mean(kw.name, ["formats"]) or 'the one option is formats: "enforce" or "annotate"',
            )
            return None
        value = plain_value(kw.value)
        if value not in MODES:
            shown = repr(value) if isinstance(value, (str, int, float, bool)) else "this"
            cx.error(
                f"formats: {shown} is not an option",
                kw.value,
                did_you_mean(str(value), MODES) or 'write formats: "enforce" or formats: "annotate"',
            )
            return None
        formats = value
    return formats


def _json_schema(cx: Context, c: A.CJson):
    """The schema of `is json {...}`, `is json "file.json"` or an API schema."""
    if c.inline is not None:
        try:
            return to_schema(c.inline)
        except JsonTypeError as e:
            cx.error(str(e), e.node, e.hint)
            return None
    assert c.file is not None  # the parser sets inline or file
    if c.file in cx.schemas:
        return _bounded_schema(cx, c, cx.schemas[c.file])
    path = cx.file_ref("JSON schema", c.file, c)
    if path is None:
        return None
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        cx.error(
            f"cannot read JSON schema {c.file}: nested more than {MAX_SCHEMA_DEPTH} levels deep",
            c,
            "name the inner parts in `$defs` and refer to them with `$ref`",
        )
        return None
    except (OSError, ValueError) as e:
        cx.error(f"cannot read JSON schema {c.file}: {e}", c)
        return None
    return _bounded_schema(cx, c, schema)


def _bounded_schema(cx: Context, c: A.CJson, schema):
    """The schema, or None with an error where its nesting or `$ref` chains
    pass the limits the schema libraries survive (schema_limits.py)."""
    problem = schema_problem(schema)
    if problem is not None:
        cx.error(f"JSON schema {c.file}: {problem[0]}", c, problem[1])
        return None
    return schema


def _report_problems(cx: Context, hole: str, constraint, at: Span) -> None:
    from ..constraints import check as constraint_check

    for problem in constraint_check.check_constraint_cached(constraint):
        message = f"[{hole}]: " + problem.message.replace("(x)", f"({hole})")
        if problem.severity == "warning":
            cx.warn(message, at, problem.hint, code=problem.code)
        else:
            cx.error(message, at, problem.hint, code=problem.code)


def _hole_ends_turn(q: A.QueryDecl, hole: str) -> bool:
    """True when the hole is the last part of an assistant message or of the
    whole plain prompt: the model's end-of-turn token can end it."""
    for i, s in enumerate(q.segments):
        parts = [p for p in s.parts if not (isinstance(p, A.Text) and not p.text.strip())]
        if parts and isinstance(parts[-1], A.Hole) and parts[-1].name == hole:
            return s.role == "assistant" or (s.role is None and i == len(q.segments) - 1)
    return False


def _shape_words(c: C.Constraint) -> str:
    if isinstance(c, C.Choice):
        return "in [" + ", ".join(repr(o) for o in c.options[:3]) + (", ..." if len(c.options) > 3 else "") + "]"
    if isinstance(c, C.Regex):
        return f"matches {c.pattern!r}"
    if isinstance(c, C.IntType) and (c.lo is not None or c.hi is not None):
        return f"is int({'' if c.lo is None else c.lo}..{'' if c.hi is None else c.hi})"
    for kind, cls in _IS_KINDS.items():
        if type(c) is cls:
            return "is " + kind
    if isinstance(c, C.JsonSchema):
        return "is json"
    if isinstance(c, C.Grammar):
        return "is grammar"
    return type(c).__name__


def hole_type(c) -> T.T:
    """The flow type of a hole's value, from its constraint."""
    for part in C.flatten(c):
        if isinstance(part, C.IntType):
            return T.INT
        if isinstance(part, C.FloatType):
            return T.FLOAT
        if isinstance(part, C.BoolType):
            return T.BOOL
        if isinstance(part, C.JsonSchema):
            return T.JSON
        if isinstance(part, C.AnyOf):  # `x is int or x in ["none"]`: int|str (constraints/alternatives.py)
            from ..constraints.alternatives import alternative_types

            return T.union(*(_TYPE_WORDS[w] for w in alternative_types(part)))
    return T.STR


_TYPE_WORDS = {"int": T.INT, "float": T.FLOAT, "bool": T.BOOL, "str": T.STR}


def _span_over(nodes) -> Span:
    """The span from the first node's start to the last node's end (one file)."""
    a, b = nodes[0].span, nodes[-1].span
    if a.filename != b.filename or (b.end_line, b.end_col) < (a.line, a.col):
        return a
    return Span(a.line, a.col, b.end_line, b.end_col, a.filename)


# ---- second wave (issue #15): `or`, parentheses, `not in`, `in NAME` ---------
# `or` is over one hole's shapes (in, matches, is int/float/bool, a run-time
# list); each branch's shapes merge by the same rule as `and` at top level, and
# the branches' union is one regex (constraints/shapes.any_of). A JSON or
# grammar shape, a stop, a length bound or a `not in` inside `or` has no exact
# union with the other branches in every backend: refused here, with a hint.

_OR_SHAPES = (A.CIn, A.CInName, A.CMatches, A.CIs)


def _or_shape(cx: Context, hole: str, c: A.COr, q: A.QueryDecl | None) -> C.Constraint | None:
    from ..constraints.shapes import any_of

    alternatives: list[C.Constraint] = []
    ok = True
    for branch in c.branches:
        shapes: list[tuple[C.Constraint, A.Node]] = []
        for part in branch:
            if part.hole != hole:
                cx.error(
                    f"`or` joins constraints of one hole: [{part.hole}] and [{hole}]",
                    part,
                    "write a separate `where` clause for each hole",
                )
                ok = False
            elif not isinstance(part, _OR_SHAPES + (A.COr,)):
                cx.error(
                    f"{_cond_words(part)} cannot be one side of `or`",
                    part,
                    f"`or` joins shapes (in, matches, is int/float/bool); put stops, length bounds and `not in` "
                    f"outside the parentheses: `where ({hole} ... or {hole} ...) and tokens({hole}) <= N`",
                )
                ok = False
            else:
                shape = _shape(cx, hole, part, q)
                ok = ok and shape is not None
                if shape is not None:
                    shapes.append((shape, part))
        if not ok or not shapes:
            continue
        merged = shapes[0][0] if len(shapes) == 1 else _merge(cx, hole, shapes)
        if merged is None:
            return None
        alternatives.append(merged)
    return any_of(alternatives) if ok and alternatives else None


def _cond_words(c) -> str:
    if isinstance(c, A.CIs) and c.type in ("json", "grammar"):
        return f"`is {c.type}`"
    return {
        A.CJson: "`is json`",
        A.CGrammar: "`is grammar`",
        A.CStop: "a stop string",
        A.CLen: "a length bound",
        A.CNotIn: "`not in`",
    }.get(type(c), "this constraint")


def _in_param(cx: Context, hole: str, c: A.CInName, q: A.QueryDecl | None) -> C.Constraint | None:
    """`x in NAME`: NAME must be a `list[str]` parameter of the query."""
    params = {p.name: p for p in q.params} if q is not None else {}
    p = params.get(c.param)
    if p is None:
        cx.error(
            f"`{hole} in {c.param}`: {c.param} is not a parameter of this query",
            c,
            cx.did_you_mean(c.param, params) or f"add `{c.param}: list[str]` to the query's parameters",
        )
        return None
    t = p.type
    if t is None or t.name != "list" or t.arg is None or t.arg.name != "str":
        cx.error(
            f"`{hole} in {c.param}` takes a list[str] parameter, but {c.param} is "
            + (t.describe() if t is not None else "untyped"),
            c,
            f"declare it `{c.param}: list[str]`",
        )
        return None
    return C.ChoiceParam(c.param)


def _not_in(cx: Context, hole: str, c: A.CNotIn) -> C.NotIn | None:
    opts = plain_value(c.options)
    if not isinstance(opts, list) or not opts or not all(isinstance(o, str) for o in opts):
        cx.error(f"`{hole} not in [...]` takes a non-empty list of strings", c.options)
        return None
    return C.NotIn(tuple(dict.fromkeys(opts)))


def _exclude(cx: Context, hole: str, shape, shapes: list, excluded: list):
    """(the shape, the texts still to exclude while decoding) after `not in`;
    (shape, None) after an error. A literal choice loses the options right
    here (excluding all of them is a contradiction); a JSON or grammar shape
    cannot be intersected with a complement in every backend: refused."""
    texts = tuple(dict.fromkeys(o for ex, _ in excluded for o in ex.options))
    at = excluded[0][1]
    if isinstance(shape, C.Choice):
        left = tuple(o for o in shape.options if o not in texts)
        if not left:
            cx.error(
                f"constraints on [{hole}] contradict: `not in` excludes every option of the choice",
                at,
                "drop an option from the `not in` list",
            )
            return shape, None
        return C.Choice(left), ()
    if isinstance(shape, (C.JsonSchema, C.Grammar)):
        cx.error(
            f"`not in` cannot be combined with {_shape_words(shape)} on [{hole}]",
            at,
            "`not in` combines with in, matches, is int/float/bool, a run-time list or free text",
        )
        return shape, None
    return shape, texts
