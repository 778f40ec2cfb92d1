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

    def underline(self, span: Span) -> str:
        """The source line and a caret/underline under the span (first line only)."""
        if span.line <= 0:
            return ""
        text = self.line_text(span.line).expandtabs(1)
        start = max(span.col - 1, 0)
        if span.end_line == span.line:
            width = max(span.end_col - span.col, 1)
        else:
            width = max(len(text) - start, 1)
        width = min(width, max(len(text) - start, 1))
        gutter = f"{span.line:>4} | "
        return f"{gutter}{text}\n{' ' * len(gutter)}{' ' * start}{'^' * width}"
