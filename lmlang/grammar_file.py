"""The one grammar, loaded through one function.

Installed wheels carry it as package data (lmlang/grammar/lmlang.lark); a
source checkout (editable install, tests) reads the repository's grammar/.
Both are plain files beside the package, so no importlib.resources (its
import alone costs `lmlang check` ~10 ms).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def grammar_path() -> Path:
    packaged = _HERE / "grammar" / "lmlang.lark"
    if packaged.is_file():
        return packaged
    return _HERE.parent / "grammar" / "lmlang.lark"


@lru_cache(maxsize=1)
def grammar_text() -> str:
    return grammar_path().read_text(encoding="utf-8")


def grammar_sha256(text: str) -> str:
    """The key the generated parser (grammar_parser.py) records its grammar by."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
