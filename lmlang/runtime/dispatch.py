"""Decoding a set of query calls: which share one batch, which run side by side.

The scheduler hands over every call that waits, of every row and every
independent step. They decode in *units*: one batch over one KV cache.

* Calls of argmax or sample queries on one loaded model share units, chunked
  by the batch size: one query over many rows, and different queries too
  (each row keeps its own prompt, constraints and sampler), when
  `Strategy.queries` is "shared".
* Calls on different adapter stacks over one base (routed rows, experts,
  `base + a` next to `base + b`) share units too when `Strategy.adapters` is
  "mixed": each stack prefills its own rows (its header shared, its prefix
  cache used), the parts merge into one batch, and every step is one
  forward with row-indexed adapter deltas (AdapterHost.activate_rows);
  "grouped" (the default: faster on a CPU, see docs/cli.md) decodes one
  unit per stack.
* best_of, vote, beam and distribution queries, and fusions, decode per
  query and model as before (they fan a row out into several themselves).
* Units on different base models form lanes. `Strategy.models` runs lanes
  one after another ("sequential") or on threads ("concurrent"); "auto"
  runs them concurrently only when a lane's model computes elsewhere (a
  served model, `LM.remote`), since local lanes share the same cores.

The defaults are the faster choice measured by bench/scale.py (docs/cli.md,
"Parallel steps", has the figures). A unit that fails is retried one call at
a time, so one bad call never fails the others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import LmlangError
from ..graph import QuerySpec
from .samples import sample_count
from .trace import QueryTrace

SAMPLING = ("sample", "best_of", "vote")
SHARED_DECODERS = ("argmax", "sample")
# How a shared unit decodes (batch_rule; the trace's `batch`, docs/cli.md "Parallel steps").
ONE_BATCH = "one batch"
CALL_BY_CALL = "call by call: every prompt cached"


@dataclass
class Strategy:
    queries: str = "shared"  # shared | separate
    adapters: str = "grouped"  # grouped | mixed (measured slower on a CPU: 0.73 and 0.83 of grouped)
    models: str = "auto"  # auto | concurrent | sequential


@dataclass
class Job:
    """One query call to decode."""

    index: int  # position in the dispatched list
    spec: QuerySpec
    env: dict  # bound arguments
    lm_nid: str  # the model node that decodes it (a routed call: its expert)
    row: int | None = None
    seed: int | None = None  # this call's sampling seed (None: the decoder does not sample)
    expert: str | None = None  # a routed call's expert name
    mix: tuple | None = None  # a pool-routed call's adapters ((member, weight), ...)
    mix_router: str | None = None  # ... and the pool router's node id
    stream: Callable | None = None  # stream(hole, text)
    key: str | None = None  # its result cache key
    lm: Any = None  # the LM that decodes it (runtime.lm.LM; set before decoding)
    result: object = None  # dict of values, or the LmlangError
    texts: dict = field(default_factory=dict)
    prompt: str = ""


def decode_jobs(execu, jobs: list[Job], strategy: Strategy) -> None:
    """Decode every job, setting job.result (values or an LmlangError).
    Calls on served models go to their engine (runtime/engines), the rest
    decode here in local batches."""
    served: dict = {}
    local = []
    for job in jobs:
        if execu.is_served(job.lm_nid):
            served.setdefault((job.lm_nid, job.spec.name, job.expert, job.seed), []).append(job)
        else:
            local.append(job)
    for group in served.values():
        run_served(execu, group)
    ready = []
    for job in local:
        try:
            job.lm = execu.lm(job.lm_nid) if job.mix is None else execu.pool_lm(job.mix_router, job.mix)
            ready.append(job)
        except LmlangError as e:
            job.result = e
    lanes = plan(ready, strategy, execu.batch_size, execu.mixed_lm)
    concurrent = strategy.models == "concurrent" or (
        strategy.models == "auto" and any(getattr(u[0], "remote", False) for lane in lanes for u in lane)
    )
    if concurrent and len(lanes) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(lanes), thread_name_prefix="lmlang-lane") as pool:
            for f in [pool.submit(_run_lane, execu, lane) for lane in lanes]:
                f.result()
    else:
        for lane in lanes:
            _run_lane(execu, lane)


def run_served(execu, jobs: list[Job]) -> None:
    """Calls of one query on one served model node (same expert, same seed)
    as one RowsJob for its engine, which keeps many requests in flight."""
    from ..errors import LmlangRuntimeError
    from .engines import RowsJob

    results: list = [None] * len(jobs)
    streams = [j.stream for j in jobs]
    on_token = (lambda i, h, t: (s := streams[i]) and s(h, t)) if any(streams) else None
    rows = RowsJob(
        jobs[0].spec,
        list(range(len(jobs))),
        {k: j.env for k, j in enumerate(jobs)},
        results,
        [j.row for j in jobs],
        jobs[0].expert,
        on_token,
        jobs[0].seed if jobs[0].seed is not None else execu.seed,
        execu.trace,
    )
    try:
        execu.engine_for(jobs[0].lm_nid).run_rows(rows)
    except LmlangError as e:
        results = [r if r is not None else e for r in results]
    for job, result in zip(jobs, results):
        job.result = (
            result
            if result is not None
            else LmlangRuntimeError(f"query {job.spec.name}: the served engine returned no result for this call")
        )


def plan(jobs: list[Job], strategy: Strategy, batch_size: int, mixed_lm) -> list[list[tuple]]:
    """Lanes (one per base model) of units (lm, jobs, shared?)."""
    lanes: dict = {}
    for job in jobs:
        loaded = getattr(job.lm, "loaded", None)
        shared = (
            job.spec.decoder[0] in SHARED_DECODERS
            and sample_count(job.spec.decoder) == 1  # sample(n: k > 1) draws k rows per call: solo
            and job.spec.distribution is None
            and loaded is not None
        )
        base = id(loaded) if loaded is not None else id(job.lm)
        key: tuple = ("shared",) if shared else ("solo", job.spec.name, id(job.lm))
        if shared and strategy.queries == "separate":
            key = ("shared", job.spec.name)
        lanes.setdefault(base, {}).setdefault(key, []).append(job)
    out = []
    for groups in lanes.values():
        units = []
        for key, group in groups.items():
            if key[0] == "solo":
                units += [(group[0].lm, group[i : i + batch_size], False) for i in range(0, len(group), batch_size)]
            else:
                units += _shared_units(group, strategy, batch_size, mixed_lm)
        out.append(units)
    return out


def _shared_units(group: list[Job], strategy: Strategy, batch_size: int, mixed_lm) -> list[tuple]:
    by_lm: dict = {}
    for job in group:
        by_lm.setdefault(id(job.lm), []).append(job)
    if strategy.adapters == "grouped" or len(by_lm) == 1:
        return [
            (jobs[0].lm, jobs[i : i + batch_size], True)
            for jobs in by_lm.values()
            for i in range(0, len(jobs), batch_size)
        ]
    ordered = [j for jobs in by_lm.values() for j in jobs]
    units = []
    for i in range(0, len(ordered), batch_size):
        chunk = ordered[i : i + batch_size]
        lms = {id(j.lm): j.lm for j in chunk}
        units.append((chunk[0].lm if len(lms) == 1 else mixed_lm([j.lm for j in chunk]), chunk, True))
    return units


def _run_lane(execu, units: list[tuple]) -> None:
    for lm, jobs, shared in units:
        if shared:
            decode_shared(execu, lm, jobs)
        else:
            decode_solo(execu, lm, jobs)


def prepare_runs(lm, jobs: list[Job], functions: dict | None = None) -> tuple[list, list[Job]]:
    """Each job's prompt rendered and tokenized for lm, as a QueryRun; a job
    whose prompt fails (or cannot fit the model's window: refused before
    tokenizing and again before any forward pass) gets its error instead.
    A grown prompt (control flow, tool calls) becomes a GrownRun instead;
    `functions` are the registered Python functions its tool calls may run."""
    from ..constraints import runtime_lists
    from .decode import QueryRun
    from .prompt import render
    from .prompt_flow import is_grown
    from .window import refuse_overlong

    runs, ok = [], []
    for job in jobs:
        spec = job.spec
        try:
            if is_grown(spec.segments):
                runs.append(_grown_run(lm, job, functions or {}))
                ok.append(job)
                continue
            prompt = render(spec.segments, job.env, lm.tokenizer, spec.chat, spec.loc)
            refuse_overlong(lm, spec.name, prompt.chunks, loc=spec.loc)
            # run-time lists (`in NAME`) take this call's argument (issue #15)
            constraints = runtime_lists.resolve(dict(spec.constraints), job.env)
            run = QueryRun(lm, prompt, constraints, spec.name, spec.loc, _leak_guard(lm, spec, job.env))
            refuse_overlong(lm, spec.name, prompt.chunks, run.chunk_ids, loc=spec.loc)
            runs.append(run)
            ok.append(job)
        except LmlangError as e:
            job.result = e
    return runs, ok


def _leak_guard(lm, spec, env: dict):
    """This call's leak guard (`guard leak(...)` on the query), or None."""
    if spec.guard is None:
        return None
    from .leak_guard import LeakGuard, system_text

    return LeakGuard.for_call(spec.guard, system_text(spec.segments, env, spec.loc), lm.tok_info)


def _grown_run(lm, job: Job, functions: dict):
    """A grown prompt's run: its walk starts here (tool calls before the
    first hole run now); the first chunk is held to the model's window."""
    from ..constraints import runtime_lists
    from .flow import Interpreter
    from .grown import GrownRun
    from .prompt_flow import Growth, render_grown
    from .window import refuse_overlong

    spec = job.spec
    parts = render_grown(spec.segments, lm.tokenizer, spec.chat)
    growth = Growth(parts, job.env, Interpreter(functions, set()), functions, spec.name, spec.loc)
    # run-time lists (`in NAME`) take this call's argument, as in a fixed prompt
    constraints = runtime_lists.resolve(dict(spec.constraints), job.env)
    run = GrownRun(lm, growth, constraints, spec.name, spec.loc)
    refuse_overlong(lm, spec.name, (), run.chunk_ids, loc=spec.loc)
    return run


def decode_shared(execu, lm, jobs: list[Job]) -> None:
    """argmax / sample calls (any queries) over one batch, each row with its
    own sampler; or call by call where `batch_rule` says so."""
    t0 = time.perf_counter()
    runs, ok = prepare_runs(lm, jobs, execu.functions)
    if not runs:
        return
    rule = batch_rule(lm, runs)
    if rule == CALL_BY_CALL:
        for job, run in zip(ok, runs):
            _decode_batch(execu, lm, [job], [run], time.perf_counter(), rule)
        return
    _decode_batch(execu, lm, ok, runs, t0, rule)


SHORT_HOLE_TOKENS = 4  # a hole that decodes at most this many tokens shares too few steps to batch


def batch_rule(lm, runs: list) -> str:
    """One batch, unless the model's prefix cache holds every call's whole
    prompt (a row repeated with the result cache off) and every hole is
    short (a choice among options, or a budget of a few tokens): then
    nothing is left to prefill, a batch could share only a step or two, and
    its merged cache entries, padding and copies cost more than that saves
    (measured on bench/scale.py's one row: see docs/cli.md). Holes that
    write text share every decoding step in a batch, which wins even with
    the prompts cached (bench/scale.py parallel_steps_generate_speedup). A
    grown prompt or a model without prefix reuse (a mixed-adapter unit)
    always batches."""
    if len(runs) < 2 or not getattr(lm, "prefix_reuse", False):
        return ONE_BATCH
    from .decode import QueryRun

    cache = lm.prefix_cache
    cached = all(type(r) is QueryRun and cache.covered(r.chunk_ids[0]) == len(r.chunk_ids[0]) for r in runs)
    short = all(h.compiled.plan.options or h.budget <= SHORT_HOLE_TOKENS for r in runs for h in r.holes)
    return CALL_BY_CALL if cached and short else ONE_BATCH


def _decode_batch(execu, lm, ok: list[Job], runs: list, t0: float, rule: str) -> None:
    from .decode import decode_rows, sampler_for

    samplers = [sampler_for(j.spec.decoder, seed=j.seed) for j in ok]
    streams = [j.stream for j in ok]
    on_token = (lambda r, h, t: (s := streams[r]) and s(h, t)) if any(streams) else None
    try:
        decoded = decode_rows(lm, runs, samplers, batch=_mixed_prefill(lm, ok, runs), on_token=on_token)
    except LmlangError as e:
        _isolate(execu, ok, e, decode_shared)
        return
    wall = (time.perf_counter() - t0) / len(runs)
    batch = {"calls": len(runs), "rule": rule}
    for job, run, d in zip(ok, runs, decoded):
        finish(execu, job, run.prompt.display(), d, wall, batch)


def _mixed_prefill(lm, jobs: list[Job], runs: list):
    """A mixed-adapter unit (rows over several adapter stacks of one base):
    each stack prefills its own rows with its own model, so they share their
    header and reuse that stack's prefix cache as a grouped unit would; the
    parts are merged into one batch of the mixed model, which then decodes
    every row in one forward per step. None for any other unit (decode_rows
    prefills it)."""
    from .lm import HFBatch
    from .prefix import prefill

    by_lm: dict = {}
    for i, job in enumerate(jobs):
        by_lm.setdefault(id(job.lm), (job.lm, []))[1].append(i)
    if len(by_lm) < 2 or any(other is lm for other, _ in by_lm.values()) or not hasattr(lm, "with_hook"):
        return None
    order = [i for _, rows in by_lm.values() for i in rows]
    parts = [prefill(other, [runs[i].chunk_ids[0] for i in rows]) for other, rows in by_lm.values()]
    try:
        batch = HFBatch.merged(lm, parts)
    except TypeError:  # a cache that does not merge (not plain keys and values): prefill on the mixed model
        return None
    where = {i: k for k, i in enumerate(order)}
    batch.select([where[i] for i in range(len(jobs))])
    return batch


def decode_solo(execu, lm, jobs: list[Job]) -> None:
    """best_of / vote / beam / distribution calls of one query, and calls on fusions."""
    from .decode import run_decoder

    t0 = time.perf_counter()
    runs, ok = prepare_runs(lm, jobs, execu.functions)
    if not runs:
        return
    spec = ok[0].spec
    # fuse dynamic: its per-step weights go into the trace (argmax decodes all rows in one batch)
    dynamic = hasattr(lm, "weight_steps") and spec.decoder[0] == "argmax" and spec.distribution is None
    try:
        if spec.decoder[0] in SAMPLING:  # each call samples with its own seed
            decoded = []
            for job, run in zip(ok, runs):
                streams = (lambda r, h, t, s=job.stream: s(h, t)) if job.stream else None
                decoded += run_decoder(lm, [run], spec.decoder, spec.distribution, seed=job.seed, on_token=streams)
        else:
            stream = ok[0].stream if len(ok) == 1 else None
            decoded = run_decoder(
                lm, runs, spec.decoder, spec.distribution, on_token=(lambda r, h, t: stream(h, t)) if stream else None
            )
    except LmlangError as e:
        _isolate(execu, ok, e, decode_solo)
        return
    wall = (time.perf_counter() - t0) / len(runs)
    if dynamic and len(decoded) == len(ok):
        for d, summary in zip(decoded, dynamic_summaries(lm, len(ok))):
            d.details = {**d.details, "fuse_weights": summary}
    for job, run, d in zip(ok, runs, decoded):
        finish(execu, job, run.prompt.display(), d, wall)


def dynamic_summaries(lm, rows: int) -> list[dict]:
    """fuse dynamic: per row of the latest batch, its weights' mean over the
    decoding steps and the first and last step's weights, per member."""
    steps = [w for w in lm.weight_steps() if w.dim() == 2 and w.shape[0] == rows]
    names = [m.name for m, _ in lm.members[: lm.n_experts]]
    names = [f"{n} #{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]
    if not steps:
        return [{} for _ in range(rows)]
    out = []
    for r in range(rows):
        per = [w[r].tolist() for w in steps]
        mean = [sum(x[i] for x in per) / len(per) for i in range(len(names))]
        out.append(
            {
                "steps": len(per),
                "mean": dict(zip(names, (round(x, 4) for x in mean))),
                "first": dict(zip(names, (round(x, 4) for x in per[0]))),
                "last": dict(zip(names, (round(x, 4) for x in per[-1]))),
            }
        )
    return out


def _isolate(execu, jobs: list[Job], error: LmlangError, again) -> None:
    """A unit failed: one call alone gets the error; several retry one by one
    (each on its own model, not a mixed one) so the others still decode."""
    if len(jobs) == 1:
        jobs[0].result = error
        return
    for job in jobs:
        again(execu, job.lm, [job])


def finish(execu, job: Job, prompt: str, d, wall: float, batch: dict | None = None) -> None:
    out = dict(d.values)
    if d.distribution is not None:
        out["distribution"] = d.distribution
    if job.expert is not None:
        out["expert"] = job.expert
    out.update({k: v for k, v in d.details.items() if k != "fuse_weights"})  # vote: samples, votes; best_of: scores
    job.result, job.texts, job.prompt = out, dict(d.texts), prompt
    details = dict(d.details)
    if job.mix is not None:  # a pool-routed row: every adapter it mixed, with its weight
        details["adapters"] = {name: round(w, 6) for name, w in job.mix}
    holes = [vars(h) for h in d.holes]
    execu.trace.add(
        QueryTrace(
            query=job.spec.name,
            model=job.lm.name,
            prompt=prompt,
            values=dict(d.texts),
            holes=holes,
            forward_passes=d.forward_passes,
            tokens_generated=sum(h["generated"] for h in holes),
            tokens_forced=sum(h["forced"] for h in holes),
            wall_seconds=wall,
            decoder=job.spec.decoder[0],
            expert=job.expert,
            row=job.row,
            details=details,
            batch=dict(batch or {}),
        )
    )
