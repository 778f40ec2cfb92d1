"""Dynamic logit fusion: the fused models' weights are chosen again at every
decoding step, from the members' own next-token distributions.

Two forms, both a grid search per row and step (no training, exact and
deterministic, which is why a search and not a learned gate: a gate would
need training data per fused set, and the search has nothing to tune but a
grid step):

**anchored** (the seed paper: Fan et al. 2024, "On Giant's Shoulders:
Effortless Weak to Strong by Dynamic Logits Fusion", as we read it). Experts
E_i were tuned from an anchor A (e.g. `base + senti` and `base + math` from
`base`); a target T (the anchor itself, or a larger model sharing the
vocabulary) receives their shifts:

    log q_a = log_softmax( lp_T + sum_i a_i (lp_Ei - lp_A) )

with a chosen per step, on the grid {0, step, ..., max}^n, to minimise

    sum_i ( KL(q_a || p_T) - KL(p_Ei || p_A) )^2

i.e. the fused model moves away from the target by as much as each expert
moved away from its anchor: a step where an expert has nothing to add (its
distribution equals the anchor's) pulls the shift towards zero, and a step
where it differs strongly asks for a larger one.

**unanchored** (`fuse dynamic { a, b }`, no anchor): log q_w =
log_softmax(sum_i w_i lp_i) with w on the simplex grid (steps of 1/`grid`)
chosen to minimise sum_i KL(p_i || q_w): the fused distribution that best
covers every member (KL(p_i || q) is large where q misses a token p_i
finds likely). The weights act on log-probabilities, so a peaked member
needs a small weight to dominate the ranking (its log-probabilities span
many nats) while a flat one needs a large weight to matter at all: the
search finds the balance per step, which fixed weights cannot.

Candidate sets: the full grid when it has at most `max_candidates` points,
else a local search on the grid until no move improves (simplex: move
1/grid of weight from one member to another, from the most uniform point;
anchored: sweep one weight at a time over its values, from the middle):
exact on small sets, still cheap with 8+ experts.

Contract: `DynamicFusedLM(experts, anchor=None, target=None, options)` is an
LM (runtime/lm.py) like FusedLM, so constraints and decoders use it as any
model; `batch.last_weights` is the [rows, experts] weights of the latest
step (the trace can show them). `dynamic_weights(...)` is the per-step
choice on raw logits.

Proposed wiring: grammar `fuse dynamic { MODEL, ... }` with an optional
block `{ anchor: MODEL, target: MODEL, grid: INT, max: NUMBER }`; checker:
options.FUSE_MODES gains "dynamic" with grid (int >= 1, default 10), max
(number > 0, default 2.0) and the anchor/target members; graph: FuseSpec
with mode "dynamic"; runtime: where FusedLM is built for a fuse node,
mode "dynamic" builds DynamicFusedLM instead (one line in runtime/fusion.py
or the executor's model factory).
"""

from __future__ import annotations

import itertools
from typing import Sequence

import torch

from ..errors import LmlangRuntimeError
from .fusion import FusedBatch, FusedLM

DEFAULTS = {"grid": 10, "max": 2.0, "max_candidates": 4096}


def simplex_grid(n: int, steps: int) -> torch.Tensor:
    """[K, n] all weight vectors with entries in {0, 1/steps, ..., 1} summing to 1."""
    out = [[c / steps for c in combo] for combo in _compositions(steps, n)]
    return torch.tensor(out, dtype=torch.float32)


def _compositions(total: int, parts: int):
    if parts == 1:
        yield (total,)
        return
    for first in range(total, -1, -1):
        for rest in _compositions(total - first, parts - 1):
            yield (first, *rest)


def box_grid(n: int, steps: int, top: float) -> torch.Tensor:
    """[K, n] all vectors with entries in {0, top/steps, ..., top}."""
    values = [top * i / steps for i in range(steps + 1)]
    return torch.tensor(list(itertools.product(values, repeat=n)), dtype=torch.float32)


def _kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dim, from log-probabilities."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def _fused(cands: torch.Tensor, lps: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """[rows, K, V] log_softmax(offset + sum_i c_i lps_i) for candidates [K, n], lps [rows, n, V]."""
    mix = torch.einsum("kn,rnv->rkv", cands, lps)
    if offset is not None:
        mix = mix + offset[:, None, :]
    return torch.log_softmax(mix, dim=-1)


def _losses(cands, expert_lps, anchor_lp, target_lp, chunk: int = 32) -> torch.Tensor:
    """[rows, K] objective of each candidate (see the module docstring)."""
    out = []
    if anchor_lp is None:
        for c in cands.split(chunk):
            q = _fused(c, expert_lps, None)  # [r, k, V]
            out.append(_kl(expert_lps[:, None], q[:, :, None]).sum(-1))  # sum_i KL(p_i || q)
        return torch.cat(out, dim=1)
    shifts = expert_lps - anchor_lp[:, None]  # [r, n, V]
    wanted = _kl(expert_lps, anchor_lp[:, None])  # [r, n]: KL(p_Ei || p_A)
    for c in cands.split(chunk):
        q = _fused(c, shifts, target_lp)
        moved = _kl(q, target_lp[:, None])  # [r, k]: KL(q || p_T)
        out.append(((moved[:, :, None] - wanted[:, None, :]) ** 2).sum(-1))
    return torch.cat(out, dim=1)


def dynamic_weights(
    expert_logits: Sequence[torch.Tensor],
    anchor_logits: torch.Tensor | None = None,
    target_logits: torch.Tensor | None = None,
    *,
    grid: int = 10,
    max_weight: float = 2.0,
    max_candidates: int = 4096,
) -> torch.Tensor:
    """[rows, n] weights per row for logits [rows, V] (see the module docstring).
    Ties between candidates go to the first in grid order."""
    n = len(expert_logits)
    if n < 1:
        raise LmlangRuntimeError("fuse dynamic needs at least one model")
    if grid < 1:
        raise LmlangRuntimeError(f"fuse dynamic: grid must be at least 1, got {grid}")
    width = min(x.shape[-1] for x in [*expert_logits, *(t for t in (anchor_logits, target_logits) if t is not None)])
    lp = lambda x: torch.log_softmax(x[..., :width].float(), dim=-1)  # noqa: E731
    experts = torch.stack([lp(x) for x in expert_logits], dim=1)  # [r, n, V]
    anchor = None if anchor_logits is None else lp(anchor_logits)
    target = None if anchor is None else (anchor if target_logits is None else lp(target_logits))
    size = _grid_size(n, grid, anchor is None)
    if size <= max_candidates:
        cands = simplex_grid(n, grid) if anchor is None else box_grid(n, grid, max_weight)
        return cands[_losses(cands, experts, anchor, target).argmin(dim=1)]
    return torch.stack(
        [
            _descend(
                experts[r : r + 1],
                None if anchor is None else anchor[r : r + 1],
                None if target is None else target[r : r + 1],
                grid,
                max_weight,
            )
            for r in range(experts.shape[0])
        ]
    )


def _grid_size(n: int, grid: int, simplex: bool) -> int:
    from math import comb

    return comb(grid + n - 1, n - 1) if simplex else (grid + 1) ** n


def _descend(experts, anchor, target, grid: int, max_weight: float) -> torch.Tensor:
    """Coordinate descent over the grid for one row (large expert sets)."""
    n = experts.shape[1]
    if anchor is None:
        # On the simplex: move mass in 1/grid units from one weight to another.
        units = [grid // n + (1 if i < grid % n else 0) for i in range(n)]
        while True:
            moves = [(i, j) for i in range(n) for j in range(n) if i != j and units[i] > 0]
            cands = [list(units)] + [[u - (k == i) + (k == j) for k, u in enumerate(units)] for i, j in moves]
            c = torch.tensor(cands, dtype=torch.float32) / grid
            best = int(_losses(c, experts, None, None).argmin(dim=1)[0])
            if best == 0:
                return c[0]
            units = cands[best]
    point = torch.full((n,), max_weight * (grid // 2) / grid)
    values = torch.tensor([max_weight * i / grid for i in range(grid + 1)])
    changed = True
    while changed:
        changed = False
        for i in range(n):
            c = point.repeat(len(values), 1)
            c[:, i] = values
            best_point = c[int(_losses(c, experts, anchor, target).argmin(dim=1)[0])]
            if not torch.equal(best_point, point):
                point, changed = best_point, True
    return point


def fuse_with(expert_logits, weights: torch.Tensor, anchor_logits=None, target_logits=None) -> torch.Tensor:
    """The fused log-probabilities [rows, V] for given per-row weights [rows, n]."""
    width = min(x.shape[-1] for x in [*expert_logits, *(t for t in (anchor_logits, target_logits) if t is not None)])
    lps = torch.stack([torch.log_softmax(x[..., :width].float(), -1) for x in expert_logits], dim=1)
    if anchor_logits is None:
        return torch.log_softmax(torch.einsum("rn,rnv->rv", weights.float(), lps), dim=-1)
    anchor = torch.log_softmax(anchor_logits[..., :width].float(), -1)
    target = anchor if target_logits is None else torch.log_softmax(target_logits[..., :width].float(), -1)
    return torch.log_softmax(target + torch.einsum("rn,rnv->rv", weights.float(), lps - anchor[:, None]), dim=-1)


class DynamicFusedLM(FusedLM):
    """Experts (and an optional anchor and target) fused with per-step weights."""

    anchor_index: int | None
    target_index: int | None
    latest: "DynamicFusedBatch | None" = None  # the batch new_batch made last (weight_steps reads it)

    def __init__(self, experts: Sequence, anchor=None, target=None, options: dict | None = None, name: str = "fuse"):
        if target is not None and anchor is None:
            raise LmlangRuntimeError("fuse dynamic: a target needs an anchor (the model the experts were tuned from)")
        lms = list(experts)
        self.n_experts = len(lms)
        self.anchor_index = self.target_index = None
        for role, lm in (("anchor", anchor), ("target", target)):
            if lm is None:
                continue
            index = next((i for i, x in enumerate(lms) if x is lm), None)
            if index is None:  # a model that is already a member shares its batch
                lms.append(lm)
                index = len(lms) - 1
            setattr(self, f"{role}_index", index)
        super().__init__([(lm, 1.0) for lm in lms], mode="dynamic", options={}, name=name)
        opts = {**DEFAULTS, **(options or {})}
        unknown = sorted(set(opts) - set(DEFAULTS))
        if unknown:
            raise LmlangRuntimeError(
                f"fuse dynamic: unknown option '{unknown[0]}'", hint="options: grid, max, max_candidates"
            )
        self.grid, self.max_weight, self.max_candidates = (
            int(opts["grid"]),
            float(opts["max"]),
            int(opts["max_candidates"]),
        )

    def new_batch(self, rows: int) -> "DynamicFusedBatch":
        self.latest = DynamicFusedBatch(self, [lm.new_batch(rows) for lm, _ in self.members])
        return self.latest

    def weight_steps(self) -> list[torch.Tensor]:
        """The weights of every step of the latest batch (for the trace)."""
        latest = getattr(self, "latest", None)
        return list(latest.steps) if latest is not None else []


class DynamicFusedBatch(FusedBatch):
    lm: DynamicFusedLM
    last_weights: torch.Tensor | None = None

    def __init__(self, lm: DynamicFusedLM, parts: list):
        super().__init__(lm, parts)
        self.steps: list[torch.Tensor] = []  # last_weights of every step, in order (the trace's summary)

    def _combine(self, outs: list[torch.Tensor]) -> torch.Tensor:
        lm = self.lm
        shape = outs[0].shape[:-1]  # [rows] or [rows, T] (all_logits)
        flat = [o.reshape(-1, o.shape[-1]) for o in outs]
        experts = flat[: lm.n_experts]
        anchor = None if lm.anchor_index is None else flat[lm.anchor_index]
        target = None if lm.target_index is None else flat[lm.target_index]
        w = dynamic_weights(
            experts, anchor, target, grid=lm.grid, max_weight=lm.max_weight, max_candidates=lm.max_candidates
        )
        self.last_weights = w.reshape(*shape, lm.n_experts)
        self.steps.append(self.last_weights)
        fused = fuse_with(experts, w, anchor, target)
        return fused.reshape(*shape, fused.shape[-1])

    def select(self, indices: list[int]) -> None:
        super().select(indices)
        if self.last_weights is not None:
            self.last_weights = self.last_weights[torch.tensor(indices, dtype=torch.long)]

    def fork(self) -> "DynamicFusedBatch":
        other = DynamicFusedBatch(self.lm, [p.fork() for p in self.parts])
        other._logits = None if self._logits is None else self._logits.clone()
        other.last_weights = self.last_weights
        return other
