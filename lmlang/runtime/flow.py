"""The flow interpreter: runs the statement IR of StepSpec nodes.

Values are plain Python data (str, int, float, bool, list, dict); field
access is a dict lookup, so a script can never reach Python attributes.
Calls go to queries, a fixed table of builtins, or functions registered
through the API.
"""
from __future__ import annotations

from ..errors import LmlangRuntimeError
from ..builtins import BUILTINS




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

    def stmt(self, s, env: dict, emitted: dict):
        tag = s[0]
        if tag == "assign":
            env[s[1]] = yield from self.expr(s[2], env)
        elif tag == "if":
            cond = yield from self.expr(s[1], env)
            for x in (s[2] if _truthy(cond) else s[3]):
                yield from self.stmt(x, env, emitted)
        elif tag == "for":
            items = yield from self.expr(s[2], env)
            if not isinstance(items, (list, tuple)):
                raise FlowError(f"for loops over lists, got {type(items).__name__}")
            for item in items:
                env[s[1]] = item
                for x in s[3]:
                    yield from self.stmt(x, env, emitted)
        elif tag == "emit":
            for name, e in s[1]:
                emitted[name] = yield from self.expr(e, env)

    def expr(self, e, env: dict):
        tag = e[0]
        if tag == "lit":
            return e[1]
        if tag == "var":
            if e[1] not in env:
                raise FlowError(f"'{e[1]}' has no value here", hint="it is assigned only on some paths")
            return env[e[1]]
        if tag == "attr":
            obj = yield from self.expr(e[1], env)
            if isinstance(obj, dict) and e[2] in obj:
                return obj[e[2]]
            raise FlowError(f"no field '{e[2]}' in {_short(obj)}")
        if tag == "index":
            obj = yield from self.expr(e[1], env)
            idx = yield from self.expr(e[2], env)
            try:
                if isinstance(obj, dict):
                    return obj[idx]
                if isinstance(obj, (list, tuple, str)) and isinstance(idx, int) and not isinstance(idx, bool):
                    return obj[idx]
            except (KeyError, IndexError, TypeError):
                raise FlowError(f"index {idx!r} out of range for {_short(obj)}") from None
            raise FlowError(f"cannot index {_short(obj)} with {idx!r}")
        if tag == "list":
            out = []
            for x in e[1]:
                out.append((yield from self.expr(x, env)))
            return out
        if tag == "un":
            v = yield from self.expr(e[2], env)
            if e[1] == "not":
                return not _truthy(v)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise FlowError(f"cannot negate {_short(v)}")
            return -v
        if tag == "bin":
            op = e[1]
            left = yield from self.expr(e[2], env)
            if op == "and":
                return (yield from self.expr(e[3], env)) if _truthy(left) else left
            if op == "or":
                return left if _truthy(left) else (yield from self.expr(e[3], env))
            right = yield from self.expr(e[3], env)
            return _binop(op, left, right)
        if tag == "call":
            _, name, args, kwargs, loc = e
            argv = []
            for a in args:
                argv.append((yield from self.expr(a, env)))
            kw = {}
            for k, v in kwargs:
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
        raise FlowError(f"unknown expression {tag}")  # pragma: no cover


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
