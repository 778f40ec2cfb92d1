"""The local engine: today's decoding loop (runtime/decode.py) over an `LM`
and its `Batch` in this process, rows in batches of the executor's
`batch_size`. Logit fusion, beam search, token masks and adapter hooks live
behind it (lm.py, fusion.py, constraints/hole.py)."""
from __future__ import annotations

from .base import Engine, RowsJob


class LocalEngine(Engine):
    name = "local"

    def __init__(self, executor, nid: str):
        self.executor = executor
        self.nid = nid

    def run_rows(self, job: RowsJob) -> None:
        ex = self.executor
        lm = ex.lm(self.nid)
        for start in range(0, len(job.rows), ex.batch_size):
            group = job.rows[start:start + ex.batch_size]
            ex._decode_group(job.spec, lm, group, job.envs, job.results, job.row_ids, job.expert, job.on_token)
