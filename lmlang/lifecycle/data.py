"""Data sets at run time: the rows of a `data` declaration or of a data
argument (a file or a data set's name).

One function per source kind, chosen by the source node's type in
`source_rows`: a file is read with the reader data runs use (datarun.py:
JSONL or CSV, every bad row named by file and line); a selection is made by
select.py. A new source kind (rows a model generates) adds its node type and
one branch there.
"""

from __future__ import annotations

from pathlib import Path

from .. import ast as A
from ..errors import DataError, LmlangRuntimeError

MAX_ROWS = 1_000_000  # a data set held in memory (selection, evaluation)


def read_file_rows(path: Path) -> list[dict]:
    """Every row of a .jsonl or .csv file; the first bad row is a DataError."""
    from ..datarun import read_rows

    rows = []
    for r in read_rows(path):
        if r.error is not None:
            raise r.error
        if r.values is None:
            raise DataError(f"{path}: row {r.index} is unreadable")
        rows.append(r.values)
        if len(rows) > MAX_ROWS:
            raise DataError(f"{path}: more than {MAX_ROWS} rows", hint="split the file")
    return rows


class DataSets:
    """The data sets of one program, each made once (selections are cached
    on disk too, by content)."""

    def __init__(self, program):
        self.program = program
        self.checked = program.frontend.checked
        self._rows: dict[str, list[dict]] = {}

    def rows_of_ref(self, ref: A.DataRef) -> list[dict]:
        if ref.path is not None:
            return read_file_rows(self.checked.path_for(ref.path, ref))
        return self.rows(ref.name or "")

    def rows(self, name: str) -> list[dict]:
        if name not in self._rows:
            decl = self.checked.datasets.get(name)
            if decl is None:
                raise LmlangRuntimeError(
                    f"no data set '{name}' in this script",
                    hint=f"data sets: {', '.join(self.checked.datasets) or 'none'}",
                )
            self._rows[name] = self.source_rows(decl)
        return self._rows[name]

    def source_rows(self, decl: A.DataDecl) -> list[dict]:
        src = decl.source
        if isinstance(src, A.DataFile):
            return read_file_rows(self.checked.path_for(src.path, src))
        if isinstance(src, A.DataSelect):
            from .select import select_rows

            pool = self.rows_of_ref(src.pool)
            target = self.rows_of_ref(src.target)
            return select_rows(self.program, src.method, src.k, pool, target)
        raise LmlangRuntimeError(f"data set '{decl.name}': no reader for a {type(src).__name__} source")
