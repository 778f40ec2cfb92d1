"""Data sets at run time: the rows of a `data` declaration or of a data
argument (a file or a data set's name).

One function per source kind, chosen by the source node's type in
`source_rows`: a file is read with the reader data runs use (datarun.py:
JSONL or CSV, every bad row named by file and line); a selection is made by
select.py, a generation by generate.py. A new source kind adds its node
type and one branch there (and one in `recipe`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from .. import ast as A
from ..errors import DataError, LmlangRuntimeError
from .tables import generate_query_name

MAX_ROWS = 1_000_000  # a data set held in memory (selection, evaluation)
TRAINING_DATA_DIR = (
    "training-data"  # LMLANG_HOME/training-data/<sha256>.jsonl: a data set's rows as training reads them
)


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
        if isinstance(src, A.DataGenerate):
            from .generate import generate_rows

            from .tables import demos_ref

            demos = demos_ref(src)
            demo_rows = self.rows_of_ref(demos) if demos is not None else None
            return generate_rows(self.program, decl.name, src, self.rows_of_ref(src.source), demo_rows)
        raise LmlangRuntimeError(f"data set '{decl.name}': no reader for a {type(src).__name__} source")


# ---------------------------------------------------------------- training on a data set


def recipe(
    checked,
    name: str,
    query_node: Callable[[str], str],
    stack: tuple = (),
    model_node: Callable[[str], str] | None = None,
) -> tuple:
    """How data set `name` is made, as plain nested tuples with files as
    absolute paths and a generation's internal query as ("node", its node
    id; `query_node` gives it): the graph's train node carries it, so the
    node (and the result cache, through recipe_key) follows what the rows
    come from. A selection by embedding ends with ("encoder", ("node", the
    node of the model that embeds; `model_node` gives it)): the script's
    first declared model (select.py embeds with it), so the recipe names the
    encoder and follows its content. Torch-free: the compiler calls it."""
    src = checked.datasets[name].source
    stack = (*stack, name)
    if isinstance(src, A.DataFile):
        return ("file", str(checked.path_for(src.path, src)))
    if isinstance(src, A.DataSelect):
        pool, target = (_ref_recipe(checked, r, query_node, stack, model_node) for r in (src.pool, src.target))
        if src.method == "embedding" and model_node is not None:
            encoder = encoder_name(checked)
            enc = ("node", model_node(encoder)) if encoder else ("default",)
            return ("select", src.method, src.k, pool, target, ("encoder", enc))
        return ("select", src.method, src.k, pool, target)
    if isinstance(src, A.DataGenerate):
        from .generate import options

        from .tables import demos_ref

        keep = ("n", "seed", "vote", "agree", "shots")
        opts = tuple(sorted((k, v) for k, v in options(src).items() if k in keep))
        query = ("node", query_node(generate_query_name(name)))
        rec = ("generate", query, opts, _ref_recipe(checked, src.source, query_node, stack, model_node))
        demos = demos_ref(src)
        if demos is None:  # the recipe without demos is what it was: adapters stay cached
            return rec
        return (*rec, ("demos", _ref_recipe(checked, demos, query_node, stack, model_node)))
    return (type(src).__name__, name)  # a source with no recipe yet: its name


def encoder_name(checked) -> str | None:
    """The model a selection by embedding embeds with: the script's first
    declared model (None: the bundled default)."""
    return next(iter(checked.models), None)


def _ref_recipe(
    checked, ref: A.DataRef, query_node: Callable[[str], str], stack: tuple, model_node: Callable[[str], str] | None
) -> tuple:
    if ref.path is not None:
        return ("file", str(checked.path_for(ref.path, ref)))
    name = ref.name or ""
    if name in stack or name not in checked.datasets:  # the checker refused it already
        return ("name", name)
    return recipe(checked, name, query_node, stack, model_node)


def recipe_key(rec, node_hash: Callable[[str], str]) -> object:
    """The recipe with every file replaced by its content's sha256 and every
    node by its content hash (`node_hash`: the result cache's), so a result
    cached from an adapter trained on a data set goes stale when a file
    under it, or the model that generated its rows, changes."""
    if isinstance(rec, (tuple, list)) and len(rec) == 2 and rec[0] == "file":
        try:
            return ["file", hashlib.sha256(Path(rec[1]).read_bytes()).hexdigest()]
        except OSError:
            return ["file", "missing"]
    if isinstance(rec, (tuple, list)) and len(rec) == 2 and rec[0] == "node":
        return ["node", node_hash(str(rec[1]))]
    if isinstance(rec, (tuple, list)):
        return [recipe_key(x, node_hash) for x in rec]
    return rec


def training_file(rows: list[dict]) -> Path:
    """The rows as a JSONL file under LMLANG_HOME named by the sha256 of its
    bytes: the trainer reads it like any data file and keys the adapter on
    those bytes, so the adapter's cache follows the rows' content, not the
    data set's name. Written once, by an atomic rename."""
    from ..home import cache_dir

    body = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")
    path = cache_dir(TRAINING_DATA_DIR) / f"{hashlib.sha256(body).hexdigest()}.jsonl"
    if path.is_file() and path.stat().st_size == len(body):
        return path
    tmp = path.with_name(f".tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        tmp.write_bytes(body)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
