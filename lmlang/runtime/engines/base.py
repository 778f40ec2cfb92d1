"""The engine interface: what runs one query's rows on one model node.

    class Engine:
        name: str                               "local" | "served" | ...
        run_rows(job: RowsJob) -> None          fill job.results[i] for every i in job.rows:
                                                a dict of hole values (plus `distribution` /
                                                `expert`) or the LmlangError of that row; other
                                                rows go on. Add one QueryTrace per row to
                                                job.trace; stream values through job.on_token.

The executor builds one RowsJob per (query, expert) with every row that waits
on it and hands it to the engine of the expert's model node
(`Executor.engine_for`). How rows are batched (the local engine: decoding
batches of `batch_size` over one KV cache) or kept in flight (the served
engine: asynchronous requests, bounded by the model's `concurrency`) is the
engine's business. Meaning is not: every engine renders the same prompt,
enforces the same constraints, returns the same typed values and, for greedy
decoding, the same tokens up to the numerics of the hardware; what an
engine cannot do the same way is refused at check time
(lmlang/checker/served.py reads the features in lmlang.models.sources).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from ...graph.specs import QuerySpec
    from ..trace import Trace


@dataclass
class RowsJob:
    spec: QuerySpec
    rows: list[int]  # indices into envs and results
    envs: dict  # index -> the query's arguments by parameter name
    results: list  # index -> result dict | LmlangError (filled by the engine)
    row_ids: list | None = None  # index -> the data row number (trace), or None
    expert: str | None = None  # the routed expert's name (the `expert` result field)
    on_token: Callable | None = None  # on_token(index, hole, text) as values grow
    seed: int | None = None  # overrides the sampling decoders' seed (lmlang run --seed)
    trace: Trace | None = None  # the Trace to add records to


class Engine(ABC):
    name = "engine"

    @abstractmethod
    def run_rows(self, job: RowsJob) -> None:
        """Run job.spec for every row in job.rows; see the module docstring."""
