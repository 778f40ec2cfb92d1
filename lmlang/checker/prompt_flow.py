"""Grown prompts (issue 15): control flow and tool calls inside a query's
messages, checked for names, types and bounds.

The rules that are choices, not facts:

* A loop's bound is visible: `for NAME in range(N)` with N an int literal or
  an int expression of parameters and loop variables (never a hole), or a
  list (a literal or a list parameter). A prompt never loops on a value the
  model is still writing, so a prompt's length is known before it runs.
* A hole inside a loop is a list in the query's result (one value per
  iteration, in order; inside nested loops a list of lists, one level per
  loop); inside the loop's own conditions and tool calls it is the current
  iteration's value. A hole outside loops stays a single value.
* A condition, a loop's list or a tool's argument may read a hole only once
  the text has passed it (the hole is written earlier in the prompt); they may
  not call queries (a prompt is one decoding, not a flow).
* `break` leaves the innermost loop of the prompt; outside a loop it is an error.
* `call("NAME", ...)`: NAME is a built-in tool (lmlang.tools.TOOLS) or a
  Python function registered with `program.register` before the check.
  `{obs = call(...)}` names the result (a str) for what follows.
"""

from __future__ import annotations

from .. import ast as A
from .. import types as T
from ..tools import TOOLS
from .context import Context, article
from .flow import check_expr


def grown_holes(q: A.QueryDecl) -> dict[str, int]:
    """Every hole of the prompt in order, with how many loops enclose it
    (0: a single value; 1: a list; 2: a list of lists, ...)."""
    out: dict[str, int] = {}
    for s in q.segments:
        if isinstance(s, A.PromptBlock):
            _holes_in(s.body, 0, out)
    return out


def grown_type(t: T.T, depth: int) -> T.T:
    """A hole's result type inside `depth` loops: one list level per loop."""
    for _ in range(depth):
        t = T.list_of(t)
    return t


def _holes_in(body, depth: int, out: dict) -> None:
    for st in body:
        if isinstance(st, A.Segment):
            for p in st.parts:
                if isinstance(p, A.Hole):
                    out.setdefault(p.name, depth)
        elif isinstance(st, A.PromptFor):
            _holes_in(st.body, depth + 1, out)
        elif isinstance(st, A.PromptIf):
            _holes_in(st.then, depth, out)
            _holes_in(st.orelse, depth, out)


def is_grown(q: A.QueryDecl) -> bool:
    return any(isinstance(s, A.PromptBlock) for s in q.segments) or any(
        isinstance(p, A.ToolCall) for s in q.segments for p in s.parts
    )


def check_grown(cx: Context, q: A.QueryDecl, params: dict, hole_types: dict, decoder: A.Decoder) -> None:
    """Names, types and bounds of the prompt's control flow and tool calls."""
    if not is_grown(q):
        return
    if decoder.name not in ("argmax", "sample"):
        cx.error(
            f"a prompt with control flow or tool calls decodes with argmax or sample, not {decoder.name}",
            decoder,
            "it grows one prompt as it decodes; several candidates would each grow their own",
        )
    if q.distribution is not None:
        cx.error("distribution scores one fixed prompt; this one grows as it decodes", q.distribution)
    _check_binds(cx, q, params, hole_types)
    scope = dict(params)
    for s in q.segments:
        if isinstance(s, A.PromptBlock):
            _check_body(cx, s.body, scope, hole_types, loops=0)
        else:
            _check_segment(cx, s, scope, hole_types)


def _check_body(cx: Context, body, scope: dict, hole_types: dict, loops: int) -> None:
    for st in body:
        if isinstance(st, A.Segment):
            _check_segment(cx, st, scope, hole_types)
        elif isinstance(st, A.PromptBreak):
            if not loops:
                cx.error("break outside a loop", st, "break leaves a prompt's `for` loop; put it inside one")
        elif isinstance(st, A.PromptIf):
            _check_cond(cx, st.cond, scope, hole_types)
            _check_body(cx, st.then, scope, hole_types, loops)
            _check_body(cx, st.orelse, scope, hole_types, loops)
        elif isinstance(st, A.PromptFor):
            item = _check_bound(cx, st, scope, hole_types)
            inner = dict(scope)
            inner[st.var] = item
            _check_body(cx, st.body, inner, hole_types, loops + 1)
            for name, t in inner.items():  # holes and tool results inside stay readable after it (their last value)
                if name not in scope and name != st.var:
                    scope[name] = t


def _check_segment(cx: Context, s: A.Segment, scope: dict, hole_types: dict) -> None:
    """Interpolations and tool arguments read the scope as it is here; each
    hole joins the scope once the text passes it."""
    from .queries import check_interp

    for p in s.parts:
        if isinstance(p, A.Interp):
            check_interp(cx, p, scope)  # parameters, loop variables, holes already decoded
        elif isinstance(p, A.ToolCall):
            _check_tool(cx, p, scope, hole_types)
            if p.bind is not None:
                scope[p.bind] = T.STR  # a tool's result is prompt text (_check_binds)
        elif isinstance(p, A.Hole) and p.name in hole_types:
            scope[p.name] = hole_types[p.name]


def _check_tool(cx: Context, call: A.ToolCall, scope: dict, hole_types: dict) -> None:
    """Arguments are flow expressions, typed in the prompt's scope; a
    built-in tool's arguments must have the types it takes (a registered
    function takes any value)."""
    types = [_check_cond(cx, a, scope, hole_types) for a in call.args]
    if call.name in cx.functions:
        return
    tool = TOOLS.get(call.name)
    if tool is None:
        cx.error(
            f"unknown tool '{call.name}'",
            call,
            cx.did_you_mean(call.name, [*TOOLS, *cx.functions])
            or "built-in tools: "
            + ", ".join(TOOLS)
            + "; register a Python function with program.register(name, fn) before checking",
        )
    elif len(call.args) != tool.arity:
        cx.error(f"tool '{call.name}' takes {tool.arity} argument{'s' * (tool.arity != 1)}, got {len(call.args)}", call)
    else:
        for i, (a, t, wants) in enumerate(zip(call.args, types, tool.args)):
            if t.name not in ("any", "json") and not set(t.names()) <= set(wants):
                cx.error(
                    f"tool '{call.name}' argument {i + 1} must be {' or '.join(wants)}, got {t}",
                    a,
                    "convert it first: str(x), or index a list: xs[0]" if t.name == "list" else "",
                )


def _check_binds(cx: Context, q: A.QueryDecl, params: dict, hole_types: dict) -> None:
    """`{obs = call(...)}` names the result (a str) for the prompt's later
    conditions, interpolations and tool arguments, so a prompt can branch on
    `"error" in obs`. The name is never a parameter, a hole or a loop
    variable (one name, one meaning in a prompt); two calls may share it."""
    loop_vars = {n.var for s in q.segments for n in s.walk() if isinstance(n, A.PromptFor)}
    for s in q.segments:
        for n in s.walk():
            if isinstance(n, A.ToolCall) and n.bind is not None:
                taken = (
                    "a parameter"
                    if n.bind in params
                    else "a hole"
                    if n.bind in hole_types
                    else "a loop variable"
                    if n.bind in loop_vars
                    else None
                )
                if taken is not None:
                    cx.error(f"'{n.bind}' is {taken} and cannot name a tool's result", n, "pick another name")


def _check_cond(cx: Context, e, scope: dict, hole_types: dict) -> T.T:
    """An expression of the prompt: names in scope, no query calls."""
    for n in e.walk():
        if isinstance(n, A.Call) and n.func in cx.out.query_decls:
            cx.error(
                f"a prompt cannot call query '{n.func}'",
                n,
                "call it in the flow and pass its value as a parameter",
            )
            return T.ANY
        if isinstance(n, A.Var) and n.name not in scope and n.name in hole_types:
            cx.error(
                f"hole [{n.name}] is read before it is decoded",
                n,
                "a condition can read a hole only after the prompt's text has passed it",
            )
            return T.ANY
    return check_expr(cx, e, dict(scope))


def _check_bound(cx: Context, st: A.PromptFor, scope: dict, hole_types: dict) -> T.T:
    """The type of the loop's items; an error unless its length is visible."""
    it = st.iter
    if isinstance(it, A.Call) and it.func == "range":
        _check_range(cx, it, scope, hole_types)
        return T.INT
    t = _check_cond(cx, it, scope, hole_types)
    if isinstance(it, A.ListExpr) or (isinstance(it, A.Var) and it.name in scope and t.name == "list"):
        return t.item or T.ANY
    cx.error(
        f"unbounded prompt loop over {article(t)}",
        it,
        "loop over range(N), a list literal or a list parameter: a prompt loop's bound must be visible",
    )
    return T.ANY


def _check_range(cx: Context, it: A.Call, scope: dict, hole_types: dict) -> None:
    """`range(N)` / `range(A, B)`: int literals, or int expressions of the
    parameters and loop variables (known before the prompt runs; the run
    refuses more than MAX_PROMPT_LOOP iterations). Never a hole: the model
    does not choose how long its own prompt is."""
    hint = "write range(4) or range(n) with n an int parameter: the prompt's length must be known before it runs"
    if not 1 <= len(it.args) <= 2 or it.kwargs:
        cx.error("a prompt loop's range takes one or two ints", it, hint)
        return
    for a in it.args:
        hole = next((n for n in a.walk() if isinstance(n, A.Var) and n.name in hole_types), None)
        if hole is not None:
            cx.error(f"a prompt loop's range cannot read hole [{hole.name}]", hole, hint)
            return
        t = _check_cond(cx, a, scope, hole_types)
        if t.name not in ("int", "any", "json"):
            cx.error(f"a prompt loop's range takes ints, got {article(t)}", a, hint)
            return
    n = it.args[0].value if len(it.args) == 1 and isinstance(it.args[0], A.Lit) else None
    if isinstance(n, int) and not 0 < n <= MAX_PROMPT_LOOP:
        cx.error(f"range({n}) is not between 1 and {MAX_PROMPT_LOOP}", it)


MAX_PROMPT_LOOP = 1000
