"""The flow's builtin functions: one table that the checker validates calls
against (arity, argument types, result type) and the runtime calls.

Torch-free and cheap to import: the checker reads it on every `lmlang check`.
Values are plain Python data, so a builtin never reaches Python attributes.
"""

from __future__ import annotations

from typing import Callable

from . import types as T
from .frozen import frozen


def value_text(v) -> str:
    """How a value reads as text: in prompts, `str()`, `join()`. JSON values
    (dicts, lists) as compact JSON, booleans as true/false."""
    import json

    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, ensure_ascii=False)
    if v is None:
        return "null"
    return str(v)


def _int(x):
    return int(float(x)) if isinstance(x, str) and "." in x else int(x)


def _join(items, sep=""):
    return sep.join(value_text(x) for x in items)


@frozen
class Builtin:
    name: str
    fn: Callable
    min_args: int
    max_args: int
    result: T.T
    args: tuple = ()  # accepted type names per positional argument; unlisted: anything

    def arity_text(self) -> str:
        return f"{self.min_args}" if self.min_args == self.max_args else f"{self.min_args} to {self.max_args}"


_ANY_TEXT = ("str", "int", "float", "bool")

BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in (
        Builtin("len", len, 1, 1, T.INT, (("str", "list", "record"),)),
        Builtin("str", value_text, 1, 1, T.STR),
        Builtin("int", _int, 1, 1, T.INT, (_ANY_TEXT,)),
        Builtin("float", float, 1, 1, T.FLOAT, (_ANY_TEXT,)),
        Builtin("lower", lambda s: str(s).lower(), 1, 1, T.STR, (("str",),)),
        Builtin("upper", lambda s: str(s).upper(), 1, 1, T.STR, (("str",),)),
        Builtin("strip", lambda s: str(s).strip(), 1, 1, T.STR, (("str",),)),
        Builtin("join", _join, 1, 2, T.STR, (("list",), ("str",))),
        Builtin("split", lambda s, sep=None: str(s).split(sep), 1, 2, T.list_of(T.STR), (("str",), ("str",))),
        Builtin(
            "range",
            lambda a, b=None: list(range(a)) if b is None else list(range(a, b)),
            1,
            2,
            T.list_of(T.INT),
            (("int",), ("int",)),
        ),
        Builtin("contains", lambda a, b: b in a, 2, 2, T.BOOL, (("str", "list"),)),
        Builtin("replace", lambda s, a, b: str(s).replace(a, b), 3, 3, T.STR, (("str",), ("str",), ("str",))),
        Builtin("round", lambda x, n=0: round(x, n), 1, 2, T.FLOAT, (("int", "float"), ("int",))),
    )
}
