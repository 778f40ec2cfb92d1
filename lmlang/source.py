"""Source text, spans, and the caret rendering every diagnostic shares.

A Span is set once by the parser and travels with each AST node, so any later
stage (checker, compiler, runtime) can point back at the text that caused it.
"""

from __future__ import annotations

from .frozen import frozen


@frozen
class Span:
    """A half-open region of one source file, 1-based lines and columns."""

    line: int
    col: int
    end_line: int
    end_col: int
    filename: str = "<string>"

    def to_dict(self) -> dict:
        return {
            "file": self.filename,
            "line": self.line,
            "col": self.col,
            "end_line": self.end_line,
            "end_col": self.end_col,
        }

    def location(self) -> str:
        return f"{self.filename}:{self.line}:{self.col}"


NO_SPAN = Span(0, 0, 0, 0, "<builtin>")

# Lines end at "\n" only, as Lark counts them (a "\r" before it is dropped when
# shown). str.splitlines also breaks at these, which put underlines on the
# wrong line; shown inside a line, each becomes one space so carets align.
ODD_BREAKS = "\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_SHOWN = str.maketrans({c: " " for c in ODD_BREAKS + "\r"})
MAX_SHOWN = 160  # longer lines are shown as a window around the span


@frozen
class Source:
    text: str
    filename: str = "<string>"

    def line_text(self, line: int) -> str:
        """Line `line` (1-based) as the parser counts lines: split at "\n" only."""
        if line < 1:
            return ""
        start = 0
        for _ in range(line - 1):
            start = self.text.find("\n", start) + 1
            if start == 0:
                return ""
        end = self.text.find("\n", start)
        text = self.text[start:] if end < 0 else self.text[start:end]
        return text[:-1] if text.endswith("\r") else text

    def line_count(self) -> int:
        return self.text.count("\n") + 1

    def span(self, line: int, col: int, end_line: int | None = None, end_col: int | None = None) -> Span:
        return Span(line, col, end_line or line, end_col or col + 1, self.filename)

    def underline(self, span: Span, max_lines: int = 4) -> str:
        """The lines the span covers, each with a `^` underline under the
        spanned part (long spans show their first and last lines)."""
        if span.line <= 0:
            return ""
        last = max(span.end_line, span.line)
        numbers: list[int | None] = list(range(span.line, last + 1))
        if len(numbers) > max_lines:
            numbers = numbers[: max_lines - 1] + [None, last]
        width = len(str(last))
        out = []
        for n in numbers:
            if n is None:
                out.append(f"{'.' * width:>4} |")
                continue
            text = self.line_text(n).expandtabs(1).translate(_SHOWN)
            if n == span.line:
                start = max(span.col - 1, 0)
            else:
                start = len(text) - len(text.lstrip())
            end = span.end_col - 1 if n == span.end_line else len(text)
            end = min(end, len(text))
            text, start, end = _window(text, start, end)
            count = max(end - start, 1)
            gutter = f"{n:>4} | "
            out.append(f"{gutter}{text}")
            if n == last and n != span.line and end <= start and not text.strip():
                continue
            out.append(f"{' ' * len(gutter)}{' ' * start}{'^' * count}")
        return "\n".join(out)


def _window(text: str, start: int, end: int) -> tuple[str, int, int]:
    """A line of at most about MAX_SHOWN characters around [start, end), with
    "..." where it was cut, and the span's columns in the shown text."""
    if len(text) <= MAX_SHOWN:
        return text, start, end
    a = max(0, min(start, len(text)) - MAX_SHOWN // 3)
    b = min(len(text), a + MAX_SHOWN)
    shown = ("..." if a else "") + text[a:b] + ("..." if b < len(text) else "")
    shift = 3 - a if a else 0
    return shown, start + shift, min(end, b) + shift


def brackets(text: str):
    """Yield (index, char) for every bracket outside strings and comments, in
    one linear pass. Also yields (index, '"') where a one-line string runs
    to the end of its line unclosed, and (index, '\"\"\"') where a triple-quoted
    string is never closed. Shared by the parser's nesting guard and the
    REPL's "is this entry complete?" test."""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if ch == '"':
            if text.startswith('"""', i):
                j = _close(text, i + 3, '"""', False)
                if j < 0:
                    yield i, '"""'
                    return
                i = j + 3
            else:
                j = _close(text, i + 1, '"', True)
                if j < 0:
                    yield i, '"'
                    nl = text.find("\n", i)
                    i = n if nl < 0 else nl
                else:
                    i = j + 1
            continue
        if ch in "([{)]}":
            yield i, ch
        i += 1


def _close(text: str, i: int, quote: str, one_line: bool) -> int:
    """Index of the closing quote from i (skipping escapes), or -1. Jumps
    with str.find between the characters that matter, so a long string is
    scanned at C speed."""
    n = len(text)
    while i < n:
        q = text.find(quote, i)
        b = text.find("\\", i, q if q >= 0 else n)
        if one_line:
            nl = text.find("\n", i, b if b >= 0 else (q if q >= 0 else n))
            if nl >= 0:
                return -1
        if b >= 0:
            i = b + 2
            continue
        return q
    return -1


def line_col(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def decode_script(data: bytes, filename: str) -> str:
    """A script file's text (newlines as universal newlines read them, a
    leading byte order mark dropped); bytes that are not UTF-8 raise a
    ScriptError at the line and column of the first bad byte (the column
    counts the characters before it on its line), with that line shown."""
    try:
        text = data.decode("utf-8")
        return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as e:
        from .errors import ScriptError

        start = data.rfind(b"\n", 0, e.start) + 1
        line = data.count(b"\n", 0, e.start) + 1
        col = len(data[start : e.start].decode("utf-8", "replace")) + 1
        source = Source(data.decode("utf-8", "replace"), filename)
        raise ScriptError(
            f"the script is not UTF-8 text: byte 0x{data[e.start]:02x} ({e.reason})",
            Span(line, col, line, col + 1, filename),
            "save the file as UTF-8",
        ).with_source(source) from None


def span_of(loc: str) -> Span:
    """A graph node's `loc` ("file:line:col") as a span (NO_SPAN when it has none)."""
    filename, _, rest = loc.rpartition(":")
    filename, _, line = filename.rpartition(":")
    if not (filename and line.isdigit() and rest.isdigit()):
        return NO_SPAN
    return Span(int(line), int(rest), int(line), int(rest) + 1, filename)
