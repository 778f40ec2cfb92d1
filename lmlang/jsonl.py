"""One JSON Lines reader, with one contract, for every JSONL file lmlang reads
(data runs, `lmlang compare` rows, training data).

The contract:

* The text is UTF-8. One byte-order mark at the very start is skipped (editors
  on Windows write one).
* Lines end at "\\n"; a "\\r" before it belongs to the line ending, so CRLF
  files read the same. Other Unicode separators (U+2028, U+0085, form feed)
  are ordinary characters: a JSON string may hold them.
* Line numbers count every line from 1, blank ones included, so a message
  names the line an editor shows.
* A line holding only whitespace is blank: skipped, and not a row.
* Every other line is one JSON object. A line that is not UTF-8, not JSON, or
  JSON but not an object is a problem *of that line*; the reader goes on, and
  the caller decides what a bad line means (a data run records it and runs
  the other rows; training stops at the first).

Torch-free; reads the file as a stream, so a large data file is never held
whole (training, which hashes the bytes anyway, passes them in).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from .frozen import frozen

_BOM = "\ufeff"


@frozen
class JsonlLine:
    line: int                 # 1-based line number in the file
    value: dict | None        # the row, or None when the line is bad
    problem: str = ""         # why it is bad ("invalid JSON (...)"), without location
    code: str = ""            # "not-utf8" | "invalid-json" | "not-object"


def read_jsonl(path: str | Path) -> Iterator[JsonlLine]:
    """The non-blank lines of a JSONL file, in order. OSError if it cannot
    be opened."""
    with open(path, "rb") as fh:
        yield from parse_jsonl(fh)


def parse_jsonl(lines: bytes | Iterable[bytes]) -> Iterator[JsonlLine]:
    """The non-blank lines of JSONL bytes (the whole text, or an iterable of
    lines such as a file opened in binary mode)."""
    if isinstance(lines, (bytes, bytearray)):
        lines = bytes(lines).split(b"\n")
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield JsonlLine(number, None, f"not UTF-8 text ({e.reason} at byte {e.start})", "not-utf8")
            continue
        if number == 1 and text.startswith(_BOM):
            text = text[1:]
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except ValueError as e:
            yield JsonlLine(number, None, f"invalid JSON ({e})", "invalid-json")
            continue
        if not isinstance(value, dict):
            yield JsonlLine(number, None, f"expected a JSON object, got {_json_kind(value)}", "not-object")
            continue
        yield JsonlLine(number, value)


def _json_kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if value is None:
        return "null"
    return type(value).__name__
