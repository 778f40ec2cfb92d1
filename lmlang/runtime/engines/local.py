"""The local engine: the decoding loop (runtime/decode.py) over an `LM` and
its `Batch` in this process. Logit fusion, beam search, token masks and
adapter hooks live behind it (lm.py, fusion.py, constraints/hole.py).

The executor hands local calls straight to `dispatch.decode_jobs`, which also
shares batches across queries and adapter stacks; this class puts the same
path behind the Engine interface for callers that hold one query's rows."""

from __future__ import annotations

from .base import Engine, RowsJob


class LocalEngine(Engine):
    name = "local"

    def __init__(self, executor, nid: str):
        self.executor = executor
        self.nid = nid

    def run_rows(self, job: RowsJob) -> None:
        from ..dispatch import Job, decode_jobs

        ex = self.executor
        on_token = job.on_token
        jobs = []
        for i in job.rows:
            stream = (lambda h, t, i=i: on_token(i, h, t)) if on_token else None
            row = job.row_ids[i] if job.row_ids else None
            jobs.append(Job(i, job.spec, job.envs[i], self.nid, row, job.seed, expert=job.expert, stream=stream))
        decode_jobs(ex, jobs, ex.strategy)
        for j in jobs:
            job.results[j.index] = j.result
