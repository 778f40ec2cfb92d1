"""A Twin-Merging model as the decoding loop sees it: the core model whose
row i runs W_core + sum_j w_ij * E_j (merge/twin.py), w from the router.

The router reads each row's text when the row's first chunk is fed (the
prompt up to its first hole, as the model sees it: chat template included),
so rows routed differently still decode in ONE batch through the adapter
host's row-indexed deltas (runtime/pool.py RowMixedBatch). Prefix reuse is
off: a prefix computed under one row's weights is not another row's.
`last_weights` keeps the weights of the latest batch for the trace and tests.
"""

from __future__ import annotations

from pathlib import Path

from .pool import RowMixedBatch, RowMixedLM


class TwinLM(RowMixedLM):
    """RowMixedLM over the core whose rows' stacks come from the router."""

    def __init__(self, core_lm, host, twin, router, name: str = "twin"):
        super().__init__(core_lm, host, [], name=name)
        self.twin, self.router = twin, router
        self.last_weights = None  # [rows, experts] of the latest routed batch
        twin.attach(host)

    def new_batch(self, rows: int) -> "TwinBatch":
        return TwinBatch(self, self.base.new_batch(rows), [])


class TwinBatch(RowMixedBatch):
    """A RowMixedBatch whose stacks are chosen from the rows' first chunk
    (no stacks yet: not routed)."""

    lm: TwinLM

    def feed(self, blocks, all_logits: bool = False):
        if not self.stacks:
            texts = [self.lm.decode(list(b)) for b in blocks]
            weights = self.lm.router.weights(texts)
            self.lm.last_weights = weights
            self.stacks = self.lm.twin.stacks(weights)
        return super().feed(blocks, all_logits=all_logits)

    def select(self, indices: list[int]) -> None:
        self.inner.select(indices)
        if self.stacks:
            self.stacks = [self.stacks[i] for i in indices]

    def fork(self) -> "TwinBatch":
        return TwinBatch(self.lm, self.inner.fork(), list(self.stacks))


def twin_lm(executor, value, name: str) -> TwinLM:
    """The LM of a built `Twin` value: the core loaded once, its adapter
    host holding the exclusive parts, the router over the experts' examples."""
    from ..merge.twin import TwinRouter
    from ..models.adapters import AdapterHost

    core = Path(value.model.core)
    loaded = executor._load(core)
    host = AdapterHost.for_model(loaded)
    core_lm = executor._base_lm(loaded, core)
    opts = dict(value.options)
    router = TwinRouter(
        value.examples,
        encoder=opts.get("encoder", "minilm"),
        base_lm=core_lm,
        temperature=float(opts.get("temperature", 0.05)),
        top_k=opts.get("top_k"),
    )
    return TwinLM(core_lm, host, value.model, router, name=name)
