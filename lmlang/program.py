"""The embedded Python API: a compiled program you can run, inspect and extend.

The CLI, the REPL, data runs and `lmlang compare` use only what this module
makes public; the executor behind a Program stays private to it.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:
    from .frontend import FrontEnd
    from .runtime.trace import Trace


class QueryFunction:
    """`program.queries["classify"](text="...")`: one query as a function."""

    def __init__(self, program: "Program", name: str):
        self.program, self.name = program, name

    def __call__(self, *args, **kwargs) -> dict:
        return self.program.call_query(self.name, args, kwargs)

    def stream(self, *args, **kwargs) -> "TokenStream":
        """Iterate over the text pieces of the query's holes as they decode:

            for piece in prog.queries["reply"].stream(text="Hi"):
                print(piece, end="", flush=True)

        The returned TokenStream's `.result` holds the typed values once it is
        exhausted."""
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
        self.pieces: list[tuple[str, str]] = []  # (hole, text) in order
        self._it: Iterator[str] | None = None

    def __iter__(self) -> Iterator[str]:
        if self._it is None:
            self._it = self._run()
        return self._it

    def __next__(self) -> str:
        return next(iter(self))

    def _run(self) -> Iterator[str]:
        import queue
        import threading

        q: queue.Queue = queue.Queue()
        done = object()

        def work():
            try:
                out = self.fn.program.call_query(
                    self.fn.name, self.args, self.kwargs, on_token=lambda hole, text: q.put((hole, text))
                )
                q.put((done, out))
            except BaseException as e:  # re-raised on the caller's thread
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


class Program:
    """A compiled program. Nothing loads until it runs.

    Settings: `device` (where models load), `batch_size` (rows decoded
    together, and rows per chunk of `run_each`), the seed override
    (`set_seed`), `trace_file` (a JSONL file that gets each query's trace
    record as it is made; `close()` closes it), `cache` (the result cache:
    None follows LMLANG_CACHE, on unless it says 0), `threads` (torch's CPU
    threads; None: LMLANG_THREADS, else a default that counts idle cores),
    `dtype` (inference dtype: "auto", "float32", "bfloat16", "float16", or
    {model name: dtype}), `device_map` (e.g. "auto": spread a model larger
    than one device over several) and `parallel` (independent calls of a row
    decode together)."""

    def __init__(
        self,
        frontend: FrontEnd,
        functions: dict | None = None,
        device: str = "auto",
        *,
        batch_size: int = 32,
        seed: int | None = None,
        trace_file: str | Path | None = None,
        schemas: dict | None = None,
        cache: bool | None = None,
        threads: int | None = None,
        dtype: str | dict = "auto",
        device_map: str | dict | None = None,
        parallel: bool = True,
    ):
        self.frontend = frontend
        self.functions: dict[str, Callable] = dict(functions or {})
        self.device = device
        self.schemas: dict = dict(schemas or {})  # name -> JSON schema, for `is json "NAME"` (see compile)
        self._batch_size = _check_batch_size(batch_size)
        self._seed = _check_seed(seed)
        self._trace_file = trace_file
        self._trace: Trace | None = None  # made on first use (keeps `import lmlang` light)
        self._exec = None
        from .runtime.result_cache import cache_enabled_by_default
        from .runtime.threads import requested_threads

        self.cache = cache_enabled_by_default() if cache is None else bool(cache)
        self.threads = requested_threads(threads) if threads is not None else None
        self.dtype = _check_dtype(dtype)
        self.device_map = device_map
        self.parallel = bool(parallel)

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

    @property
    def trace(self) -> Trace:
        """The trace: `.records` holds one record per query call so far."""
        if self._trace is None:
            from .runtime.trace import Trace

            self._trace = Trace(self._trace_file)
        return self._trace

    # ------------------------------------------------------------ settings
    @property
    def batch_size(self) -> int:
        """Rows decoded together (and rows per chunk of `run_each`); settable."""
        return self._batch_size

    @batch_size.setter
    def batch_size(self, n: int) -> None:
        self._batch_size = _check_batch_size(n)
        if self._exec is not None:
            self._exec.batch_size = self._batch_size

    @property
    def seed(self) -> int | None:
        """The seed that overrides the sampling decoders' (None: the script's own); see set_seed."""
        return self._seed

    def set_seed(self, seed: int | None) -> "Program":
        """Override the `seed` of every sampling decoder (sample, best_of,
        vote) in the program; None restores the seeds the script wrote.
        argmax and beam queries are deterministic and unaffected."""
        self._seed = _check_seed(seed)
        if self._exec is not None:
            self._exec.seed = seed
        return self

    def close(self) -> None:
        """Close the trace file (if any); the program can still run, without writing it."""
        if self._trace is not None:
            self._trace.close()

    # ------------------------------------------------------------ running
    def _executor(self):
        if self._exec is None:
            from .runtime.executor import Executor
            from .runtime.result_cache import ResultCache

            self._exec = Executor(
                self.frontend.compiled,
                self.functions,
                device=self.device,
                trace=self.trace,
                batch_size=self._batch_size,
                seed=self._seed,
                cache=ResultCache() if self.cache else None,
                parallel=self.parallel,
                threads=self.threads,
                dtype=self.dtype,
                device_map=self.device_map,
            )
            from .lifecycle.data import DataSets

            self._exec.builder.data_rows = DataSets(self).rows  # adapters trained on a data set
        return self._exec

    def prepare_models(self, load: bool | None = None) -> list[str]:
        """Make sure the program's base models can run before the first row:
        load them (load_models), or with `load` False only find them (a
        missing model still fails at once). The default loads them unless
        the result cache is on: a run that the cache answers never loads
        weights. Returns their names."""
        if load is None:
            load = not self.cache
        if load:
            return self.load_models()
        from .graph import ModelSpec
        from .models.loader import resolve_model

        execu = self._executor()
        names = []
        for nid in sorted(execu.c.nodes):
            spec = execu.c.spec(nid)
            if isinstance(spec, ModelSpec):
                resolve_model(spec.source)
                names.append(execu.c.display_name(nid))
        return names

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

    def call_query(
        self,
        name: str,
        args: Iterable = (),
        kwargs: dict | None = None,
        *,
        on_token: Callable[[str, str], None] | None = None,
    ) -> dict:
        """Run the query `name` once; returns its values by hole (what
        `prog.queries[name](...)` does). `on_token(hole, text)` is called with
        each piece of a hole's text as it decodes (what `.stream()` uses)."""
        if isinstance(args, (str, bytes, Mapping)) or not isinstance(args, Iterable):
            raise TypeError(
                f"call_query: args must be a list or tuple of positional arguments, got {type(args).__name__}"
            )
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise TypeError(f"call_query: kwargs must be a dict of arguments by name, got {type(kwargs).__name__}")
        stream = (lambda _row, hole, text: on_token(hole, text)) if on_token else None
        return self._executor().call_query(name, list(args), dict(kwargs or {}), on_token=stream)

    def run_each(
        self,
        rows: Iterable[dict],
        on_done: Callable,
        *,
        ids: Iterable[int] | None = None,
        chunk_size: int | None = None,
    ) -> None:
        """Run the flow for each row, `chunk_size` rows at a time (default:
        the decoding batch size), calling `on_done(outcome)` as each row
        finishes; an outcome has `.index` (from `ids`, default 0, 1, ...),
        `.values` and `.error`. Rows never raise: errors go to on_done."""
        if isinstance(rows, Mapping):
            raise TypeError("run_each takes rows (an iterable of dicts), not one dict")
        execu = self._executor()
        size = max(1, chunk_size or self._batch_size)
        id_iter = iter(ids) if ids is not None else None
        chunk, chunk_ids, n = [], [], 0
        for row in rows:
            rid: int | None = n
            if id_iter is not None:
                rid = next(id_iter, None)
                if rid is None:
                    raise ValueError(f"run_each: ids ran out at row {n}; give one id per row")
            n += 1
            if not isinstance(row, Mapping):
                # Named here, where the row's id is known; the other rows run.
                from .runtime.executor import InputError, RowOutcome

                on_done(
                    RowOutcome(
                        rid, error=InputError(f"row {rid}: expected a dict of input names to values, got {_kind(row)}")
                    )
                )
                continue
            chunk.append(dict(row))
            chunk_ids.append(rid)
            if len(chunk) >= size:
                execu.run_rows(chunk, on_done=on_done, row_ids=chunk_ids)
                chunk, chunk_ids = [], []
        if chunk:
            execu.run_rows(chunk, on_done=on_done, row_ids=chunk_ids)

    def run(self, **inputs) -> dict:
        """Run the flow once; returns the emitted values by name."""
        return self._executor().run(inputs)

    def run_streamed(self, on_token, **inputs) -> dict:
        """Run the flow once, calling on_token(query, hole, piece) with each
        piece of a value's text as it decodes (`lmlang run --stream`)."""
        execu = self._executor()
        execu.flow_stream = on_token
        try:
            return execu.run(inputs)
        finally:
            execu.flow_stream = None

    def run_batch(self, rows: list[dict], *, errors: str = "raise", progress=False) -> list:
        """Run the flow for many input rows, batching queries across rows.

        errors="raise" raises the first row's error after all rows ran;
        errors="return" puts the LmlangError in that row's place.
        progress=True draws a progress bar on stderr; a callable is called
        as progress(done, total) after each row."""
        if errors not in ("raise", "return"):
            raise ValueError(f"run_batch: errors must be 'raise' or 'return', got {errors!r}")
        if isinstance(rows, Mapping):
            raise TypeError("run_batch takes a list of rows (dicts); for one row use run(**row)")
        rows = list(rows)
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

    def register(self, name: str, fn: Callable) -> "Program":
        """Make a Python function callable from the flow. The script is
        checked again, so calls to it are checked like any other."""
        self.functions[name] = fn
        fe = self.frontend
        self.frontend = _build(
            fe.source.text, fe.source.filename, fe.checked.base_dir, self.functions, self.schemas, fe.allow_paths
        )
        self._exec = None
        return self


def _kind(value) -> str:
    if value is None:
        return "None"
    return f"a {type(value).__name__}"


def _check_batch_size(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"batch_size must be a positive integer, got {n!r}")
    return n


def _check_dtype(dtype):
    names = ("auto", "float32", "bfloat16", "float16", "int8", "fp32", "bf16", "fp16", "half")
    for d in dtype.values() if isinstance(dtype, dict) else [dtype]:
        if d not in names:
            raise ValueError(
                f"dtype must be one of {', '.join(names[:5])} (or a dict of them by model name), got {d!r}"
            )
    return dict(dtype) if isinstance(dtype, dict) else dtype


def _check_seed(seed):
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return seed


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
    if hasattr(model, "model_json_schema"):  # pydantic v2
        return model.model_json_schema()
    raise TypeError(f"cannot make a JSON schema from {obj!r}: pass a pydantic model or a dict")


def _build(source: str, filename: str, base_dir, functions: dict, schemas: dict | None, allow_paths=()):
    from .frontend import build

    return build(source, filename, base_dir, frozenset(functions), schemas=schemas or None, allow_paths=allow_paths)


def _allow_paths(allow_paths) -> tuple[str, ...]:
    if allow_paths is None:
        return ()
    if isinstance(allow_paths, (str, Path)):  # one folder given bare: not its characters
        allow_paths = [allow_paths]
    out = []
    for p in allow_paths:
        if not isinstance(p, (str, Path)):
            raise TypeError(f"allow_paths takes folder paths, got {p!r}")
        out.append(str(p))
    return tuple(out)


def compile(
    source: str,
    filename: str = "<string>",
    *,
    functions: dict | None = None,
    base_dir: str | Path | None = None,
    device: str = "auto",
    schemas: dict | None = None,
    batch_size: int = 32,
    trace_file: str | Path | None = None,
    allow_paths=None,
    cache: bool | None = None,
    threads: int | None = None,
    dtype: str | dict = "auto",
    device_map: str | dict | None = None,
    parallel: bool = True,
) -> Program:
    """Compile lmlang source text. `functions` are Python functions the flow
    may call; `schemas` maps the name in `x is json "NAME"` to a pydantic
    model or a JSON schema dict (used instead of reading a file);
    `batch_size`, `trace_file`, `cache`, `threads`, `dtype`, `device_map`
    and `parallel` are the Program's settings (see Program). File
    references reach only base_dir's tree (default: the current folder)
    and the folders in `allow_paths` (docs/security.md)."""
    functions = dict(functions or {})
    schemas = {k: schema_of(v) for k, v in (schemas or {}).items()}
    fe = _build(source, filename, Path(base_dir) if base_dir else None, functions, schemas, _allow_paths(allow_paths))
    return Program(
        fe,
        functions,
        device,
        batch_size=batch_size,
        trace_file=trace_file,
        schemas=schemas,
        cache=cache,
        threads=threads,
        dtype=dtype,
        device_map=device_map,
        parallel=parallel,
    )


def compile_file(
    path: str | Path,
    *,
    functions: dict | None = None,
    device: str = "auto",
    schemas: dict | None = None,
    batch_size: int = 32,
    trace_file: str | Path | None = None,
    allow_paths=None,
    cache: bool | None = None,
    threads: int | None = None,
    dtype: str | dict = "auto",
    device_map: str | dict | None = None,
    parallel: bool = True,
) -> Program:
    """Compile a .lm file (see `compile`); its references reach only its
    own folder's tree and the folders in `allow_paths`."""
    from .frontend import build_file

    functions = dict(functions or {})
    schemas = {k: schema_of(v) for k, v in (schemas or {}).items()}
    return Program(
        build_file(path, frozenset(functions), schemas=schemas, allow_paths=_allow_paths(allow_paths)),
        functions,
        device,
        batch_size=batch_size,
        trace_file=trace_file,
        schemas=schemas,
        cache=cache,
        threads=threads,
        dtype=dtype,
        device_map=device_map,
        parallel=parallel,
    )
