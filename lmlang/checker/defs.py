"""Flow functions (`def NAME(params) { ... return EXPR }`) and bounded
`while` loops (issue 15).

The rules that are choices, not facts:

* A function sees its parameters and nothing else of the flow (no globals):
  it is a reusable fragment, callable from the flow and from other functions,
  and may call queries. Its parameters are untyped (`any`); its result type
  is the type of its `return` expressions when they agree, else `any`.
* No recursion, direct or mutual: every flow then ends, and a call's depth is
  bounded by the number of functions. A cycle is refused at the call that
  closes it.
* `while COND max N { }`: N is required and at least 1 (at most MAX_WHILE):
  a loop the checker cannot see end is refused.
* `return` only inside a function; a function without a `return` returns
  nothing (null).
"""

from __future__ import annotations

from .. import ast as A
from .. import types as T
from .context import Context, name_span

MAX_WHILE = 10_000


def check_defs(cx: Context) -> None:
    """Each function's body, then recursion across all of them."""
    from .flow import check_block

    for d in cx.out.defs.values():
        if len(set(d.params)) != len(d.params):
            cx.error(f"function '{d.name}' repeats a parameter", name_span(d), "name each parameter once")
        scope: dict = {p: T.ANY for p in d.params}
        cx.in_def = d.name
        try:
            check_block(cx, d.body, scope)
        finally:
            cx.in_def = None
    _check_recursion(cx)


def def_result(cx: Context, d: A.DefDecl) -> T.T:
    """The type a call of `d` has (its returns' common type, else any)."""
    types = set()
    for n in d.walk():
        if isinstance(n, A.Return) and isinstance(n.value, A.Lit):
            types.add(T.of_python(n.value.value))
        elif isinstance(n, A.Return):
            return T.ANY
    return types.pop() if len(types) == 1 else T.ANY


def check_def_call(cx: Context, e: A.Call) -> T.T:
    d = cx.out.defs[e.func]
    if e.kwargs:
        cx.error(f"{e.func}() takes no named arguments", e, f"{e.func} takes ({', '.join(d.params)})")
    if len(e.args) != len(d.params):
        cx.error(
            f"{e.func}() takes {len(d.params)} argument{'s' * (len(d.params) != 1)}, got {len(e.args)}",
            e,
            f"{e.func} takes ({', '.join(d.params)})",
        )
    return def_result(cx, d)


def check_while(cx: Context, s: A.While) -> None:
    if s.max <= 0 or s.max > MAX_WHILE:
        cx.error(
            "a while loop needs a bound: while COND max N { ... }"
            if s.max <= 0
            else f"max {s.max} is above {MAX_WHILE}",
            s,
            f"write `max N` after the condition, N from 1 to {MAX_WHILE}: a loop the checker cannot see end is refused",
        )


def check_return(cx: Context, s: A.Return) -> None:
    if cx.in_def is None:
        cx.error("return outside a function", s, "return ends a `def`; the flow's outputs are its `emit`s")


def _check_recursion(cx: Context) -> None:
    """A call graph among functions; any cycle is an error at the call that closes it."""
    calls: dict[str, list[A.Call]] = {
        name: [n for n in d.walk() if isinstance(n, A.Call) and n.func in cx.out.defs]
        for name, d in cx.out.defs.items()
    }
    reported: set = set()
    for start in calls:
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        while stack:
            name, path = stack.pop()
            for c in calls[name]:
                if c.func == start:
                    cycle = " -> ".join([*path, start])
                    key = frozenset(path)
                    if key not in reported:
                        reported.add(key)
                        cx.error(
                            f"recursion: {cycle}",
                            c,
                            "a flow function cannot call itself, directly or through others; write a loop "
                            "(for, or while ... max N)",
                        )
                elif c.func not in path:
                    stack.append((c.func, [*path, c.func]))
