"""The flow interpreter: runs the statement IR (`lmlang.graph.ir`) of
StepSpec nodes.

Values are plain Python data (str, int, float, bool, list, dict); field
access is a dict lookup, so a script can never reach Python attributes.
Calls go to queries, a fixed table of builtins, or functions registered
through the API.

A row's flow is a generator that yields a QueryCall whenever it needs a
query's result; the scheduler (schedule.py) batches the calls of many rows
and sends each its result. Every call carries its position: the call site
and the indices of the loops around it. The position names one call of one
row whatever the order calls are made in, so sampling seeds derive from it
and calls made early (prefetch.py) are matched to the flow's own calls.
"""

from __future__ import annotations

from ..builtins import BUILTINS
from ..errors import LmlangRuntimeError
from ..graph import ir as I


class FlowError(LmlangRuntimeError):
    pass


class QueryCall:
    """A request the flow yields when it needs a query's result; the driver
    batches requests from many rows and sends each row its result back.
    `path` holds the indices of the enclosing loops' iterations, so
    (loc, path) names this call among all calls of the row."""

    __slots__ = ("name", "args", "kwargs", "loc", "path")

    def __init__(self, name, args, kwargs, loc, path=()):
        self.name, self.args, self.kwargs, self.loc, self.path = name, args, kwargs, loc, path

    @property
    def position(self) -> tuple:
        return (self.name, self.loc, self.path)


class Future:
    """A value that a prefetch task is still computing (prefetch.py); reading
    it joins the task."""

    __slots__ = ("task",)

    def __init__(self, task):
        self.task = task


class Spawn:
    """Yielded to start `gen` as a task of the same row, running alongside;
    the task handle is sent back at once."""

    __slots__ = ("gen",)

    def __init__(self, gen):
        self.gen = gen


class Join:
    """Yielded to wait for a spawned task: its value is sent back, its error thrown in."""

    __slots__ = ("task",)

    def __init__(self, task):
        self.task = task


class _Return(Exception):
    """`return` inside a flow function: unwinds to the call (issue 15)."""

    def __init__(self, value):
        self.value = value


class Interpreter:
    """Runs the statement IR as a generator per row (yielding QueryCalls).
    With `prefetch` on, the row also spawns a task that makes, ahead of time,
    every call whose arguments are already known (prefetch.py), so
    independent calls of one row decode together."""

    def __init__(self, functions: dict, queries: set, prefetch: bool = False, defs: dict | None = None):
        self.functions = functions
        self.queries = queries
        self.defs = dict(defs or {})  # name -> graph.specs.DefSpec (flow functions)
        self.prefetcher = None
        if prefetch and queries:
            from .prefetch import Prefetcher

            self.prefetcher = Prefetcher(self)

    def run_steps(self, steps, env: dict):
        emitted: dict = {}
        if self.prefetcher is not None:
            yield Spawn(self.prefetcher.block(tuple(steps), dict(env), frozenset(), ()))
        for stmt in steps:
            yield from self.stmt(stmt, env, emitted, ())
        return emitted

    def stmt(self, s: I.Stmt, env: dict, emitted: dict, path: tuple = ()):
        match s:
            case I.Assign(name, value):
                env[name] = yield from self.expr(value, env, path)
            case I.If(cond, then, orelse):
                test = yield from self.expr(cond, env, path)
                for x in then if _truthy(test) else orelse:
                    yield from self.stmt(x, env, emitted, path)
            case I.For(var, it, body):
                items = yield from self.expr(it, env, path)
                if not isinstance(items, (list, tuple)):
                    raise FlowError(f"for loops over lists, got {type(items).__name__}")
                if self.prefetcher is not None and len(items) > 1:
                    yield Spawn(self.prefetcher.loop(s, items, dict(env), path))
                for i, item in enumerate(items):
                    env[var] = item
                    for x in body:
                        yield from self.stmt(x, env, emitted, path + (i,))
            case I.Emit(items):
                for name, e in items:
                    emitted[name] = yield from self.expr(e, env, path)
            case I.While(cond, bound, body):
                for i in range(bound):  # the bound the checker required: the loop ends
                    test = yield from self.expr(cond, env, path)
                    if not _truthy(test):
                        break
                    for x in body:
                        yield from self.stmt(x, env, emitted, path + (i,))
            case I.Return(value):
                raise _Return((yield from self.expr(value, env, path)))

    def expr(self, e: I.Expr, env: dict, path: tuple = ()):
        match e:
            case I.Lit(value):
                return value
            case I.Var(name):
                if name not in env:
                    raise FlowError(f"'{name}' has no value here", hint="it is assigned only on some paths")
                v = env[name]
                if isinstance(v, Future):  # only in a prefetch task's environment
                    v = yield Join(v.task)
                return v
            case I.Attr(obj_e, name):
                obj = yield from self.expr(obj_e, env, path)
                if isinstance(obj, dict) and name in obj:
                    return obj[name]
                raise FlowError(f"no field '{name}' in {_short(obj)}")
            case I.Index(obj_e, idx_e):
                obj = yield from self.expr(obj_e, env, path)
                idx = yield from self.expr(idx_e, env, path)
                return _index(obj, idx)
            case I.ListExpr(items):
                out = []
                for x in items:
                    out.append((yield from self.expr(x, env, path)))
                return out
            case I.UnaryOp(op, operand):
                v = yield from self.expr(operand, env, path)
                if op == "not":
                    return not _truthy(v)
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise FlowError(f"cannot negate {_short(v)}")
                return -v
            case I.BinOp(op, left_e, right_e):
                left = yield from self.expr(left_e, env, path)
                if op == "and":
                    return (yield from self.expr(right_e, env, path)) if _truthy(left) else left
                if op == "or":
                    return left if _truthy(left) else (yield from self.expr(right_e, env, path))
                right = yield from self.expr(right_e, env, path)
                return _binop(op, left, right)
            case I.Call():
                return (yield from self.call(e, env, path))
        raise FlowError(f"unknown expression {e.tag}")  # pragma: no cover

    def call(self, e: I.Call, env: dict, path: tuple = ()):
        name, loc = e.func, e.loc
        argv = []
        for a in e.args:
            argv.append((yield from self.expr(a, env, path)))
        kw = {}
        for k, v in e.kwargs:
            kw[k] = yield from self.expr(v, env, path)
        if name in self.functions:
            try:
                return self.functions[name](*argv, **kw)
            except LmlangRuntimeError:
                raise
            except Exception as exc:  # a user's Python function failed
                raise FlowError(f"function {name}() failed: {type(exc).__name__}: {exc}", hint=f"at {loc}") from exc
        if name in self.defs:
            return (yield from self.call_def(self.defs[name], argv, path + (loc,)))
        if name in BUILTINS:
            try:
                return BUILTINS[name].fn(*argv, **kw)
            except (TypeError, ValueError, AttributeError) as exc:
                raise FlowError(f"{name}(): {exc}", hint=f"at {loc}") from None
        if name in self.queries:
            return (yield QueryCall(name, argv, kw, loc, path))
        raise FlowError(f"undefined function '{name}'", hint=f"at {loc}")

    def call_def(self, d, argv: list, path: tuple):
        """A flow function's body in an environment of its own (its
        parameters only); the call site joins the path, so the queries it
        calls are told apart per call site. No recursion (the checker
        refused cycles), so the depth is bounded."""
        env = dict(zip(d.params, argv))
        try:
            for x in d.body:
                yield from self.stmt(x, env, {}, path)
        except _Return as r:
            return r.value
        return None


def _index(obj, idx):
    try:
        if isinstance(obj, dict):
            return obj[idx]
        if isinstance(obj, (list, tuple, str)) and isinstance(idx, int) and not isinstance(idx, bool):
            return obj[idx]
    except (KeyError, IndexError, TypeError):
        raise FlowError(f"index {idx!r} out of range for {_short(obj)}") from None
    raise FlowError(f"cannot index {_short(obj)} with {idx!r}")


def _truthy(v) -> bool:
    return bool(v)


def _binop(op: str, a, b):
    try:
        if op == "==":
            return a == b
        if op == "!=":
            return a != b
        if op == "<":
            return a < b
        if op == "<=":
            return a <= b
        if op == ">":
            return a > b
        if op == ">=":
            return a >= b
        if op == "in":
            return a in b
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return a / b
        if op == "%":
            return a % b
    except ZeroDivisionError:
        raise FlowError("division by zero") from None
    except TypeError:
        raise FlowError(f"cannot apply '{op}' to {_short(a)} and {_short(b)}") from None
    raise FlowError(f"unknown operator {op}")  # pragma: no cover


def _short(v) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"
