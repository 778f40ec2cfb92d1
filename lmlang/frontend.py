"""The torch-free half of the pipeline: source -> AST -> checked -> graph.

`lmlang check` and `lmlang graph` run only this module's path, so they never
import torch or transformers (a test and bench/check.py hold that).

`allow_paths` (and LMLANG_ALLOW_PATH, os.pathsep-separated) name folders a
script may read besides its own (checker/program.py confines references)."""

from __future__ import annotations

import os
from pathlib import Path

from .checker import CheckedProgram, check_program
from .compiler import Compiled, compile_checked
from .errors import LmlangError
from .frozen import record
from .parser import parse
from .source import Source, decode_script


@record
class FrontEnd:
    """One script through the front end: its source, checked program and graph."""

    source: Source
    checked: CheckedProgram
    compiled: Compiled
    allow_paths: tuple = ()  # as given, so a rebuild (Program.register) keeps them

    @property
    def warnings(self):
        return self.checked.warnings


def build(
    text: str,
    filename: str = "<string>",
    base_dir: Path | None = None,
    functions=frozenset(),
    schemas: dict | None = None,
    allow_paths=(),
) -> FrontEnd:
    source = Source(text, filename)
    if base_dir is None:
        base_dir = Path(filename).resolve().parent if not filename.startswith("<") else Path.cwd()
    allow_paths = tuple(str(p) for p in allow_paths)
    try:
        program = parse(text, filename)
        checked = check_program(program, source, base_dir, functions, schemas, allow_paths + env_allow_paths())
        compiled = compile_checked(checked)
    except LmlangError as e:
        raise e.with_source(source) from None
    return FrontEnd(source, checked, compiled, allow_paths)


def env_allow_paths() -> tuple[str, ...]:
    """LMLANG_ALLOW_PATH: folders every script of this user may read (a
    shared models folder), like --allow-path given each time."""
    return tuple(p for p in os.environ.get("LMLANG_ALLOW_PATH", "").split(os.pathsep) if p.strip())


def build_file(path: str | Path, functions=frozenset(), schemas: dict | None = None, allow_paths=()) -> FrontEnd:
    path = Path(path)
    try:
        text = decode_script(path.read_bytes(), str(path))
    except FileNotFoundError:
        from .errors import ScriptError

        raise ScriptError(f"no such file: {path}", hint="check the path") from None
    except OSError as e:
        from .errors import ScriptError

        raise ScriptError(f"cannot read {path}: {e.strerror or e}") from None
    return build(text, str(path), path.resolve().parent, functions, schemas, allow_paths)
