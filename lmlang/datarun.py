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
import stat
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import DataError, LmlangError
from .frozen import field, record


# ---------------------------------------------------------------- reading rows

# A quoted CSV cell may run over several lines; one that runs longer than
# this is taken for an unclosed quote, so a stray `"` costs its own row, not
# every row after it.
MAX_RECORD_LINES = 1000


@record
class DataRow:
    index: int  # 0-based row number in the data file
    values: dict | None = None  # column -> value (None when unreadable)
    error: LmlangError | None = None  # why the row could not be read


def read_rows(path: str | Path, fmt: str | None = None) -> Iterator[DataRow]:
    """Rows of a .jsonl or .csv file. Unreadable rows come back with an
    error (file and line named) instead of stopping the run. JSONL follows
    lmlang.jsonl's contract (blank lines are skipped and do not count as
    rows); an empty CSV cell means "not given", so the input's default (if
    any) applies.

    The file is opened, and a CSV header read and checked, before this
    returns: a file that cannot be read at all is a DataError now, before
    any model loads, not at the first row."""
    path = Path(path)
    fmt = fmt or _format_of(path)
    _check_readable(path)
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e.strerror or e}") from None
    if fmt != "csv":
        return _closing(fh, _jsonl_rows(fh, path))
    try:
        records = _csv_records(fh)
        header = _csv_header(records, path)
    except BaseException:
        fh.close()
        raise
    return _closing(fh, _csv_rows(records, header, path))


def _check_readable(path: Path) -> None:
    """A data file is a regular file or a pipe (`--data <(zcat rows.jsonl.gz)`);
    a folder or a device such as /dev/zero would never end."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e.strerror or e}") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        raise DataError(f"data file {path} is not a regular file or a pipe")


def _closing(fh, rows: Iterator[DataRow]) -> Iterator[DataRow]:
    with fh:
        yield from rows


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
            yield DataRow(
                index,
                None,
                DataError(
                    f"{path}:{row.line}: bad data row: {row.problem}",
                    hint="each line must be one JSON object mapping input names to values",
                ),
            )


class _CsvLines:
    """Physical lines of a CSV file for csv.reader, each decoded on its own
    (a bad byte spoils its row, not the 8 KB around it): bytes that are not
    UTF-8 become lone surrogates (surrogateescape), which `_not_utf8` finds
    in the cells. Remembers the lines the current record took, so a bad
    record can be given back and read again from its second line."""

    def __init__(self, fh):
        from .jsonl import bounded_lines

        self.raw = enumerate(bounded_lines(fh), start=1)
        self.back: deque = deque()
        self.taken: list[tuple[int, str | None]] = []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if len(self.taken) >= MAX_RECORD_LINES:
            raise _BadRecord(f"a quoted cell runs over more than {MAX_RECORD_LINES} lines (an unclosed quote?)")
        if self.back:
            number, text = self.back.popleft()
        else:
            number, raw = next(self.raw)
            text = None if raw is None else raw.decode("utf-8", "surrogateescape")
            if number == 1 and text is not None and text.startswith("\ufeff"):
                text = text[1:]
        self.taken.append((number, text))
        if text is None:
            from .jsonl import MAX_LINE_BYTES

            raise _BadRecord(f"line longer than {MAX_LINE_BYTES >> 20} MiB")
        return text


class _BadRecord(Exception):
    pass


def _csv_records(fh) -> Iterator[tuple[int, list[str] | None, str]]:
    """(first line, cells, "") per CSV record, or (first line, None, problem)
    for one that is malformed. After a bad record, reading starts again on
    the line after its first, so an unclosed quote spoils one row and the
    rows it swallowed are read as rows."""
    lines = _CsvLines(fh)
    reader = csv.reader(lines, strict=True)
    while True:
        lines.taken = []
        try:
            cells = next(reader)
        except StopIteration:
            return
        except (csv.Error, _BadRecord) as e:
            taken = lines.taken
            if not taken:
                return
            problem = str(e)
            if problem == "unexpected end of data":
                problem = "a quoted cell is never closed"
            lines.back.extendleft(reversed(taken[1:]))
            reader = csv.reader(lines, strict=True)
            yield taken[0][0], None, problem
            continue
        yield lines.taken[0][0] if lines.taken else 0, cells, ""


def _not_utf8(cells: list[str]) -> str:
    for cell in cells:
        for ch in cell:
            if "\udc80" <= ch <= "\udcff":
                return f"not UTF-8 text (byte 0x{ord(ch) - 0xDC00:02x})"
    return ""


def _csv_header(records, path: Path) -> list[str]:
    for line, cells, problem in records:
        if cells == []:
            continue  # blank lines before the header
        if cells is None:
            raise DataError(f"{path}:{line}: bad CSV header: {problem}")
        bad = _not_utf8(cells)
        if bad:
            raise DataError(f"{path}:{line}: bad CSV header: {bad}")
        seen: set = set()
        for name in cells:
            if name and name in seen:
                raise DataError(
                    f"{path}:{line}: column '{name}' appears twice in the CSV header",
                    hint="each column names one input; rename or drop one of them",
                )
            seen.add(name)
        return cells
    return []


def _csv_rows(records, header: list[str], path: Path) -> Iterator[DataRow]:
    if not header:
        return
    index = 0
    for line, cells, problem in records:
        if cells is not None and not any(c.strip() for c in cells):
            continue
        if cells is None:
            yield DataRow(index, None, DataError(f"{path}:{line}: bad CSV row: {problem}"))
        elif _not_utf8(cells):
            yield DataRow(index, None, DataError(f"{path}:{line}: bad CSV row: {_not_utf8(cells)}"))
        elif len(cells) > len(header):
            yield DataRow(index, None, DataError(f"{path}:{line}: {len(cells)} cells but {len(header)} columns"))
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


def encode_record(record: dict) -> bytes:
    """One output line. JSON has no NaN or Infinity and no lone surrogates,
    and Python would write them anyway, so a record that holds one (a flow
    that computed float("nan"), a Python function's odd return value) is
    replaced by an error record for its row: the file stays valid JSON and
    the row is still recorded."""
    try:
        return (json.dumps(record, ensure_ascii=False, allow_nan=False, default=str) + "\n").encode("utf-8")
    except (ValueError, TypeError, RecursionError, UnicodeEncodeError):
        part = "output" if "output" in record else "input"
        fallback = {
            "row": record.get("row"),
            "input": None,
            "error": {
                "type": "DataError",
                "message": f"the row's {part} {_unwritable(record.get(part))}",
                "hint": "",
                "exit_code": 1,
            },
        }
        if part == "output" and _encodable(record.get("input")):
            fallback["input"] = record["input"]
        return (json.dumps(fallback, ensure_ascii=True, default=str) + "\n").encode("utf-8")


def _encodable(value) -> bool:
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False, default=str).encode("utf-8")
        return True
    except (ValueError, TypeError, RecursionError, UnicodeEncodeError):
        return False


def _unwritable(value) -> str:
    """Why `value` cannot be a JSON line, as the end of a sentence."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False, default=str).encode("utf-8")
    except ValueError as e:
        if "JSON compliant" in str(e):
            return "holds NaN or Infinity, which JSON cannot write"
        return f"cannot be written as JSON ({e})"
    except (TypeError, RecursionError, UnicodeEncodeError) as e:
        return f"cannot be written as JSON ({type(e).__name__}: {e})"
    return "cannot be written as JSON"


class OutputWriter:
    """Appends one JSON line per row, each with a single write(2) so a crash
    leaves at most one partial line (at the end). `out` is an OutputFile (a
    locked --out), a path, or None for stdout."""

    def __init__(self, out: "OutputFile | str | Path | None"):
        if isinstance(out, (str, Path)):
            out = OutputFile.open(out)
        self.out = out
        self.fd = out.fd if out is not None else None

    def write(self, record: dict) -> None:
        data = encode_record(record)
        if self.fd is None:
            import sys

            sys.stdout.write(data.decode("utf-8"))
            sys.stdout.flush()
            return
        view = memoryview(data)
        assert self.out is not None  # a descriptor comes from an output file
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except OSError as e:
            raise OutputWriteError(
                f"cannot write to {self.out.path}: {e.strerror or e}",
                hint="the rows recorded so far are kept; free space, then run again with --resume",
            ) from None

    def close(self) -> None:
        if self.out is not None:
            self.out.close()
            self.fd = None


class OutputError(DataError):
    """An --out (or --trace) path that cannot be used: a command-line error, exit code 2."""

    exit_code = 2


class OutputWriteError(DataError):
    """Writing a record failed (disk full): the run stops; it resumes later."""


class OutputFile:
    """A data run's --out file, opened for appending and locked (flock) for
    as long as the run lasts, so a second run on the same file, or a second
    `--resume`, fails at once instead of writing every row again. Opened
    before any model loads, so a path that cannot be written fails fast."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd: int | None = fd  # None once closed

    @classmethod
    def open(cls, path: str | Path, *, protect: dict | None = None, regular: bool = False) -> "OutputFile":
        """Open and lock `path`. `protect` maps a role ("--data") to a file
        the output must not be, compared as files (a symlink or a hard link
        to the data is the data). `regular`: refuse a path that exists and
        is not a regular file (what --resume reads back), before opening it
        (opening a FIFO would wait for a reader)."""
        path = Path(path)
        for role, other in (protect or {}).items():
            if other is not None and _same_file(path, Path(other)):
                raise OutputError(
                    f"--out {path} is the {role} file" + ("" if str(path) == str(other) else f" {other}"),
                    hint="write the results to another file",
                )
        if regular and os.path.exists(path) and not os.path.isfile(path):
            raise OutputError(
                f"--resume needs a regular file; {path} is not one", hint="resume into the results file a run wrote"
            )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(
                f"cannot write --out {path}: {e.strerror or e}", hint="the folder must exist and be writable"
            ) from None
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataError(
                f"{path} is in use by another lmlang run", hint="wait for it to finish, or write to another --out"
            ) from None
        except OSError:
            pass  # a filesystem without locks: run unlocked, as before
        return cls(path, fd)

    @property
    def regular(self) -> bool:
        assert self.fd is not None, "output file used after close"
        return stat.S_ISREG(os.fstat(self.fd).st_mode)

    def size(self) -> int:
        assert self.fd is not None, "output file used after close"
        return os.fstat(self.fd).st_size if self.regular else 0

    def truncate(self) -> None:
        """--overwrite: start afresh (a pipe or device has nothing to cut)."""
        assert self.fd is not None, "output file used after close"
        if self.regular:
            os.ftruncate(self.fd, 0)

    def resume_state(self) -> "ResumeState":
        if not self.regular:
            raise OutputError(
                f"--resume needs a regular file; {self.path} is not one",
                hint="resume into the results file a run wrote",
            )
        return resume_state(self.path)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False  # one of them does not exist (yet)


@record
class ResumeState:
    done: set = field(default_factory=set)  # row indices already recorded
    errors: int = 0  # of those, how many are errors
    dropped_partial: bool = False  # a truncated last line was removed


def resume_state(path: str | Path) -> ResumeState:
    """Which rows an existing output file already holds. A truncated last
    line (no newline: the process died mid-write) is cut off the file so the
    next append starts on a fresh line; so is an unparseable last line.
    Only a regular file is read: a pipe or a device (/dev/zero) would be
    read until memory ran out."""
    path = Path(path)
    state = ResumeState()
    if not path.exists():
        return state
    if not path.is_file():
        raise OutputError(
            f"--resume needs a regular file; {path} is not one", hint="resume into the results file a run wrote"
        )
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
        except (ValueError, KeyError, TypeError, RecursionError):
            raise DataError(
                f"{path}:{n}: not an lmlang results line; refusing to resume into it",
                hint="point --out at a results file written by `lmlang run --data`",
            ) from None
        state.done.add(idx)
        if "error" in rec:
            state.errors += 1
    return state


# ---------------------------------------------------------------- the run


@record
class DataRunSummary:
    total: int = 0  # rows in the data (after --limit)
    skipped: int = 0  # already in the output (--resume)
    ok: int = 0
    failed: int = 0
    worst_exit: int = 0  # highest exit code among failed rows
    ignored_columns: set = field(default_factory=set)  # data columns that name no input

    def to_dict(self) -> dict:
        return {"rows": self.total, "skipped": self.skipped, "ok": self.ok, "failed": self.failed}


def run_data(
    program,
    rows: Iterable[DataRow],
    write: Callable[[dict], None],
    *,
    done: set | None = None,
    limit: int | None = None,
    chunk_size: int = 32,
    on_progress: Callable[[int, int], None] | None = None,
    total_hint: int | None = None,
) -> DataRunSummary:
    """Run `program` over `rows` in chunks of `chunk_size` (queries batch
    across the rows of a chunk), calling `write` with each row's record as
    soon as that row completes. Rows whose index is in `done` are skipped."""
    done = done or set()
    summary = DataRunSummary()
    inputs = set(program.inputs)

    def record(rec: dict, error: BaseException | None):
        if error is None and not _encodable(rec):
            error = DataError(f"the row's output {_unwritable(rec.get('output'))}")
            rec = row_record(rec["row"], rec["input"] if _encodable(rec["input"]) else None, error=error)
        write(rec)
        if error is None:
            summary.ok += 1
        else:
            summary.failed += 1
            summary.worst_exit = max(summary.worst_exit, getattr(error, "exit_code", 1))
        if on_progress:
            on_progress(summary.ok + summary.failed, summary.total - summary.skipped)

    chunk: list[DataRow] = []

    def run_chunk(rows: list[DataRow], used: dict) -> None:
        reported: set = set()

        def on_done(outcome):
            reported.add(outcome.index)
            record(row_record(outcome.index, used[outcome.index], outcome.values, outcome.error), outcome.error)

        try:
            program.run_each([used[r.index] for r in rows], on_done, ids=[r.index for r in rows], chunk_size=len(rows))
        except OutputWriteError:
            raise
        except Exception as e:  # noqa: BLE001 - a row that breaks the runtime must not take its chunk along
            left = [r for r in rows if r.index not in reported]
            if len(rows) == 1:
                for r in left:
                    record(row_record(r.index, used[r.index], error=e), e)
                return
            for r in left:  # find the row: the others run again, one at a time
                run_chunk([r], used)

    def flush():
        if not chunk:
            return
        used = {r.index: {k: v for k, v in r.values.items() if k in inputs} for r in chunk}
        for r in chunk:
            summary.ignored_columns.update(k for k in r.values if k not in inputs)
        run_chunk(list(chunk), used)
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
    """A cheap row count for the progress bar (None when it would be costly,
    or would consume the data: a pipe is read once, by the run)."""
    path = Path(path)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > 512 * 1024 * 1024:
            return None
        with open(path, "rb") as fh:
            if path.suffix.lower() == ".csv":
                return max(
                    sum(1 for line in io.TextIOWrapper(fh, encoding="utf-8", errors="replace") if line.strip()) - 1, 0
                )
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
                return Text(
                    f"eta {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}",
                    style="progress.remaining",
                )

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            Rate(),
            TimeElapsedColumn(),
            Eta(),
            console=self.console,
            transient=False,
        )
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
