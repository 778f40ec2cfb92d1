"""Data runs on Ray: `lmlang run SCRIPT --data ROWS --out OUT --ray [ADDRESS]`.

The driver reads the rows, skips those already in the output (--resume),
records unreadable ones itself, and sends the rest in chunks of --batch-size
rows to Ray actors. Each actor compiles the script once and holds its
program (models load once per actor, at its first call that the result
cache cannot answer) and runs a chunk exactly like a local run does. Only
the driver writes the output, one line per row as each chunk comes back, so
the output keeps the local contract (datarun.py): each row exactly once,
with its row number; failed rows recorded; a driver killed even with
SIGKILL leaves whole lines plus at most one torn last line, which --resume
drops. An actor that dies (SIGKILL, out of memory, a lost node) loses only
the chunks it had not returned: they go back to the queue and a fresh actor
takes its place, so no row is lost and none is written twice. A chunk whose
actors die three times is recorded as failed rows (WorkerLost) instead of
killing actors forever.

Actors ask Ray for what the program's models need: `num_cpus` = torch
threads per actor (--threads, default 1: several one-thread actors beat one
many-thread process on CPU), `num_gpus` = 1 when the models run on CUDA (the
device is cuda, or auto on a cluster with GPUs), and `memory` = the size of
the model folders plus a margin, so Ray never packs more actors onto a node
than it can hold. How many actors: as many as the cluster's resources allow
(at most one per chunk), or `actors=N`. A program whose models are served
(an OpenAI-compatible server) needs no local weights: its actors only send
requests, and the memory estimate counts local model folders only.

Ray is an optional dependency: `pip install 'lmlang[ray]'`.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable

from .datarun import DataRow, DataRunSummary, row_record
from .errors import LmlangRuntimeError

CHUNKS_PER_ACTOR = 2  # in flight per actor: the next chunk is queued while one returns
MAX_ATTEMPTS = 3  # actor deaths a chunk survives before its rows are recorded as failed
MEMORY_MARGIN = 1.3  # weights in memory vs on disk (activations, KV caches, torch itself)


class WorkerLost(LmlangRuntimeError):
    """The actors running a chunk died MAX_ATTEMPTS times."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise LmlangRuntimeError("--ray needs Ray", hint="pip install 'lmlang[ray]'") from None
    return ray


def connect(address: str | None = None, num_cpus: int | None = None):
    """ray.init once: to ADDRESS (or RAY_ADDRESS), else a local cluster."""
    ray = import_ray()
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        elif num_cpus:
            kwargs["num_cpus"] = num_cpus
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise LmlangRuntimeError(
                f"cannot reach the Ray cluster{' at ' + address if address else ''}: {e}",
                hint="start one with `ray start --head`, or leave ADDRESS out for a local one",
            ) from None
    return ray


# ---------------------------------------------------------------- what an actor holds


class ProgramSpec:
    """Everything an actor needs to build the driver's program: the script's
    text and where it lives, the registered functions and the settings."""

    def __init__(self, program, threads: int):
        fe = program.frontend
        self.source = fe.source.text
        self.filename = fe.source.filename
        self.base_dir = str(fe.checked.base_dir) if fe.checked.base_dir else None
        self.functions = dict(program.functions)
        self.schemas = dict(program.schemas)
        self.settings = {
            "device": program.device,
            "batch_size": program.batch_size,
            "cache": program.cache,
            "threads": threads,
            "dtype": program.dtype,
            "device_map": program.device_map,
            "parallel": program.parallel,
        }
        self.seed = program.seed

    def build(self):
        from .program import compile as compile_source

        prog = compile_source(
            self.source,
            self.filename,
            functions=self.functions,
            base_dir=self.base_dir,
            schemas=self.schemas,
            **self.settings,
        )
        if self.seed is not None:
            prog.set_seed(self.seed)
        return prog


class Worker:
    """A Ray actor (made remote in RayDataRun): one program, many chunks."""

    def __init__(self, spec: ProgramSpec):
        self.program = spec.build()
        self.program.prepare_models()

    def pid(self) -> int:
        return os.getpid()

    def run_chunk(self, rows: list[tuple[int, dict]]) -> tuple[list[dict], list[dict]]:
        """(one output record per row, in completion order; the chunk's trace records)."""
        records: list[dict] = []
        inputs = {i: values for i, values in rows}
        before = len(self.program.trace.records)

        def on_done(outcome):
            records.append(row_record(outcome.index, inputs[outcome.index], outcome.values, outcome.error))

        self.program.run_each([values for _, values in rows], on_done, ids=[i for i, _ in rows], chunk_size=len(rows))
        traces = [r.to_dict() for r in self.program.trace.records[before:]]
        del self.program.trace.records[before:]  # the driver keeps the trace, not every actor
        return records, traces


# ---------------------------------------------------------------- resources


def model_bytes(program) -> int:
    """Bytes of the local model folders the program loads (served models: none)."""
    from .graph import ModelSpec
    from .models.loader import resolve_model

    total = 0
    seen = set()
    for spec in program.frontend.compiled.nodes.values():
        if isinstance(spec, ModelSpec):
            folder = resolve_model(spec.source)
            if folder in seen:
                continue
            seen.add(folder)
            total += sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
    return total


def actor_options(program, threads: int, cluster: dict) -> dict:
    """Ray resources for one actor (see the module docstring)."""
    device = str(program.device)
    gpus = cluster.get("GPU", 0)
    wants_gpu = device.startswith("cuda") or (device == "auto" and gpus >= 1) or bool(program.device_map)
    options = {"num_cpus": threads, "num_gpus": 1 if wants_gpu else 0}
    need = int(model_bytes(program) * MEMORY_MARGIN)
    if need and not wants_gpu:
        options["memory"] = need
    return options


def actor_count(options: dict, cluster: dict, chunks: int | None, requested: int | None) -> int:
    if requested:
        return requested
    fits = [int(cluster.get("CPU", 0) // max(options["num_cpus"], 1e-9))]
    if options.get("num_gpus"):
        fits.append(int(cluster.get("GPU", 0) // options["num_gpus"]))
    if options.get("memory"):
        fits.append(int(cluster.get("memory", 0) // options["memory"]))
    n = min(fits)
    if n < 1:
        need = ", ".join(f"{k}={v}" for k, v in options.items())
        have = ", ".join(f"{k}={cluster.get(k, 0)}" for k in ("CPU", "GPU", "memory"))
        raise LmlangRuntimeError(
            f"the Ray cluster cannot hold one actor of this program (needs {need}; has {have})",
            hint="give it more resources, or fewer --threads",
        )
    return max(1, min(n, chunks)) if chunks else n


# ---------------------------------------------------------------- the run


class RayDataRun:
    """One distributed data run. `actors` holds the live actor handles."""

    def __init__(self, program, *, address: str | None = None, actors: int | None = None, threads: int | None = None):
        self.program = program
        self.ray = connect(address)
        self.threads = threads or 1
        self.requested = actors
        self.actors: list = []
        self.replaced = 0  # actors that died and were replaced

    def _new_actor(self, options: dict):
        remote = self.ray.remote(Worker).options(**options)
        return remote.remote(self._spec)

    def run(
        self,
        rows: Iterable[DataRow],
        write: Callable[[dict], None],
        *,
        done: set | None = None,
        limit: int | None = None,
        chunk_size: int = 32,
        on_progress: Callable[[int, int], None] | None = None,
        total_hint: int | None = None,
    ) -> DataRunSummary:
        from ray.exceptions import RayActorError

        from .runtime.trace import QueryTrace

        ray = self.ray
        summary = DataRunSummary()
        record = lambda rec: self._record(summary, write, on_progress, rec)  # noqa: E731
        source = self._chunks(rows, done or set(), limit, chunk_size, set(self.program.inputs), summary, record)
        self._spec = ProgramSpec(self.program, self.threads)
        cluster = ray.cluster_resources()
        options = actor_options(self.program, self.threads, cluster)
        most = actor_count(options, cluster, None, self.requested)
        queue = deque((chunk, 1) for chunk in _take(source, most * CHUNKS_PER_ACTOR))
        if not queue:
            return summary
        n = min(most, len(queue))  # a short run starts no idle actors
        self.actors = [self._new_actor(options) for _ in range(n)]
        in_flight: dict = {}  # ObjectRef -> (actor slot, chunk, attempt)
        load = [0] * n
        try:
            while queue or in_flight:
                for slot in sorted(range(n), key=lambda s: load[s]):
                    while load[slot] < CHUNKS_PER_ACTOR:
                        if not queue:
                            queue.extend((chunk, 1) for chunk in _take(source, 1))
                            if not queue:
                                break
                        chunk, attempt = queue.popleft()
                        in_flight[self.actors[slot].run_chunk.remote(chunk)] = (slot, chunk, attempt)
                        load[slot] += 1
                (ref,), _ = ray.wait(list(in_flight), num_returns=1)
                slot, chunk, attempt = in_flight.pop(ref)
                load[slot] -= 1
                try:
                    records, traces = ray.get(ref)
                except RayActorError as e:
                    self._replace(slot, options, in_flight, queue, load)
                    if attempt < MAX_ATTEMPTS:
                        queue.appendleft((chunk, attempt + 1))
                        continue
                    err = WorkerLost(
                        f"the Ray actors running this row died {attempt} times ({type(e).__name__})",
                        hint="a row that kills its worker (out of memory?) every time",
                    )
                    for index, values in chunk:
                        record(row_record(index, values, error=err))
                    continue
                for rec in records:
                    record(rec)
                for t in traces:
                    self.program.trace.add(QueryTrace(**t))
        finally:
            for actor in self.actors:
                ray.kill(actor)
        return summary

    def _replace(self, slot: int, options: dict, in_flight: dict, queue: deque, load: list) -> None:
        """A dead actor's other chunks go back to the queue; a fresh actor takes the slot."""
        for ref in [r for r, (s, _, _) in in_flight.items() if s == slot]:
            _, chunk, attempt = in_flight.pop(ref)
            queue.appendleft((chunk, attempt))
        load[slot] = 0
        try:
            self.ray.kill(self.actors[slot])
        except Exception:  # already gone
            pass
        self.actors[slot] = self._new_actor(options)
        self.replaced += 1

    @staticmethod
    def _record(summary: DataRunSummary, write, on_progress, rec: dict) -> None:
        write(rec)
        error = rec.get("error")
        if error is None:
            summary.ok += 1
        else:
            summary.failed += 1
            summary.worst_exit = max(summary.worst_exit, int(error.get("exit_code", 1)))
        if on_progress:
            on_progress(summary.ok + summary.failed, summary.total - summary.skipped)

    @staticmethod
    def _chunks(rows, done, limit, chunk_size, inputs, summary, record):
        """The rows to send, in chunks of (row number, inputs), read as they
        are needed; unreadable rows are recorded here."""
        chunk = []
        for row in rows:
            if limit is not None and row.index >= limit:
                break
            summary.total += 1
            if row.index in done:
                summary.skipped += 1
                continue
            if row.error is not None:
                record(row_record(row.index, None, error=row.error))
                continue
            summary.ignored_columns.update(k for k in row.values if k not in inputs)
            chunk.append((row.index, {k: v for k, v in row.values.items() if k in inputs}))
            if len(chunk) >= chunk_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def _take(it, n: int) -> list:
    out = []
    for x in it:
        out.append(x)
        if len(out) >= n:
            break
    return out


def run_data_ray(
    program,
    rows: Iterable[DataRow],
    write: Callable[[dict], None],
    *,
    address: str | None = None,
    actors: int | None = None,
    threads: int | None = None,
    **options,
) -> DataRunSummary:
    """datarun.run_data's contract, over Ray actors (see the module docstring)."""
    return RayDataRun(program, address=address, actors=actors, threads=threads).run(rows, write, **options)
