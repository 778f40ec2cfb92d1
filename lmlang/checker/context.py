"""What every check reads and writes: the one reporter (diagnostics, the
cap, suggestions), the program being built, and the settings of this check
(the script's folder, registered functions, API schemas, the import chain).

The checker collects every diagnostic up to MAX_DIAGNOSTICS before
stopping, so one `lmlang check` shows all that is wrong; they are sorted by
position when the check ends.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import Diagnostic
from ..source import NO_SPAN, Source, Span
from ..suggest import did_you_mean
from ..frozen import field, record
from .program import CheckedProgram, PathRefused

MAX_DIAGNOSTICS = 50


class Stop(Exception):
    """Raised when the diagnostic cap is reached."""


class Reporter:
    """Errors and warnings of one check, with the cap."""

    def __init__(self, limit: int = MAX_DIAGNOSTICS):
        self.limit = limit
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []

    def error(self, message: str, at, hint: str = "", code: str = "") -> None:
        self.errors.append(Diagnostic(message, _span(at), hint, "error", code))
        if len(self.errors) >= self.limit:
            raise Stop()

    def warn(self, message: str, at, hint: str = "", code: str = "") -> None:
        self.warnings.append(Diagnostic(message, _span(at), hint, "warning", code))

    def extend(self, errors) -> None:
        """Errors already rendered elsewhere (an imported file's check)."""
        self.errors.extend(errors)
        if len(self.errors) >= self.limit:
            raise Stop()

    def reported_at(self, span: Span) -> bool:
        return any(d.span == span for d in self.errors)

    def sort(self, main_file: str) -> None:
        """By position, the main script's first (imports after, by file)."""

        def order(d):
            return d.span.filename != main_file, d.span.filename, d.span.line, d.span.col

        self.errors.sort(key=order)
        self.warnings.sort(key=order)
        if len(self.errors) >= self.limit:
            self.errors.append(
                Diagnostic(
                    f"stopped after {self.limit} errors",
                    NO_SPAN,
                    "fix these and check again",
                    "error",
                    "too-many-errors",
                )
            )


def _span(at) -> Span:
    return at if isinstance(at, Span) else getattr(at, "span", NO_SPAN)


@record
class Context:
    """The state of one check: the output being built, the reporter, and
    where in the script (imports, flow function) the checker is."""

    source: Source
    base_dir: Path
    out: CheckedProgram
    functions: frozenset = frozenset()
    schemas: dict = field(default_factory=dict)  # `is json "NAME"` -> a schema given through the API
    import_stack: tuple = ()  # files importing this one, outermost first
    report: Reporter = field(default_factory=Reporter)
    decls: list = field(default_factory=list)  # every declaration (imports joined), in order
    emitted: set = field(default_factory=set)  # names the flow emits
    in_def: str | None = None  # the flow function being checked (checker/defs.py), None in the flow

    def error(self, message: str, at, hint: str = "", code: str = "") -> None:
        self.report.error(message, at, hint, code)

    def warn(self, message: str, at, hint: str = "", code: str = "") -> None:
        self.report.warn(message, at, hint, code)

    did_you_mean = staticmethod(did_you_mean)

    def file_ref(self, kind: str, text: str, node, must: str = "file") -> Path | None:
        """A file the script names, resolved and confined to the allowed
        folders; None (and an error) when it is refused, missing or not a
        valid path. Refusal comes before any look at the file, so an error
        never tells whether something exists outside."""
        try:
            path = self.out.confined_path(text, node)
        except PathRefused as e:
            self.refuse(kind, text, node, e)
            return None
        except (OSError, ValueError, RuntimeError):
            self.error(f"invalid {kind} path {text!r}", node)
            return None
        if not probe(path, must):
            self.error(
                f"{kind} not found: {text}", node, f"paths resolve relative to the script's folder (looked for {path})"
            )
            return None
        return path

    def refuse(self, kind: str, text: str, node, e: PathRefused) -> None:
        where = "" if Path(text).expanduser() == e.path else f" (it leads to {e.path})"
        self.error(
            f"{kind} path {text!r} is outside the script's folder{where}",
            node,
            "a script reads files only under its own folder; to allow another folder, "
            "run with --allow-path DIR (API: allow_paths=[...])",
            code="path-refused",
        )


def probe(path: Path, must: str) -> bool:
    """Does a file (or folder, or anything) exist there? Never raises: odd
    names (NUL bytes, too long) simply do not exist."""
    try:
        if must == "file":
            return path.is_file()
        if must == "dir":
            return path.is_dir()
        return path.exists()
    except (OSError, ValueError):
        return False


def name_span(d) -> Span:
    """The span of a declaration's name (the whole node when it has none)."""
    return getattr(d, "name_span", None) or d.span


def article(t) -> str:
    """`a str`, `an int`: a type in a sentence."""
    text = str(t)
    return ("an " if text[:1] in "aeiou" else "a ") + text
