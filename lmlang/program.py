"""The embedded Python API: a compiled program you can run, inspect and extend."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator

from .frontend import FrontEnd, build, build_file


class QueryFunction:
    """`program.queries["classify"](text="...")`: one query as a function."""

    def __init__(self, program: "Program", name: str):
        self.program, self.name = program, name

    def __call__(self, *args, **kwargs) -> dict:
        return self.program._executor().call_query(self.name, list(args), kwargs)

    def stream(self, *args, **kwargs) -> "TokenStream":
        """Iterate over the text pieces of the query's holes as they decode:

            for piece in prog.queries["reply"].stream(text="Hi"):
                print(piece, end="", flush=True)

        The returned TokenStream's `.result` holds the typed values once it is
        exhausted. Needs the runtime's per-token hook (`on_token`); without it
        each hole's text arrives as one piece when the query ends."""
        return TokenStream(self, list(args), dict(kwargs))

    def __repr__(self) -> str:
        info = self.program.frontend.checked.queries[self.name]
        params = ", ".join(p.name for p in info.decl.params)
        return f"<query {self.name}({params})>"


class TokenStream:
    """An iterator of text pieces from one query call (see QueryFunction.stream).

    The query decodes on a worker thread; pieces pass through a queue, so the
    caller sees each one as soon as the decoding loop produces it."""

    def __init__(self, fn: QueryFunction, args: list, kwargs: dict):
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.result: dict | None = None
        self.pieces: list[tuple[str, str]] = []    # (hole, text) in order
        self._it: Iterator[str] | None = None

    def __iter__(self) -> Iterator[str]:
        if self._it is None:
            self._it = self._run()
        return self._it

    def __next__(self) -> str:
        return next(iter(self))

    def _run(self) -> Iterator[str]:
        import inspect
        import queue
        import threading

        execu = self.fn.program._executor()
        if "on_token" not in inspect.signature(execu.run_query_rows).parameters:
            # No per-token hook in this runtime: one piece per hole, in order.
            before = len(execu.trace.records)
            self.result = execu.call_query(self.fn.name, self.args, self.kwargs)
            recs = execu.trace.records[before:]
            texts = recs[-1].values if recs else {}
            spec = execu.c.spec(execu.query_ids[self.fn.name])
            for hole in spec.holes:
                if hole in self.result:
                    text = texts[hole] if hole in texts else _piece_text(self.result[hole])
                    self.pieces.append((hole, text))
                    yield text
            return
        q: queue.Queue = queue.Queue()
        done = object()

        def on_token(row, hole, text):
            q.put((hole, text))

        def work():
            try:
                (out,) = execu.run_query_rows(self.fn.name, [(self.args, self.kwargs)], on_token=on_token)
                q.put((done, out))
            except BaseException as e:          # re-raised on the caller's thread
                q.put((done, e))

        threading.Thread(target=work, name=f"lmlang-stream-{self.fn.name}", daemon=True).start()
        while True:
            hole, text = q.get()
            if hole is done:
                if isinstance(text, BaseException):
                    raise text
                self.result = text
                return
            self.pieces.append((hole, text))
            yield text


def _piece_text(v) -> str:
    from .builtins import value_text

    return value_text(v)


class Program:
    def __init__(self, frontend: FrontEnd, functions: dict | None = None, device: str = "auto"):
        self.frontend = frontend
        self.functions: dict[str, Callable] = dict(functions or {})
        self.device = device
        self._exec = None

    # ------------------------------------------------------------ inspection
    @property
    def graph(self):
        return self.frontend.compiled.graph

    @property
    def warnings(self):
        return self.frontend.warnings

    @property
    def inputs(self) -> dict:
        return {n: d.type.describe() for n, d in self.frontend.checked.inputs.items()}

    @property
    def queries(self) -> dict[str, QueryFunction]:
        return {name: QueryFunction(self, name) for name in self.frontend.checked.queries}

    # ------------------------------------------------------------ running
    def _executor(self):
        if self._exec is None:
            from .runtime.executor import Executor

            self._exec = Executor(self.frontend.compiled, self.functions, device=self.device)
            self._exec.seed = getattr(self, "_seed", None)
        return self._exec

    def set_seed(self, seed: int | None) -> "Program":
        """Override the `seed` of every sampling decoder (sample, best_of,
        vote) in the program; None restores the seeds the script wrote.
        argmax and beam queries are deterministic and unaffected."""
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self._seed = seed
        if self._exec is not None:
            self._exec.seed = seed
        return self

    def load_models(self) -> list[str]:
        """Load the program's base models now (they otherwise load at their
        first query), e.g. before timing a run. Returns their names. Derived
        models (adapters, merges, fusions) still build at first use."""
        from .graph import ModelSpec

        execu = self._executor()
        names = []
        for nid in sorted(execu.c.nodes):
            if isinstance(execu.c.spec(nid), ModelSpec):
                names.append(execu.lm(nid).name)
        return names

    def run_each(self, rows: Iterable[dict], on_done: Callable, *, ids: Iterable[int] | None = None,
                 chunk_size: int | None = None) -> None:
        """Run the flow for each row, `chunk_size` rows at a time (default:
        the decoding batch size), calling `on_done(outcome)` as each row
        finishes; an outcome has `.index` (from `ids`, default 0, 1, ...),
        `.values` and `.error`. Rows never raise: errors go to on_done."""
        execu = self._executor()
        size = max(1, chunk_size or execu.batch_size)
        id_iter = iter(ids) if ids is not None else None
        chunk, chunk_ids, n = [], [], 0
        for row in rows:
            chunk.append(dict(row))
            chunk_ids.append(next(id_iter) if id_iter is not None else n)
            n += 1
            if len(chunk) >= size:
                execu.run_rows(chunk, on_done=on_done, row_ids=chunk_ids)
                chunk, chunk_ids = [], []
        if chunk:
            execu.run_rows(chunk, on_done=on_done, row_ids=chunk_ids)

    def run(self, **inputs) -> dict:
        """Run the flow once; returns the emitted values by name."""
        return self._executor().run(inputs)

    def run_batch(self, rows: list[dict], *, errors: str = "raise", progress=False) -> list:
        """Run the flow for many input rows, batching queries across rows.

        errors="raise" raises the first row's error after all rows ran;
        errors="return" puts the LmlangError in that row's place.
        progress=True draws a progress bar on stderr; a callable is called
        as progress(done, total) after each row."""
        rows = [dict(r) for r in rows]
        results: list = [None] * len(rows)
        errs: list = [None] * len(rows)
        report, close = _progress_reporter(progress, len(rows))
        done = 0

        def on_done(outcome):
            nonlocal done
            results[outcome.index], errs[outcome.index] = outcome.values, outcome.error
            done += 1
            report(done, len(rows))

        try:
            self.run_each(rows, on_done)
        finally:
            close()
        if errors == "raise":
            for e in errs:
                if e is not None:
                    raise e
        return [v if e is None else e for v, e in zip(results, errs)]

    @property
    def trace(self):
        return self._executor().trace

    def register(self, name: str, fn: Callable) -> "Program":
        """Make a Python function callable from the flow. The script is
        checked again, so calls to it are checked like any other."""
        self.functions[name] = fn
        fe = self.frontend
        self.frontend = _build(fe.source.text, fe.source.filename, fe.checked.base_dir, self.functions,
                               getattr(self, "_schemas", None))
        self._exec = None
        return self


def _progress_reporter(progress, total: int):
    """(report(done, total), close()) for run_batch's `progress` option."""
    if not progress:
        return (lambda done, total: None), (lambda: None)
    if callable(progress):
        return progress, (lambda: None)
    from .datarun import RowProgress

    bar = RowProgress(total)
    bar.start()
    return (lambda done, total: bar.update(done)), bar.stop


def schema_of(obj) -> dict:
    """A JSON Schema from a pydantic model class (or instance) or a dict, for
    the `schemas=` option of compile/compile_file."""
    if isinstance(obj, dict):
        return obj
    model = obj if isinstance(obj, type) else type(obj)
    if hasattr(model, "model_json_schema"):                    # pydantic v2
        return model.model_json_schema()
    raise TypeError(f"cannot make a JSON schema from {obj!r}: pass a pydantic model or a dict")


def _build(source: str, filename: str, base_dir, functions: dict, schemas: dict | None):
    return build(source, filename, base_dir, frozenset(functions), schemas=schemas or None)


def compile(source: str, filename: str = "<string>", *, functions: dict | None = None, base_dir: str | Path | None = None,
            device: str = "auto", schemas: dict | None = None) -> Program:
    """Compile lmlang source text. `functions` are Python functions the flow
    may call; `schemas` maps the name in `x is json "NAME"` to a pydantic
    model or a JSON schema dict (used instead of reading a file)."""
    functions = dict(functions or {})
    schemas = {k: schema_of(v) for k, v in (schemas or {}).items()}
    fe = _build(source, filename, Path(base_dir) if base_dir else None, functions, schemas)
    prog = Program(fe, functions, device)
    prog._schemas = schemas
    return prog


def compile_file(path: str | Path, *, functions: dict | None = None, device: str = "auto",
                 schemas: dict | None = None) -> Program:
    """Compile a .lm file (see `compile`)."""
    functions = dict(functions or {})
    schemas = {k: schema_of(v) for k, v in (schemas or {}).items()}
    prog = Program(build_file(path, frozenset(functions), schemas=schemas), functions, device)
    prog._schemas = schemas
    return prog
