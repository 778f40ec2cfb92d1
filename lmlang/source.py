"""Source text, spans, and the caret rendering every diagnostic shares.

A Span is set once by the parser and travels with each AST node, so any later
stage (checker, compiler, runtime) can point back at the text that caused it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Source:
    text: str
    filename: str = "<string>"

    def line_text(self, line: int) -> str:
        lines = self.text.splitlines()
        if 1 <= line <= len(lines):
            return lines[line - 1]
        return ""

    def span(self, line: int, col: int, end_line: int | None = None, end_col: int | None = None) -> Span:
        return Span(line, col, end_line or line, end_col or col + 1, self.filename)

    def underline(self, span: Span, max_lines: int = 4) -> str:
        """The lines the span covers, each with a `^` underline under the
        spanned part (long spans show their first and last lines)."""
        if span.line <= 0:
            return ""
        last = max(span.end_line, span.line)
        numbers = list(range(span.line, last + 1))
        if len(numbers) > max_lines:
            numbers = numbers[:max_lines - 1] + [None, last]
        width = len(str(last))
        out = []
        for n in numbers:
            if n is None:
                out.append(f"{'.' * width:>4} |")
                continue
            text = self.line_text(n).expandtabs(1)
            if n == span.line:
                start = max(span.col - 1, 0)
            else:
                start = len(text) - len(text.lstrip())
            end = span.end_col - 1 if n == span.end_line else len(text)
            end = min(end, len(text))
            count = max(end - start, 1)
            gutter = f"{n:>4} | "
            out.append(f"{gutter}{text}")
            if n == last and n != span.line and end <= start and not text.strip():
                continue
            out.append(f"{' ' * len(gutter)}{' ' * start}{'^' * count}")
        return "\n".join(out)
