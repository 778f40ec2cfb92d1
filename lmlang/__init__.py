"""lmlang: a declarative language for programming language models.

import lmlang
prog = lmlang.compile_file("examples/hello.lm")
prog.run(question="What is the capital of France?")
"""

from typing import TYPE_CHECKING

from .errors import (
    CheckError,
    DataError,
    LmlangError,
    LmlangRuntimeError,
    LmlangSyntaxError,
    MergeError,
    ModelNotFoundError,
    NotSupportedYet,
    ScriptError,
)

if TYPE_CHECKING:
    from .program import Program, QueryFunction, compile, compile_file

__version__ = "0.1.0"

__all__ = [
    "compile",
    "compile_file",
    "Program",
    "QueryFunction",
    "LmlangError",
    "ScriptError",
    "LmlangSyntaxError",
    "CheckError",
    "LmlangRuntimeError",
    "ModelNotFoundError",
    "NotSupportedYet",
    "MergeError",
    "DataError",
]

# The API (lmlang.program) loads on first use: `lmlang check` imports this
# package for its errors and never needs the program API (issue #11).
_PROGRAM_API = ("Program", "QueryFunction", "compile", "compile_file")


def __getattr__(name: str):
    if name in _PROGRAM_API:
        from . import program

        value = getattr(program, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_PROGRAM_API})
