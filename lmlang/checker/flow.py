"""The flow: scoping and light typing of statements and expressions, calls
of queries, builtins (lmlang.builtins, the table the interpreter runs) and
registered Python functions, and queries the flow never calls.
"""

from __future__ import annotations

from .. import ast as A
from ..lifecycle.tables import generate_query_name
from .. import types as T
from ..builtins import BUILTINS
from .context import Context, article, name_span
from .names import type_of_ref

_BOOL_OPS = ("and", "or", "==", "!=", "<", "<=", ">", ">=", "in")
_NUMBERS = ("int", "float", "bool")
_UNKNOWN = ("any", "json")


def check_flow(cx: Context) -> None:
    flow = cx.out.flow
    if flow is None:
        return
    scope: dict[str, T.T] = {name: (type_of_ref(cx, d.type) or T.ANY) for name, d in cx.out.inputs.items()}
    check_block(cx, flow.body, scope)
    if not cx.emitted:
        cx.warn("the flow emits nothing", flow, "add `emit name = value`")


def check_block(cx: Context, stmts, scope: dict) -> dict:
    """Check statements in order; the scope after them (names assigned on
    both branches of an `if` stay in scope after it)."""
    for s in stmts:
        if isinstance(s, A.Assign):
            t = check_expr(cx, s.value, scope)
            kind = cx.out.kind_of(s.name)
            if kind and kind != "an input":
                cx.error(f"'{s.name}' is {kind} and cannot be assigned", name_span(s), "pick another variable name")
            scope[s.name] = t
        elif isinstance(s, A.If):
            check_expr(cx, s.cond, scope)
            a = check_block(cx, s.then, dict(scope))
            b = check_block(cx, s.orelse, dict(scope))
            for k in set(a) & set(b):
                if k not in scope:
                    scope[k] = a[k] if a[k] == b[k] else T.ANY
        elif isinstance(s, A.For):
            it = check_expr(cx, s.iter, scope)
            if it.name not in ("list", *_UNKNOWN):
                cx.error(f"cannot loop over {article(it)}", s.iter, "for loops over lists")
            inner = dict(scope)
            inner[s.var] = it.item or T.ANY if it.name == "list" else T.ANY
            check_block(cx, s.body, inner)
        elif isinstance(s, (A.While, A.Return)):
            _check_issue15_stmt(cx, s, scope)
        elif isinstance(s, A.Emit):
            if cx.in_def is not None:
                cx.error("emit inside a function", s, "return a value and emit it in the flow")
            names = set()
            for item in s.items:
                if item.name in names:
                    cx.error(f"'{item.name}' emitted twice", item)
                names.add(item.name)
                cx.emitted.add(item.name)
                check_expr(cx, item.value, scope)
    return scope


def _check_issue15_stmt(cx: Context, s, scope: dict) -> None:
    """`while COND max N` and `return` (checker/defs.py owns their rules)."""
    from .defs import check_return, check_while

    if isinstance(s, A.While):
        check_while(cx, s)
        check_expr(cx, s.cond, scope)
        inner = check_block(cx, s.body, dict(scope))
        for k in inner:  # a name a loop reassigns keeps its type; new names stay inside
            if k in scope and inner[k] != scope[k]:
                scope[k] = T.ANY
    else:
        check_return(cx, s)
        check_expr(cx, s.value, scope)


def check_expr(cx: Context, e, scope: dict) -> T.T:
    """The type of a flow expression (ANY where it cannot be known)."""
    if isinstance(e, A.Lit):
        return T.of_python(e.value)
    if isinstance(e, A.Var):
        return _check_var(cx, e, scope)
    if isinstance(e, A.Attr):
        return _check_attr(cx, e, scope)
    if isinstance(e, A.Index):
        t = check_expr(cx, e.obj, scope)
        it = check_expr(cx, e.index, scope)
        if t.name == "list":
            if it.name not in ("int", *_UNKNOWN):
                cx.error("a list index must be an int", e.index)
            return t.item or T.ANY
        if t.name == "str":
            return T.STR
        if t.name not in (*_UNKNOWN, "record"):
            cx.error(f"cannot index {article(t)}", e)
        return T.ANY
    if isinstance(e, A.ListExpr):
        items = {check_expr(cx, x, scope) for x in e.items}
        return T.list_of(items.pop() if len(items) == 1 else T.ANY)
    if isinstance(e, A.UnaryOp):
        t = check_expr(cx, e.operand, scope)
        if e.op == "not":
            return T.BOOL
        if t.name not in ("int", "float", *_UNKNOWN):
            cx.error(f"cannot negate {article(t)}", e)
        return t
    if isinstance(e, A.BinOp):
        return _check_binop(cx, e, scope)
    if isinstance(e, A.Call):
        return check_call(cx, e, scope)
    cx.error("unsupported expression", e)
    return T.ANY


def _check_var(cx: Context, e: A.Var, scope: dict) -> T.T:
    if e.name in scope:
        return scope[e.name]
    kind = cx.out.kind_of(e.name)
    if kind:
        cx.error(f"'{e.name}' is {kind}, not a value", e, f"call it: {e.name}(...)" if kind == "a query" else "")
    else:
        cx.error(
            f"undefined name '{e.name}'", e, cx.did_you_mean(e.name, scope) or "assign it first, or declare an input"
        )
    return T.ANY


def _check_attr(cx: Context, e: A.Attr, scope: dict) -> T.T:
    t = check_expr(cx, e.obj, scope)
    if e.name.startswith("_"):
        cx.error(f"field '{e.name}' is not allowed", e, "fields starting with '_' are never looked up")
        return T.ANY
    if t.name == "record":
        ft = t.field(e.name)
        if ft is None:
            names = [k for k, _ in t.fields]
            cx.error(f"no field '{e.name}'", e, cx.did_you_mean(e.name, names) or "fields: " + ", ".join(names))
            return T.ANY
        return ft
    if t.name in _UNKNOWN:
        return T.ANY
    cx.error(f"{article(t).capitalize()} has no field '{e.name}'", e)
    return T.ANY


def _check_binop(cx: Context, e: A.BinOp, scope: dict) -> T.T:
    lt = check_expr(cx, e.left, scope)
    rt = check_expr(cx, e.right, scope)
    if e.op in _BOOL_OPS:
        return T.BOOL
    if e.op == "+" and lt.name == "str" and rt.name == "str":
        return T.STR
    if e.op == "+" and lt.name == "list" and rt.name == "list":
        return lt
    if lt.name in _UNKNOWN or rt.name in _UNKNOWN:
        return T.ANY
    if lt.name in _NUMBERS and rt.name in _NUMBERS:
        return T.FLOAT if "float" in (lt.name, rt.name) or e.op == "/" else T.INT
    cx.error(
        f"cannot apply '{e.op}' to {lt} and {rt}",
        e,
        _binop_hint(lt, rt),
    )
    return T.ANY


def _binop_hint(lt: T.T, rt: T.T) -> str:
    union = next((t for t in (lt, rt) if t.name == "union"), None)
    if union is not None:  # a hole under `or`: its value may be any member
        return (
            f"the value may be {' or '.join(union.names())} (a hole under `or`): compare it with its text "
            "options first, then convert it with int(...), float(...) or str(...)"
        )
    return "use str(x) to join text and numbers" if "str" in (lt.name, rt.name) else ""


def check_call(cx: Context, e: A.Call, scope: dict) -> T.T:
    arg_types = [check_expr(cx, a, scope) for a in e.args]
    kw_types = {k: check_expr(cx, v, scope) for k, v in e.kwargs}
    out = cx.out
    if e.func in out.query_decls:
        return _check_query_call(cx, e, arg_types, kw_types)
    if e.func in cx.functions:
        return T.ANY
    if e.func in out.defs:
        from .defs import check_def_call

        return check_def_call(cx, e)
    if e.func in BUILTINS:
        return _check_builtin_call(cx, e, arg_types)
    kind = out.kind_of(e.func)
    if kind:
        cx.error(f"'{e.func}' is {kind} and cannot be called in the flow", e)
    else:
        cx.error(
            f"undefined function '{e.func}'",
            e,
            cx.did_you_mean(e.func, [*out.query_decls, *out.defs, *BUILTINS, *cx.functions])
            or "call a query, a builtin, or a Python function registered with program.register()",
        )
    return T.ANY


def _check_query_call(cx: Context, e: A.Call, arg_types: list, kw_types: dict) -> T.T:
    info = cx.out.queries.get(e.func)
    result = info.result_type if info else T.ANY
    decl = cx.out.query_decls[e.func]
    params = [p.name for p in decl.params]
    if len(e.args) > len(params):
        cx.error(f"{e.func}() takes {len(params)} argument{'s' * (len(params) != 1)}, got {len(e.args)}", e)
        return result
    bound = dict(zip(params, arg_types))
    for k, t in kw_types.items():
        if k not in params:
            cx.error(f"{e.func}() has no parameter '{k}'", e, cx.did_you_mean(k, params))
        elif k in bound:
            cx.error(f"{e.func}() got '{k}' twice", e)
        bound[k] = t
    missing = [p for p in params if p not in bound]
    if missing:
        cx.error(f"{e.func}() is missing {', '.join(missing)}", e, f"{e.func} takes ({', '.join(params)})")
    for p in decl.params:
        if p.name in bound:
            want = type_of_ref(cx, p.type) if p.type else T.ANY
            if want is not None and not T.assignable(bound[p.name], want):
                cx.error(f"{e.func}() argument '{p.name}' expects {want}, got {bound[p.name]}", e)
    return result


def _check_builtin_call(cx: Context, e: A.Call, arg_types: list) -> T.T:
    b = BUILTINS[e.func]
    if e.kwargs:
        cx.error(f"{e.func}() takes no named arguments", e)
    if not (b.min_args <= len(e.args) <= b.max_args):
        cx.error(f"{e.func}() takes {b.arity_text()} argument{'s' * (b.max_args != 1)}, got {len(e.args)}", e)
        return b.result
    for i, (arg, t) in enumerate(zip(e.args, arg_types)):
        wants = b.args[i : i + 1]
        if wants and t.name not in _UNKNOWN and not set(t.names()) <= set(wants[0]):  # a union: every member
            cx.error(f"{e.func}() argument {i + 1} must be {' or '.join(wants[0])}, got {t}", arg)
    return b.result


def check_unused(cx: Context) -> None:
    """Warn about queries of this file that the flow never calls."""
    if cx.out.flow is None:
        return
    called = {n.func for n in cx.out.flow.walk() if isinstance(n, A.Call)}
    called |= {e.query for e in cx.out.evals.values()}  # an eval block calls its query
    called |= {generate_query_name(n) for n in cx.out.datasets}  # a generation's internal query
    for name, d in cx.out.queries.items():
        if name not in called and d.decl.span.filename == cx.source.filename:
            cx.warn(
                f"query '{name}' is never called",
                name_span(d.decl),
                "call it in the flow or remove it",
                code="unused-query",
            )
