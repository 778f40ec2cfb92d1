"""Logit fusion: several models that share a tokenizer decode as one.

At every step each member's next-token log-probabilities are combined:
linear mode sums weight_i * log p_i (ensembles, and proxy tuning with
negative weights: big + expert - anti_expert); contrastive mode ranks the
tokens the positive members find plausible (p >= plausibility * max p, on
their weighted mixture) above all others and scores them by the weighted
sum, so an amateur's preferences are subtracted only among sensible tokens. Constraints then mask
the fused distribution like any other model's.
"""

from __future__ import annotations

import math

import torch

from ..errors import LmlangRuntimeError
from ..models.options import fuse_default
from .lm import LM, Batch

NEG_INF = float("-inf")
IMPLAUSIBLE = 1.0e4


def combine(logits: list[torch.Tensor], weights: list[float], mode: str, plausibility: float = 0.1) -> torch.Tensor:
    """Fused scores over the shared vocabulary (last dim truncated to the
    narrowest member: padded vocab rows are never real tokens)."""
    width = min(x.shape[-1] for x in logits)
    logps = [torch.log_softmax(x[..., :width].float(), dim=-1) for x in logits]
    fused = sum(w * lp for w, lp in zip(weights, logps))
    assert isinstance(fused, torch.Tensor)  # a fused model has members: never sum()'s start 0
    if mode == "contrastive":
        pos = [(w, lp) for w, lp in zip(weights, logps) if w > 0]
        total = sum(w for w, _ in pos)
        expert = torch.logsumexp(torch.stack([lp + math.log(w / total) for w, lp in pos]), dim=0)
        cutoff = expert.max(dim=-1, keepdim=True).values + math.log(plausibility)
        # Implausible tokens drop below every plausible one, but stay finite:
        # when a constraint allows only implausible tokens (the closing "."
        # after a number), decoding goes on by the fused ranking among them.
        fused = torch.where(expert >= cutoff, fused, fused - IMPLAUSIBLE)
    return fused


class FusedLM(LM):
    def __init__(
        self, members: list[tuple[LM, float]], mode: str = "linear", options: dict | None = None, name: str = "fuse"
    ):
        first = members[0][0]
        for lm, _ in members[1:]:
            if lm.tok_info.hash != first.tok_info.hash:
                raise LmlangRuntimeError(
                    f"fuse: {lm.name} and {first.name} use different tokenizers",
                    hint="fusion combines next-token distributions; members must share one vocabulary",
                )
        super().__init__()
        self.members = members
        self.mode = mode
        self.plausibility = float((options or {}).get("plausibility", fuse_default("plausibility")))
        self.tokenizer, self.tok_info, self.device = first.tokenizer, first.tok_info, first.device
        self.name = name
        self._eos_ids = first.eos_ids
        self.vocab_size = min(lm.vocab_size for lm, _ in members)

    def new_batch(self, rows: int) -> "FusedBatch":
        return FusedBatch(self, [lm.new_batch(rows) for lm, _ in self.members])


class FusedBatch(Batch):
    def __init__(self, lm: FusedLM, parts: list[Batch]):
        self.lm, self.parts = lm, parts
        self.rows = parts[0].rows
        self._logits: torch.Tensor | None = None

    def _combine(self, outs: list[torch.Tensor]) -> torch.Tensor:
        return combine(outs, [w for _, w in self.lm.members], self.lm.mode, self.lm.plausibility)

    def feed(self, blocks, all_logits: bool = False):
        outs = [p.feed(blocks, all_logits=all_logits) for p in self.parts]
        if all_logits:
            self._logits = self._combine([p.logits for p in self.parts])
            return self._combine(outs)
        self._logits = self._combine(outs)
        return self._logits

    @property
    def logits(self):
        return self._logits

    @property
    def ids(self):
        return self.parts[0].ids

    @property
    def forward_passes(self) -> int:
        return sum(p.forward_passes for p in self.parts)

    def drop_last(self, row: int, n: int) -> None:
        for p in self.parts:
            p.drop_last(row, n)

    def select(self, indices: list[int]) -> None:
        for p in self.parts:
            p.select(indices)
        self.rows = len(indices)
        if self._logits is not None:
            self._logits = self._logits[torch.tensor(indices, dtype=torch.long)]

    def fork(self) -> "FusedBatch":
        other = FusedBatch(self.lm, [p.fork() for p in self.parts])
        other._logits = None if self._logits is None else self._logits.clone()
        return other

    def crop(self, length: int) -> None:
        for p in self.parts:
            p.crop(length)
        self._logits = None
