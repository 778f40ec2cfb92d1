"""The contextual lexer's compiled regexes, kept on disk as data.

The contextual lexer (lalr_driver.py, as Lark's) builds one scanner per
set of terminals a parser state accepts: a regex alternation of 60-150 terminals, compiled by Python's
`re` the first time the state is met. A script meets some 30-50 of them,
and `re` parses each pattern in pure Python: ~20 ms of a 0.2 s
`lmlang check`, every fresh process.

`re.compile` is two steps: parse the pattern into `re`'s instruction code (a
list of integers; the slow, pure-Python part), then `_sre.compile`, which
validates that code and builds the pattern object in C. This module keeps
the first step's output (integers, strings, the group table) as JSON under
LMLANG_HOME/parser, behind cachefile's sha256, so a later process only does
the second. `_sre.compile` checks the code it is given (a malformed entry
raises, and is recompiled), so a forged entry cannot run code; like the
parser tables' cache, it could only describe other regexes. No pickle.

The entry is keyed by the grammar's sha256 and by `re`'s internals
(Python's version, `_sre.MAGIC`, `CODESIZE`): these are private interfaces
of the `re` package, so any difference in them, or any failure of this
path, falls back to plain `re.compile`, which is always right, only slower.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from . import cachefile

KIND = "sre-code"
FORMAT = 1


class CachedRe:
    """The part of the `re` module a lexer calls (`compile`, `match`,
    `error`), answering `compile` from the disk entry where it can. Handed
    to the generated parser (lalr_driver.LALRParser) in place of `re`."""

    error = re.error

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.stored: dict[str, list] = _read(path) if path is not None else {}
        self.added: dict[str, list] = {}
        self.compiled: dict[tuple[str, int], re.Pattern] = {}

    def compile(self, pattern: str, flags: int = 0) -> re.Pattern:
        key = (pattern, flags)
        hit = self.compiled.get(key)
        if hit is not None:
            return hit
        out = None
        entry = self.stored.get(f"{flags}:{pattern}")
        if entry is not None:
            out = _from_entry(pattern, flags, entry)
        if out is None:
            out, entry = _compile_recording(pattern, flags)
            if entry is not None:
                self.added[f"{flags}:{pattern}"] = entry
        self.compiled[key] = out
        return out

    def match(self, pattern: str, string: str, flags: int = 0):
        return self.compile(pattern, flags).match(string)

    def save(self) -> None:
        """Write what this process compiled anew (states no earlier process met)."""
        if self.path is None or not self.added:
            return
        merged = {**self.stored, **self.added}
        body = json.dumps(merged, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        if cachefile.write(self.path, KIND, body):
            self.stored, self.added = merged, {}


def cache_path(grammar_sha256: str) -> Path | None:
    """The entry for this grammar and this Python's `re`; None when there is
    no cache folder or `re`'s internals are not the ones this module knows."""
    try:
        import _sre

        from .home import cache_dir

        folder = cache_dir("parser")
        internals = f"{sys.version_info[:3]}|{_sre.MAGIC}|{_sre.CODESIZE}|{_sre.MAXGROUPS}"
    except (ImportError, AttributeError, OSError):
        return None
    import hashlib

    key = hashlib.sha256(f"{FORMAT}|{internals}|{grammar_sha256}".encode()).hexdigest()[:24]
    return folder / f"sre-{key}.json"


def _read(path: Path) -> dict[str, list]:
    body = cachefile.read(path, KIND)
    if body is None:
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _from_entry(pattern: str, flags: int, entry: Any) -> re.Pattern | None:
    """The pattern object from a stored entry, or None (then it is compiled)."""
    try:
        import _sre

        state_flags, code, groups, groupindex, indexgroup = entry
        return _sre.compile(pattern, flags | state_flags, code, groups, groupindex, tuple(indexgroup))
    except Exception:  # a malformed or foreign entry: _sre refused it
        return None


def _compile_recording(pattern: str, flags: int) -> tuple[re.Pattern, list | None]:
    """re.compile's own two steps (re/_compiler.py `compile`), keeping the
    code; (re.compile's result, None) wherever those internals differ."""
    try:
        import _sre
        from re import _compiler, _parser  # type: ignore[attr-defined]

        p = _parser.parse(pattern, flags)
        code = _compiler._code(p, flags)
        groupindex = dict(p.state.groupdict)
        indexgroup: list = [None] * p.state.groups
        for name, i in groupindex.items():
            indexgroup[i] = name
        entry = [p.state.flags, list(code), p.state.groups - 1, groupindex, indexgroup]
        return _sre.compile(pattern, flags | entry[0], entry[1], entry[2], groupindex, tuple(indexgroup)), entry
    except Exception:
        return re.compile(pattern, flags), None
