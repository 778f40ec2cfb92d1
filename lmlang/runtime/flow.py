"""The flow interpreter: runs the statement IR of StepSpec nodes.

Values are plain Python data (str, int, float, bool, list, dict); field
access is a dict lookup, so a script can never reach Python attributes.
Calls go to queries, a fixed table of builtins, or functions registered
through the API.
"""
from __future__ import annotations

from typing import Callable

from ..errors import LmlangRuntimeError
from .prompt import value_text


def _join(items, sep=""):
    return sep.join(value_text(x) for x in items)


BUILTINS: dict[str, Callable] = {
    "len": len,
    "str": value_text,
    "int": lambda x: int(float(x)) if isinstance(x, str) and "." in x else int(x),
    "float": float,
    "lower": lambda s: str(s).lower(),
    "upper": lambda s: str(s).upper(),
    "strip": lambda s: str(s).strip(),
    "join": _join,
    "split": lambda s, sep=None: str(s).split(sep),
    "range": lambda a, b=None: list(range(a)) if b is None else list(range(a, b)),
    "contains": lambda a, b: b in a,
    "replace": lambda s, a, b: str(s).replace(a, b),
    "round": lambda x, n=0: round(x, n),
}


class FlowError(LmlangRuntimeError):
    pass


class Interpreter:
    def __init__(self, call_query: Callable, functions: dict):
        self.call_query = call_query        # (name, args, kwargs, loc) -> dict
        self.functions = functions

    def run_steps(self, steps, env: dict) -> dict:
        emitted: dict = {}
        for stmt in steps:
            self.stmt(stmt, env, emitted)
        return emitted

    def stmt(self, s, env: dict, emitted: dict) -> None:
        tag = s[0]
        if tag == "assign":
            env[s[1]] = self.expr(s[2], env)
        elif tag == "if":
            branch = s[2] if _truthy(self.expr(s[1], env)) else s[3]
            for x in branch:
                self.stmt(x, env, emitted)
        elif tag == "for":
            items = self.expr(s[2], env)
            if not isinstance(items, (list, tuple)):
                raise FlowError(f"for loops over lists, got {type(items).__name__}")
            for item in items:
                env[s[1]] = item
                for x in s[3]:
                    self.stmt(x, env, emitted)
        elif tag == "emit":
            for name, e in s[1]:
                emitted[name] = self.expr(e, env)

    def expr(self, e, env: dict):
        tag = e[0]
        if tag == "lit":
            return e[1]
        if tag == "var":
            if e[1] not in env:
                raise FlowError(f"'{e[1]}' has no value here", hint="it is assigned only on some paths")
            return env[e[1]]
        if tag == "attr":
            obj = self.expr(e[1], env)
            if isinstance(obj, dict) and e[2] in obj:
                return obj[e[2]]
            raise FlowError(f"no field '{e[2]}' in {_short(obj)}")
        if tag == "index":
            obj, idx = self.expr(e[1], env), self.expr(e[2], env)
            try:
                if isinstance(obj, dict):
                    return obj[idx]
                if isinstance(obj, (list, tuple, str)) and isinstance(idx, int) and not isinstance(idx, bool):
                    return obj[idx]
            except (KeyError, IndexError):
                raise FlowError(f"index {idx!r} out of range for {_short(obj)}") from None
            raise FlowError(f"cannot index {_short(obj)} with {idx!r}")
        if tag == "list":
            return [self.expr(x, env) for x in e[1]]
        if tag == "un":
            v = self.expr(e[2], env)
            return (not _truthy(v)) if e[1] == "not" else -v
        if tag == "bin":
            op = e[1]
            if op == "and":
                left = self.expr(e[2], env)
                return self.expr(e[3], env) if _truthy(left) else left
            if op == "or":
                left = self.expr(e[2], env)
                return left if _truthy(left) else self.expr(e[3], env)
            a, b = self.expr(e[2], env), self.expr(e[3], env)
            return _binop(op, a, b)
        if tag == "call":
            _, name, args, kwargs, loc = e
            argv = [self.expr(a, env) for a in args]
            kw = {k: self.expr(v, env) for k, v in kwargs}
            if name in self.functions:
                try:
                    return self.functions[name](*argv, **kw)
                except LmlangRuntimeError:
                    raise
                except Exception as exc:  # a user's Python function failed
                    raise FlowError(f"function {name}() failed: {type(exc).__name__}: {exc}", hint=f"at {loc}") from exc
            if name in BUILTINS:
                try:
                    return BUILTINS[name](*argv, **kw)
                except (TypeError, ValueError) as exc:
                    raise FlowError(f"{name}(): {exc}", hint=f"at {loc}") from None
            return self.call_query(name, argv, kw, loc)
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
