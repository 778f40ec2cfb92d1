"""String literals and prompt strings, from their Lark tokens.

A string's escapes are decoded in one table (strings and prompts share it;
prompts add \\{ \\} \\[ \\]). A prompt string is scanned into Text / Interp /
Hole parts, each with its own span, so later diagnostics can point inside a
prompt. Tokens are read duck-typed (str, line, column, end_line,
end_column): the same code serves the generated parser and lark's.
"""

from __future__ import annotations

import math
import re

from . import ast as A
from .errors import LmlangSyntaxError
from .source import Source, Span

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "0": "\0"}
MAX_NUMBER_DIGITS = 100  # digits of a number literal (Python refuses int() past 4,300)
PROMPT_ESCAPES = {"{": "{", "}": "}", "[": "[", "]": "]"}


def token_span(tok, source: Source) -> Span:
    return Span(tok.line, tok.column, tok.end_line, tok.end_column, source.filename)


def _string_body(tok) -> tuple[str, bool, int]:
    """(raw body, is_raw, offset of body from token start)."""
    text = str(tok)
    raw = text.startswith("r")
    q = 3 if text[int(raw) :].startswith('"""') else 1
    start = int(raw) + q
    return text[start : len(text) - q], raw, start


def _positions(tok, body_offset: int, body: str):
    """(line, col) of each body index and one past the end."""
    line, col = tok.line, tok.column + body_offset
    out = []
    for ch in body:
        out.append((line, col))
        if ch == "\n":
            line, col = line + 1, 1
        else:
            col += 1
    out.append((line, col))
    return out


def _escape(body: str, i: int, extra: dict | None = None) -> tuple[str, int]:
    """The text of the escape at body[i] (a backslash) and its length. One
    table for strings and prompts; prompts add \\{ \\} \\[ \\]. Unknown
    escapes keep their backslash (regexes need `\\d`)."""
    nxt = body[i + 1]
    if extra and nxt in extra:
        return extra[nxt], 2
    if nxt in SIMPLE_ESCAPES:
        return SIMPLE_ESCAPES[nxt], 2
    if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", body[i + 2 : i + 6]):
        return chr(int(body[i + 2 : i + 6], 16)), 6
    return body[i : i + 2], 2


def decode_string(tok, source: Source) -> str:
    body, raw, _ = _string_body(tok)
    if raw:
        return body
    out, i = [], 0
    while i < len(body):  # jump from backslash to backslash: long strings stay fast
        j = body.find("\\", i)
        if j < 0 or j + 1 >= len(body):
            out.append(body[i:])
            break
        out.append(body[i:j])
        text, n = _escape(body, j)
        out.append(text)
        i = j + n
    return "".join(out)


def scan_prompt(tok, source: Source) -> tuple:
    """Split a prompt string into Text / Interp / Hole parts with spans."""
    body, raw, offset = _string_body(tok)
    pos = _positions(tok, offset, body)

    def span(a: int, b: int) -> Span:
        (l1, c1), (l2, c2) = pos[a], pos[b]
        return Span(l1, c1, l2, c2, source.filename)

    parts: list = []
    buf: list[str] = []
    buf_start = 0
    i = 0

    def flush(end: int) -> None:
        if buf:
            parts.append(A.Text("".join(buf), span=span(buf_start, end)))
            buf.clear()

    while i < len(body):
        ch = body[i]
        if ch == "\\" and not raw and i + 1 < len(body):
            if not buf:
                buf_start = i
            text, n = _escape(body, i, PROMPT_ESCAPES)
            buf.append(text)
            i += n
            continue
        if ch in "{[":
            close = "}" if ch == "{" else "]"
            j = body.find(close, i + 1)
            nl = body.find("\n", i + 1)
            if j < 0 or (0 <= nl < j):
                raise LmlangSyntaxError(
                    f"unclosed '{ch}' in prompt",
                    span(i, i + 1),
                    f"close it with '{close}', or write \\{ch} for a literal '{ch}'",
                )
            inner = body[i + 1 : j]
            if ch == "{" and TOOL_CALL.match(inner):
                flush(i)
                parts.append(_tool_call(inner, raw, i + 1, span, span(i, j + 1)))
                i = j + 1
                continue
            if ch == "{":
                path = inner.strip().split(".")
                if not all(IDENT.fullmatch(p) for p in path):
                    raise LmlangSyntaxError(
                        f"invalid interpolation {{{inner}}}",
                        span(i, j + 1),
                        "write {name} or {name.field}; write \\{ for a literal '{'",
                    )
                flush(i)
                parts.append(A.Interp(tuple(path), span=span(i, j + 1)))
            else:
                name = inner.strip()
                if not IDENT.fullmatch(name):
                    raise LmlangSyntaxError(
                        f"invalid hole [{inner}]", span(i, j + 1), "a hole is [name]; write \\[ for a literal '['"
                    )
                flush(i)
                parts.append(A.Hole(name, span=span(i, j + 1)))
            i = j + 1
            continue
        if ch in "}]":
            raise LmlangSyntaxError(f"unmatched '{ch}' in prompt", span(i, i + 1), f"write \\{ch} for a literal '{ch}'")
        if not buf:
            buf_start = i
        buf.append(ch)
        i += 1
    flush(len(body))
    return tuple(parts)


class StringTok:
    """A decoded string that remembers its token (for prompt scanning)."""

    __slots__ = ("tok", "value", "span")

    def __init__(self, tok, value: str, span: Span):
        self.tok, self.value, self.span = tok, value, span


# ---------------------------------------------------------------- tool calls in prompts (issue 15)

TOOL_CALL = re.compile(r"\s*(?:[A-Za-z_][A-Za-z0-9_]*\s*=\s*)?call\s*\(")  # `{call(...)}`, `{obs = call(...)}`


def _tool_call(inner: str, raw: bool, base: int, span, whole: Span) -> A.ToolCall:
    """`call("name", arg, ...)` inside a prompt's braces: the arguments are
    flow expressions (parser_prompt_expr.py), positioned in the source. In a
    plain prompt string the call's quotes are written \\" : resolved here,
    with each character's offset in the source kept for the spans."""
    from .parser_prompt_expr import parse_call

    text, where = [], []
    k = 0
    while k < len(inner):
        if not raw and inner.startswith('\\"', k):
            k += 1
        text.append(inner[k])
        where.append(k)
        k += 1
    where.append(len(inner))
    return parse_call(
        "".join(text), lambda a, b: span(base + where[a], base + (where[b - 1] + 1 if b > a else where[a])), whole
    )


def number_value(tok, span: Span):
    """A number literal's value. Longer than MAX_NUMBER_DIGITS digits, or a
    float that overflows to infinity, is refused here with its span: no later
    stage (range regexes, JSON export, int() of a bound) meets such a value."""
    text = str(tok)
    digits = len(text.split("e")[0].split("E")[0].replace(".", ""))
    if digits > MAX_NUMBER_DIGITS:
        raise LmlangSyntaxError(
            f"number has {digits} digits, more than {MAX_NUMBER_DIGITS}",
            span,
            "write a smaller number (int holes hold 64-bit values)",
        )
    if re.fullmatch(r"\d+", text):
        return int(text)
    value = float(text)
    if not math.isfinite(value):
        raise LmlangSyntaxError(
            f"number {text} is too large (not a finite 64-bit float)", span, "write a number below 1.8e308"
        )
    return value
