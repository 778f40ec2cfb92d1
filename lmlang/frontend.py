"""The torch-free half of the pipeline: source -> AST -> checked -> graph.

`lmlang check` and `lmlang graph` run only this module's path, so they never
import torch or transformers (a test and bench/check.py hold that)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .checker import CheckedProgram, check_program
from .compiler import Compiled, compile_checked
from .errors import LmlangError
from .parser import parse
from .source import Source


@dataclass
class FrontEnd:
    source: Source
    checked: CheckedProgram
    compiled: Compiled

    @property
    def warnings(self):
        return self.checked.warnings


def build(text: str, filename: str = "<string>", base_dir: Path | None = None, functions=frozenset(),
          schemas: dict | None = None) -> FrontEnd:
    source = Source(text, filename)
    if base_dir is None:
        base_dir = Path(filename).resolve().parent if not filename.startswith("<") else Path.cwd()
    try:
        program = parse(text, filename)
        checked = check_program(program, source, base_dir, functions, schemas)
        compiled = compile_checked(checked)
    except LmlangError as e:
        raise e.with_source(source) from None
    return FrontEnd(source, checked, compiled)


def build_file(path: str | Path, functions=frozenset(), schemas: dict | None = None) -> FrontEnd:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        from .errors import ScriptError

        raise ScriptError(f"no such file: {path}", hint="check the path") from None
    except UnicodeDecodeError as e:
        from .errors import ScriptError

        raise ScriptError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        from .errors import ScriptError

        raise ScriptError(f"cannot read {path}: {e.strerror or e}") from None
    return build(text, str(path), path.resolve().parent, functions, schemas)
