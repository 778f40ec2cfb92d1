"""The one grammar, loaded through one function.

Installed wheels carry it as package data (lmlang/grammar/lmlang.lark); a
source checkout (editable install, tests) reads the repository's grammar/.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path


def grammar_path() -> Path:
    packaged = resources.files("lmlang") / "grammar" / "lmlang.lark"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "grammar" / "lmlang.lark"


@lru_cache(maxsize=1)
def grammar_text() -> str:
    return grammar_path().read_text(encoding="utf-8")
