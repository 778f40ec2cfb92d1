"""The flow interpreter: runs the statement IR (`lmlang.graph.ir`) of
StepSpec nodes.

Values are plain Python data (str, int, float, bool, list, dict); field
access is a dict lookup, so a script can never reach Python attributes.
Calls go to queries, a fixed table of builtins, or functions registered
through the API.
"""
from __future__ import annotations

from ..builtins import BUILTINS
from ..errors import LmlangRuntimeError
from ..graph import ir as I


class FlowError(LmlangRuntimeError):
    pass


class QueryCall:
    """A request the flow yields when it needs a query's result; the driver
    batches requests from many rows and sends each row its result back."""

    __slots__ = ("name", "args", "kwargs", "loc")

    def __init__(self, name, args, kwargs, loc):
        self.name, self.args, self.kwargs, self.loc = name, args, kwargs, loc


class Interpreter:
    """Runs the statement IR as a generator per row (yielding QueryCalls)."""

    def __init__(self, functions: dict, queries: set):
        self.functions = functions
        self.queries = queries

    def run_steps(self, steps, env: dict):
        emitted: dict = {}
        for stmt in steps:
            yield from self.stmt(stmt, env, emitted)
        return emitted

    def stmt(self, s: I.Stmt, env: dict, emitted: dict):
        match s:
            case I.Assign(name, value):
                env[name] = yield from self.expr(value, env)
            case I.If(cond, then, orelse):
                test = yield from self.expr(cond, env)
                for x in (then if _truthy(test) else orelse):
                    yield from self.stmt(x, env, emitted)
            case I.For(var, it, body):
                items = yield from self.expr(it, env)
                if not isinstance(items, (list, tuple)):
                    raise FlowError(f"for loops over lists, got {type(items).__name__}")
                for item in items:
                    env[var] = item
                    for x in body:
                        yield from self.stmt(x, env, emitted)
            case I.Emit(items):
                for name, e in items:
                    emitted[name] = yield from self.expr(e, env)

    def expr(self, e: I.Expr, env: dict):
        match e:
            case I.Lit(value):
                return value
            case I.Var(name):
                if name not in env:
                    raise FlowError(f"'{name}' has no value here", hint="it is assigned only on some paths")
                return env[name]
            case I.Attr(obj_e, name):
                obj = yield from self.expr(obj_e, env)
                if isinstance(obj, dict) and name in obj:
                    return obj[name]
                raise FlowError(f"no field '{name}' in {_short(obj)}")
            case I.Index(obj_e, idx_e):
                obj = yield from self.expr(obj_e, env)
                idx = yield from self.expr(idx_e, env)
                return _index(obj, idx)
            case I.ListExpr(items):
                out = []
                for x in items:
                    out.append((yield from self.expr(x, env)))
                return out
            case I.UnaryOp(op, operand):
                v = yield from self.expr(operand, env)
                if op == "not":
                    return not _truthy(v)
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise FlowError(f"cannot negate {_short(v)}")
                return -v
            case I.BinOp(op, left_e, right_e):
                left = yield from self.expr(left_e, env)
                if op == "and":
                    return (yield from self.expr(right_e, env)) if _truthy(left) else left
                if op == "or":
                    return left if _truthy(left) else (yield from self.expr(right_e, env))
                right = yield from self.expr(right_e, env)
                return _binop(op, left, right)
            case I.Call():
                return (yield from self.call(e, env))
        raise FlowError(f"unknown expression {e.tag}")  # pragma: no cover

    def call(self, e: I.Call, env: dict):
        name, loc = e.func, e.loc
        argv = []
        for a in e.args:
            argv.append((yield from self.expr(a, env)))
        kw = {}
        for k, v in e.kwargs:
            kw[k] = yield from self.expr(v, env)
        if name in self.functions:
            try:
                return self.functions[name](*argv, **kw)
            except LmlangRuntimeError:
                raise
            except Exception as exc:  # a user's Python function failed
                raise FlowError(f"function {name}() failed: {type(exc).__name__}: {exc}", hint=f"at {loc}") from exc
        if name in BUILTINS:
            try:
                return BUILTINS[name].fn(*argv, **kw)
            except (TypeError, ValueError, AttributeError) as exc:
                raise FlowError(f"{name}(): {exc}", hint=f"at {loc}") from None
        if name in self.queries:
            return (yield QueryCall(name, argv, kw, loc))
        raise FlowError(f"undefined function '{name}'", hint=f"at {loc}")


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
