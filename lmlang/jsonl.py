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
* JSON is strict: `NaN`, `Infinity` and `-Infinity` (which Python's reader
  takes) are not JSON, and neither is a number too large for a float
  (`1e999`). A string holding a lone surrogate (`"\\ud800"`) is not text, so
  its line is bad too: nothing downstream could encode it.
* Limits, so one hostile line cannot take the process down: a line longer
  than MAX_LINE_BYTES (16 MiB) and a value nested deeper than MAX_DEPTH (100
  levels) are problems of their line; the reader skips the rest of an
  overlong line without holding it.

Torch-free; reads the file as a stream, so a large data file is never held
whole (training, which hashes the bytes anyway, passes them in).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import IO, Iterable, Iterator, cast

from .frozen import frozen

_BOM = "\ufeff"
MAX_LINE_BYTES = 16 << 20  # a longer line is a bad line, never held whole
MAX_DEPTH = 100  # deeper nesting is a bad line (Python's reader recurses)
_SURROGATE = re.compile("[\ud800-\udfff]")


@frozen
class JsonlLine:
    line: int  # 1-based line number in the file
    value: dict | None  # the row, or None when the line is bad
    problem: str = ""  # why it is bad ("invalid JSON (...)"), without location
    code: str = ""  # "not-utf8" | "invalid-json" | "not-object" | "too-long" | "too-deep" | "not-text"


def read_jsonl(path: str | Path) -> Iterator[JsonlLine]:
    """The non-blank lines of a JSONL file, in order. OSError if it cannot
    be opened."""
    with open(path, "rb") as fh:
        yield from parse_jsonl(fh)


def parse_jsonl(lines: bytes | Iterable[bytes] | IO[bytes]) -> Iterator[JsonlLine]:
    """The non-blank lines of JSONL bytes (the whole text, an iterable of
    lines, or a file opened in binary mode, read a bounded line at a time)."""
    rows: Iterable[bytes | None]
    if isinstance(lines, (bytes, bytearray)):
        rows = bytes(lines).split(b"\n")
    elif hasattr(lines, "readline"):
        rows = bounded_lines(cast(IO[bytes], lines))
    else:
        rows = lines
    for number, raw in enumerate(rows, start=1):
        if raw is None or len(raw) > MAX_LINE_BYTES + 2:  # + 2: the line's own "\\r\\n"
            yield JsonlLine(number, None, f"line longer than {MAX_LINE_BYTES >> 20} MiB", "too-long")
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield JsonlLine(number, None, f"not UTF-8 text ({e.reason} at byte {e.start})", "not-utf8")
            continue
        if number == 1 and text.startswith(_BOM):
            text = text[1:]
        if not text.strip():
            continue
        yield _parse_line(number, text)


def _parse_line(number: int, text: str) -> JsonlLine:
    try:
        value = loads_strict(text)
    except RecursionError:
        return JsonlLine(number, None, f"a value nested deeper than {MAX_DEPTH} levels", "too-deep")
    except ValueError as e:
        return JsonlLine(number, None, f"invalid JSON ({e})", "invalid-json")
    if not isinstance(value, dict):
        return JsonlLine(number, None, f"expected a JSON object, got {_json_kind(value)}", "not-object")
    if _may_have_problem(text):
        code, problem = value_problem(value)
        if code:
            return JsonlLine(number, None, problem, code)
    return JsonlLine(number, value)


# A lone surrogate in a parsed string comes only from a \uD800-\uDFFF escape
# (the text itself is decoded UTF-8, which holds none).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _may_have_problem(text: str) -> bool:
    """Whether value_problem must walk the value parsed from `text`: it may
    nest deeper than MAX_DEPTH (there are more brackets than that), or hold
    a lone surrogate (there is a surrogate escape). Most rows have neither,
    and the walk visits every value."""
    return text.count("{") + text.count("[") > MAX_DEPTH or _SURROGATE_ESCAPE.search(text) is not None


def bounded_lines(fh: IO[bytes], limit: int = MAX_LINE_BYTES) -> Iterator[bytes | None]:
    """The lines of a binary file, each with its "\\n"; None in place of a line
    longer than `limit` bytes (its line ending aside), whose rest is read and
    dropped in slices, so memory stays near `limit` whatever the file holds."""
    while True:
        line = fh.readline(limit + 3)
        if not line:
            return
        if len(line) <= limit + 2:
            yield line
            continue
        while line and not line.endswith(b"\n"):
            line = fh.readline(1 << 20)
        yield None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is too large for a float")
    return value


def loads_strict(text: str):
    """json.loads as the JSON standard reads: no NaN or Infinity, no number
    that overflows a float. RecursionError past Python's nesting limit."""
    if text.startswith(_BOM):  # json.loads' own error for it
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    return _STRICT.decode(text)  # what json.loads does with these options, without a new decoder a call


_STRICT = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def value_problem(value, max_depth: int = MAX_DEPTH) -> tuple[str, str]:
    """(code, message) saying why a parsed JSON value cannot be used, ("", "")
    if it can: nested deeper than max_depth ("too-deep"), or holding a
    string, key or value, with a lone surrogate ("not-text"). Iterative, so
    it never recurses itself."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            m = _SURROGATE.search(v)
            if m:
                return "not-text", f"a string holds a lone surrogate (\\u{ord(m.group()):04x}), which is not text"
        elif isinstance(v, (dict, list)):
            if depth > max_depth:
                return "too-deep", f"a value nested deeper than {max_depth} levels"
            if isinstance(v, dict):
                stack.extend((k, depth) for k in v)
                stack.extend((x, depth + 1) for x in v.values())
            else:
                stack.extend((x, depth + 1) for x in v)
    return "", ""


def _json_kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if value is None:
        return "null"
    return type(value).__name__
