"""lmlang: a declarative language for programming language models.

import lmlang
prog = lmlang.compile_file("examples/hello.lm")
prog.run(question="What is the capital of France?")
"""

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
