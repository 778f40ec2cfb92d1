"""Where lmlang keeps its caches: LMLANG_HOME (default ~/.cache/lmlang)."""

from __future__ import annotations

import os
from pathlib import Path


def lmlang_home() -> Path:
    root = os.environ.get("LMLANG_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "lmlang")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(kind: str) -> Path:
    """A sub-cache such as 'models', 'constraints', 'adapters', 'merges'."""
    path = lmlang_home() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path
