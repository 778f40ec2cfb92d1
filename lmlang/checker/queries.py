"""Queries: parameters, the model (`using`), the decoder, the prompt's shape
(roles, holes, interpolations), where-constraints and distributions. The
constraints of each hole are lowered in checker/constraints.py.

The rules that are choices, not facts:

* Holes. Every hole is written by the model, so it sits in an assistant
  message or a plain prompt, and a query has at least one. A where-
  constraint or distribution on a name that is not a hole of the prompt is
  an error.
* Interpolation. `{name}` and `{name.field}` look up the query's parameters
  only (a query is a function, also callable from the API without the flow):
  program inputs reach it as arguments. Fields starting with `_` are refused.
* `using` omitted: the first declared model, else the bundled default.
"""

from __future__ import annotations

from .. import ast as A
from .. import decoders as D
from .. import types as T
from ..constraints import spec as C
from ..values import plain_value
from .holes import hole_type, lower_constraints
from .context import Context, article, name_span
from .models import check_model_expr
from .names import type_of_ref
from .prompt_flow import check_grown, grown_holes, grown_type, is_grown
from .program import QueryInfo

RESERVED_FIELDS = ("distribution", "expert")


def check_queries(cx: Context) -> None:
    for q in cx.decls:
        if isinstance(q, A.QueryDecl):
            info = check_query(cx, q)
            if info is not None and cx.out.query_decls.get(q.name) is q:
                cx.out.queries[q.name] = info


def check_query(cx: Context, q: A.QueryDecl) -> QueryInfo | None:
    """The checked query, or None when it has errors."""
    n_errors = len(cx.report.errors)
    params: dict[str, T.T] = {}
    for p in q.params:
        if p.name in params:
            cx.error(f"duplicate parameter '{p.name}'", name_span(p), "name each parameter once")
        params[p.name] = type_of_ref(cx, p.type) or T.ANY
    using = _check_using(cx, q, params)
    decoder, given = _check_decoder(cx, q)
    chat = _check_roles(cx, q)
    holes, hole_nodes = _check_parts(cx, q, params)
    conds: dict[str, list] = {h: [] for h in holes}
    for w in q.wheres:
        for c in w.conds:
            if c.hole not in conds:
                cx.error(
                    f"constraint on [{c.hole}], which is not a hole of this prompt",
                    c,
                    cx.did_you_mean(c.hole, holes) or f"holes: {', '.join(holes) or 'none'}",
                )
                continue
            conds[c.hole].append(c)
    distribution = _check_distribution(cx, q, holes, conds, decoder)
    guard = _check_guard(cx, q, decoder, distribution)  # second wave: `guard leak(...)`
    lowered: dict = {}
    for h in holes:
        if distribution and h == distribution[0]:
            lowered[h] = C.Choice(distribution[1])
        else:
            lowered[h] = lower_constraints(cx, h, conds[h], hole_nodes[h], q)
    if decoder.name == "vote" and not holes:
        cx.error("vote needs a hole to vote on", decoder)
    looped = grown_holes(q)
    check_grown(cx, q, params, {h: hole_type(lowered[h]) if h in lowered else T.ANY for h in holes}, decoder)
    _grown_refusals(cx, q, decoder, given)
    if len(cx.report.errors) > n_errors:
        return None
    result_fields = {h: grown_type(hole_type(lowered[h]), looped.get(h, 0)) for h in holes}
    _sample_fields(cx, decoder, given, holes, hole_nodes, result_fields)  # second wave: sample(n), vote, best_of
    if len(cx.report.errors) > n_errors:
        return None
    if distribution:
        result_fields["distribution"] = T.JSON
    if isinstance(using, A.RouterCall):
        result_fields["expert"] = T.STR
    return QueryInfo(
        q,
        tuple(holes),
        lowered,
        (decoder.name, tuple(sorted(D.resolve(decoder.name, given).items()))),
        using,
        chat,
        distribution,
        T.record(**result_fields),
        guard,
    )


def _check_using(cx: Context, q: A.QueryDecl, params: dict) -> A.ModelExpr:
    """The model the query runs on (the default when `using` is omitted)."""
    from .flow import check_expr

    if q.using is None:
        return A.ModelRef(next(iter(cx.out.models)), span=q.span) if cx.out.models else A.DefaultModel(span=q.span)
    check_model_expr(cx, q.using, allow_router=True)
    if isinstance(q.using, A.RouterCall):
        for a in q.using.args:
            t = check_expr(cx, a, dict(params))
            if t.name not in ("str", "any", "json"):
                cx.error(f"a router routes on text, got {article(t)}", a, "pass a str parameter of the query")
    return q.using


def _check_decoder(cx: Context, q: A.QueryDecl) -> tuple[A.Decoder, dict]:
    """The decoder (argmax when none is written) and its options as given."""
    decoder = q.decoder or A.Decoder("argmax", (), span=q.span)
    given = {}
    for kw in decoder.options:
        if kw.name in given:
            cx.error(f"option '{kw.name}' given twice", kw)
        given[kw.name] = plain_value(kw.value)
    for p in D.validate(decoder.name, given):
        cx.error(p.message, next((kw for kw in decoder.options if kw.name == p.option), decoder), p.hint)
    return decoder, given


def _check_roles(cx: Context, q: A.QueryDecl) -> bool:
    """Whether the prompt is a chat (every line has a role) or plain (none)."""
    roles = [s.role for s in q.segments]
    chat = any(r is not None for r in roles)
    if chat and any(r is None for r in roles):
        seg = next(s for s in q.segments if s.role is None)
        cx.error(
            "mix of plain text and chat roles in one prompt",
            seg,
            "give every line a role (system, user, assistant) or none",
        )
    if not q.segments:
        cx.error(f"query '{q.name}' has no prompt", q, 'add a line such as user "..."')
    return chat


def _check_parts(cx: Context, q: A.QueryDecl, params: dict) -> tuple[list[str], dict[str, A.Hole]]:
    """The holes of the prompt, in order, and their nodes; interpolations checked."""
    holes: list[str] = []
    hole_nodes: dict[str, A.Hole] = {}
    grown = is_grown(q)
    for s in _segments(q):
        for part in s.parts:
            if isinstance(part, A.Interp) and not grown:  # a grown prompt's scope grows too (prompt_flow.py)
                check_interp(cx, part, params)
            if not isinstance(part, A.Hole):
                continue
            if part.name in hole_nodes:
                cx.error(f"hole [{part.name}] appears twice", part, "name each hole once")
                continue
            if part.name in RESERVED_FIELDS:
                cx.error(f"'{part.name}' is reserved", part, "rename the hole")
            if s.role in ("system", "user"):
                cx.error(
                    f"hole [{part.name}] in a {s.role} message",
                    part,
                    "holes are written by the model: put them in an assistant message",
                )
            if part.name in params:
                cx.error(f"hole [{part.name}] has the name of a parameter", part, "rename the hole")
            holes.append(part.name)
            hole_nodes[part.name] = part
    if q.segments and not holes:
        cx.error(
            f"query '{q.name}' has no hole, so there is nothing to decode",
            name_span(q),
            'add a hole for the model to fill, such as assistant "[answer]"',
        )
    return holes, hole_nodes


def _segments(q: A.QueryDecl):
    """The prompt's segments, those inside control-flow blocks too, each
    with the role of its message."""
    for s in q.segments:
        if isinstance(s, A.PromptBlock):
            for inner in s.segments():
                yield A.Segment(s.role, inner.parts, span=inner.span)
        else:
            yield s


def _check_distribution(cx: Context, q: A.QueryDecl, holes: list, conds: dict, decoder: A.Decoder):
    """(hole, options) of `distribution over [h] in [...]`, or None."""
    dist = q.distribution
    if dist is None:
        return None
    opts = plain_value(dist.options)
    if dist.hole not in conds:
        cx.error(
            f"distribution over [{dist.hole}], which is not a hole of this prompt",
            dist,
            cx.did_you_mean(dist.hole, holes),
        )
    elif len(holes) > 1:
        # the scorer runs on the prompt up to the hole, with no value for an
        # earlier hole (runtime/decode.py score_distribution): say so here
        cx.error(
            f"distribution over [{dist.hole}] needs it to be the query's only hole, and this query has {len(holes)}",
            dist,
            "move the other holes into a query of their own and pass their values to this one as parameters",
        )
    elif conds[dist.hole]:
        cx.error(
            f"[{dist.hole}] has both a distribution and where-constraints",
            dist,
            "the distribution's options are its constraint",
        )
    elif not isinstance(opts, list) or len(opts) < 2 or not all(isinstance(o, str) for o in opts):
        cx.error("distribution takes a list of at least two strings", dist.options)
    elif len(set(opts)) != len(opts):
        cx.error("distribution options repeat", dist.options)
    else:
        if decoder.name != "argmax":
            cx.error("a distribution query scores options exactly; it takes no decoder", decoder)
        return dist.hole, tuple(opts)
    return None


def check_interp(cx: Context, part: A.Interp, params: dict) -> None:
    head, *rest = part.path
    if head in params:
        t = params[head]
    elif head in cx.out.inputs:
        # A query is a function of its parameters (it is also callable from
        # the API without running the flow), so inputs reach it as arguments.
        cx.error(
            f"'{head}' is a program input, not a parameter of this query",
            part,
            f"add a parameter ({head}: {cx.out.inputs[head].type.describe()}) and pass {head} in the flow",
        )
        return
    else:
        cx.error(
            f"'{head}' is not in scope in this prompt",
            part,
            cx.did_you_mean(head, params)
            or ("the query's parameters: " + ", ".join(params) if params else "declare it as a parameter of the query"),
        )
        return
    for f in rest:
        if f.startswith("_"):
            cx.error(f"field '{f}' is not allowed", part, "fields starting with '_' are never looked up")
            return
        if t.name not in ("json", "any", "record"):
            cx.error(f"'{head}' is {article(t)} and has no field '{f}'", part)
            return
        if t.name == "record":
            ft = t.field(f)
            if ft is None:
                cx.error(f"no field '{f}'", part)
                return
            t = ft


# ---- second wave (issue #15): what sample(n: k), vote and best_of return ------


def _sample_fields(cx: Context, decoder: A.Decoder, given: dict, holes: list, hole_nodes: dict, fields: dict) -> None:
    """sample(n: k > 1) makes every hole a list of its k samples; vote adds
    `samples` (the voted hole's values) and `votes` (value -> count), best_of
    `scores` (each sample's log-probability). Their names are the decoder's
    there: a hole may not take them (runtime/samples.py fills them)."""
    taken = D.DETAIL_FIELDS.get(decoder.name, ())
    for h in holes:
        if h in taken:
            cx.error(f"'{h}' is a result field of {decoder.name}", hole_nodes[h], "rename the hole")
    if decoder.name == "sample" and given.get("n", 1) > 1:
        for h in holes:
            fields[h] = T.list_of(fields[h])
    if decoder.name == "vote" and holes:
        fields["samples"] = T.list_of(fields[holes[-1]])
        fields["votes"] = T.JSON
    if decoder.name == "best_of":
        fields["scores"] = T.list_of(T.FLOAT)


# ---- second wave (issue #15): `guard leak(...)` ---------------------------------


def _check_guard(cx: Context, q: A.QueryDecl, decoder: A.Decoder, distribution) -> tuple | None:
    """The query's guard, resolved (guards.py), or None. A leak guard masks
    tokens while a value is sampled: it needs a system message to guard, and
    a decoder that samples token by token (beam and distribution score whole
    values; served models are refused in checker/served.py)."""
    from .. import guards as G

    g = q.guard
    if g is None:
        return None
    given: dict = {}
    for kw in g.options:
        if kw.name in given:
            cx.error(f"option '{kw.name}' given twice", kw)
        given[kw.name] = plain_value(kw.value)
    problems = G.validate(g.name, given)
    for p in problems:
        cx.error(p.message, next((kw for kw in g.options if kw.name == p.option), g), p.hint)
    if problems:
        return None
    if not any(s.role == "system" for s in q.segments):
        cx.error(f"guard {g.name} guards the system message, and this query has none", g, 'add `system "..."`')
        return None
    if decoder.name == "beam" or distribution:
        what = "beam search" if decoder.name == "beam" else "a distribution"
        cx.error(
            f"guard {g.name} masks sampled tokens; {what} scores whole values", g, "use argmax, sample, best_of or vote"
        )
        return None
    return G.resolve(g.name, given)


def _grown_refusals(cx: Context, q: A.QueryDecl, decoder: A.Decoder, given: dict) -> None:
    """A grown prompt (control flow, tool calls) decodes one value per hole
    along one growing cache: k samples per hole would need k prompts, and the
    leak guard watches a fixed prompt's values. Both are refused here rather
    than half-applied at run time."""

    if not is_grown(q):
        return
    if decoder.name == "sample" and given.get("n", 1) > 1:
        cx.error(
            "sample(n: k) with k > 1 needs a fixed prompt; this one grows as it decodes",
            decoder,
            "call the query k times in the flow (each call gets its own seed)",
        )
    if q.guard is not None:
        cx.error(
            "guard leak applies to a fixed prompt; this one grows as it decodes",
            q.guard,
            "guard a query without for/if/call in its messages",
        )
