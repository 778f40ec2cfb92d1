"""lmlang's error types. Each carries a span; rendering with the source text
happens at the boundary (CLI, REPL, API message), never where it is raised.

Exit codes (documented in docs/cli.md): 0 ok, 1 runtime error, 2 script error.
"""

from __future__ import annotations

from typing import TypeVar

from .source import NO_SPAN, Source, Span
from .frozen import frozen

_E = TypeVar("_E", bound="LmlangError")  # with_source returns the error's own class


@frozen
class Diagnostic:
    message: str
    span: Span = NO_SPAN
    hint: str = ""
    severity: str = "error"  # "error" | "warning"
    code: str = ""

    def render(self, source: Source | None = None) -> str:
        head = (
            f"{self.span.location()}: {self.severity}: {self.message}"
            if self.span.line
            else f"{self.severity}: {self.message}"
        )
        parts = [head]
        if source is not None and self.span.line:
            parts.append(source.underline(self.span))
        if self.hint:
            parts.append(f"  hint: {self.hint}")
        return "\n".join(parts)

    def to_dict(self) -> dict:
        d = {"severity": self.severity, "message": self.message, "hint": self.hint, "code": self.code}
        d.update(self.span.to_dict())
        return d


class LmlangError(Exception):
    """Base of every error lmlang raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, span: Span = NO_SPAN, hint: str = "", *, code: str = ""):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.code = code
        self.source: Source | None = None
        self.sources: dict[str, Source] = {}  # other files (imports) by filename

    @property
    def diagnostics(self) -> list[Diagnostic]:
        return [Diagnostic(self.message, self.span, self.hint, "error", self.code)]

    def with_source(self: _E, source: Source) -> _E:
        if self.source is None:
            self.source = source
        return self

    def source_for(self, d: Diagnostic, source: Source | None = None) -> Source | None:
        src = source or self.source
        if src is not None and d.span.filename == src.filename:
            return src
        return self.sources.get(d.span.filename, src)

    def render(self, source: Source | None = None) -> str:
        return "\n".join(d.render(self.source_for(d, source)) for d in self.diagnostics)

    def at_node(self, span: Span, name: str) -> "LmlangError":
        """Position an error raised while building or loading a graph node
        (a model, adapter, merge) at the node's declaration, named as the
        script names it; an error that already has a position keeps it."""
        if not self.span.line and span.line:
            self.span = span
            if name and not self.message.startswith(name):
                self.message = f"{name}: {self.message}"
                self.args = (self.message,)
        return self

    def __str__(self) -> str:
        return self.render()


class ScriptError(LmlangError):
    """Something wrong with the script itself: exit code 2."""

    exit_code = 2


class LmlangSyntaxError(ScriptError):
    pass


class CheckError(ScriptError):
    """One or more diagnostics collected by the checker."""

    def __init__(self, diagnostics: list[Diagnostic], warnings: list[Diagnostic] | None = None):
        first = diagnostics[0]
        super().__init__(first.message, first.span, first.hint, code=first.code)
        self._diagnostics = list(diagnostics)
        self.warnings = list(warnings or [])

    @property
    def diagnostics(self) -> list[Diagnostic]:
        return self._diagnostics

    def render(self, source: Source | None = None) -> str:
        body = "\n".join(d.render(self.source_for(d, source)) for d in self._diagnostics)
        n = len(self._diagnostics)
        return body + (f"\n{n} errors" if n > 1 else "")


class LmlangRuntimeError(LmlangError):
    """Failure while executing (model missing, decoding failure, bad data row): exit 1."""

    exit_code = 1


class ModelNotFoundError(LmlangRuntimeError):
    pass


class NotSupportedYet(LmlangRuntimeError):
    """A construct the front-end accepts but the runtime cannot execute yet."""


class MergeError(LmlangRuntimeError):
    pass


class DataError(LmlangRuntimeError):
    """A bad data row (training data, --data input): names the file and line."""
