"""Data runs: one flow over every row of a JSONL or CSV file, with results
appended to a JSONL file as each row completes, so a run can be killed at any
moment (even with SIGKILL) and resumed without losing or repeating a row.

Output format, one JSON object per line, in completion order:

    {"row": 3, "input": {"review": "..."}, "output": {"label": "positive"}}
    {"row": 4, "input": {"review": "..."}, "error": {"type": "LmlangRuntimeError",
                                                    "message": "...", "hint": "...", "exit_code": 1}}

`row` is the 0-based position of the row in the data file (CSV header not
counted). Each line is written with one `write` on an O_APPEND descriptor,
so after a crash the file holds whole lines plus at most one truncated last
line; `resume_state` drops that line and the rows it lists are not run again.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import DataError, LmlangError


# ---------------------------------------------------------------- reading rows

@dataclass
class DataRow:
    index: int                       # 0-based row number in the data file
    values: dict | None = None       # column -> value (None when unreadable)
    error: LmlangError | None = None  # why the row could not be read


def read_rows(path: str | Path, fmt: str | None = None) -> Iterator[DataRow]:
    """Rows of a .jsonl or .csv file. Unreadable rows come back with an
    error (file and line named) instead of stopping the run. JSONL follows
    lmlang.jsonl's contract (blank lines are skipped and do not count as
    rows); an empty CSV cell means "not given", so the input's default (if
    any) applies."""
    path = Path(path)
    fmt = fmt or _format_of(path)
    try:
        fh = open(path, "rb") if fmt != "csv" else open(path, encoding="utf-8", newline="")
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e.strerror or e}") from None
    with fh:
        if fmt == "csv":
            yield from _csv_rows(fh, path)
        else:
            yield from _jsonl_rows(fh, path)


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise DataError(f"data file {path} must end in .jsonl or .csv", hint="pass --data-format jsonl|csv to say which")


def _jsonl_rows(fh, path: Path) -> Iterator[DataRow]:
    from .jsonl import parse_jsonl

    for index, row in enumerate(parse_jsonl(fh)):
        if row.value is not None:
            yield DataRow(index, row.value)
        else:
            yield DataRow(index, None, DataError(f"{path}:{row.line}: bad data row: {row.problem}",
                                                 hint="each line must be one JSON object mapping input names to values"))


def _csv_rows(fh, path: Path) -> Iterator[DataRow]:
    reader = csv.reader(fh)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        raise DataError(f"{path}:1: bad CSV header: {e}") from None
    index = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield DataRow(index, None, DataError(f"{path}:{reader.line_num}: bad CSV row: {e}"))
            index += 1
            continue
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(header):
            yield DataRow(index, None, DataError(f"{path}:{reader.line_num}: {len(cells)} cells but {len(header)} columns"))
        else:
            yield DataRow(index, {k: v for k, v in zip(header, cells) if v != ""})
        index += 1


# ---------------------------------------------------------------- output records

def error_record(e: BaseException) -> dict:
    if isinstance(e, LmlangError):
        d = {"type": type(e).__name__, "message": e.message, "hint": e.hint, "exit_code": e.exit_code}
        if e.span.line:
            d["location"] = e.span.location()
        return d
    return {"type": type(e).__name__, "message": str(e), "hint": "", "exit_code": 1}


def row_record(index: int, inputs: dict | None, values: dict | None = None, error: BaseException | None = None) -> dict:
    rec: dict = {"row": index, "input": inputs}
    if error is not None:
        rec["error"] = error_record(error)
    else:
        rec["output"] = values
    return rec


class OutputWriter:
    """Appends one JSON line per row, each with a single write(2) so a crash
    leaves at most one partial line (at the end)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if self.path else None

    def write(self, record: dict) -> None:
        data = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        if self.fd is None:
            import sys

            sys.stdout.write(data.decode("utf-8"))
            sys.stdout.flush()
            return
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass
class ResumeState:
    done: set = field(default_factory=set)      # row indices already recorded
    errors: int = 0                              # of those, how many are errors
    dropped_partial: bool = False                # a truncated last line was removed


def resume_state(path: str | Path) -> ResumeState:
    """Which rows an existing output file already holds. A truncated last
    line (no newline: the process died mid-write) is cut off the file so the
    next append starts on a fresh line; so is an unparseable last line."""
    path = Path(path)
    state = ResumeState()
    if not path.exists():
        return state
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    lines = data[:end].splitlines()
    if lines:
        try:
            json.loads(lines[-1])
        except ValueError:
            # A whole but broken last line can only come from a torn write.
            end -= len(lines[-1]) + 1
            lines = lines[:-1]
    if end < len(data):
        os.truncate(path, end)
        state.dropped_partial = True
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
            idx = rec["row"]
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path}:{n}: not an lmlang results line; refusing to resume into it",
                            hint="point --out at a results file written by `lmlang run --data`") from None
        state.done.add(idx)
        if "error" in rec:
            state.errors += 1
    return state


# ---------------------------------------------------------------- the run

@dataclass
class DataRunSummary:
    total: int = 0          # rows in the data (after --limit)
    skipped: int = 0        # already in the output (--resume)
    ok: int = 0
    failed: int = 0
    worst_exit: int = 0     # highest exit code among failed rows
    ignored_columns: set = field(default_factory=set)   # data columns that name no input

    def to_dict(self) -> dict:
        return {"rows": self.total, "skipped": self.skipped, "ok": self.ok, "failed": self.failed}


def run_data(program, rows: Iterable[DataRow], write: Callable[[dict], None], *, done: set | None = None,
             limit: int | None = None, chunk_size: int = 32,
             on_progress: Callable[[int, int], None] | None = None, total_hint: int | None = None) -> DataRunSummary:
    """Run `program` over `rows` in chunks of `chunk_size` (queries batch
    across the rows of a chunk), calling `write` with each row's record as
    soon as that row completes. Rows whose index is in `done` are skipped."""
    done = done or set()
    summary = DataRunSummary()
    inputs = set(program.inputs)

    def record(rec: dict, error: BaseException | None):
        write(rec)
        if error is None:
            summary.ok += 1
        else:
            summary.failed += 1
            summary.worst_exit = max(summary.worst_exit, getattr(error, "exit_code", 1))
        if on_progress:
            on_progress(summary.ok + summary.failed, summary.total - summary.skipped)

    chunk: list[DataRow] = []

    def flush():
        if not chunk:
            return
        used = {r.index: {k: v for k, v in r.values.items() if k in inputs} for r in chunk}
        for r in chunk:
            summary.ignored_columns.update(k for k in r.values if k not in inputs)

        def on_done(outcome):
            rec = row_record(outcome.index, used[outcome.index], outcome.values, outcome.error)
            record(rec, outcome.error)

        program.run_each([used[r.index] for r in chunk], on_done, ids=[r.index for r in chunk], chunk_size=len(chunk))
        chunk.clear()

    for row in rows:
        if limit is not None and row.index >= limit:
            break
        summary.total += 1
        if row.index in done:
            summary.skipped += 1
            continue
        if row.error is not None:
            record(row_record(row.index, None, error=row.error), row.error)
            continue
        chunk.append(row)
        if len(chunk) >= chunk_size:
            flush()
    flush()
    return summary


def count_rows(path: str | Path) -> int | None:
    """A cheap row count for the progress bar (None when it would be costly)."""
    path = Path(path)
    try:
        if path.stat().st_size > 512 * 1024 * 1024:
            return None
        with open(path, "rb") as fh:
            if path.suffix.lower() == ".csv":
                return max(sum(1 for line in io.TextIOWrapper(fh, encoding="utf-8", errors="replace") if line.strip()) - 1, 0)
            return sum(1 for line in fh if line.strip())
    except OSError:
        return None


# ---------------------------------------------------------------- progress

class RowProgress:
    """A rich progress bar on stderr: rows done / total, rows/s, ETA.
    On a non-terminal stderr it draws nothing until the final line."""

    def __init__(self, total: int | None, description: str = "rows", completed: int = 0):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
        from rich.text import Text

        bar = self

        def rate(task) -> float | None:
            # Rows finish in bursts (a batch at a time), so rich's sliding-window
            # speed swings wildly; the mean since the start is what a user plans by.
            done = task.completed - bar.base
            return done / task.elapsed if task.elapsed and done > 0 else None

        class Rate(ProgressColumn):
            def render(self, task):
                r = rate(task)
                return Text(f"{r:.2f} rows/s" if r else "- rows/s", style="progress.data.speed")

        class Eta(ProgressColumn):
            def render(self, task):
                r = rate(task)
                if task.total is None or not r:
                    return Text("eta -", style="progress.remaining")
                left = max(task.total - task.completed, 0) / r
                return Text(f"eta {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}",
                            style="progress.remaining")

        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
                                 TimeElapsedColumn(), Eta(), console=self.console, transient=False)
        self.task = self.progress.add_task(description, total=total, completed=completed)
        self.base = completed

    def start(self) -> None:
        self.progress.start()

    def update(self, done: int) -> None:
        self.progress.update(self.task, completed=self.base + done)

    def stop(self) -> None:
        self.progress.stop()


def format_of(path) -> str | None:
    """The data format a file's suffix says ("jsonl" or "csv"), None if it says neither."""
    try:
        return _format_of(Path(path))
    except DataError:
        return None


def status(text: str):
    """A spinner with `text` on stderr while a block runs (a context manager)."""
    from rich.console import Console

    return Console(stderr=True).status(text)
