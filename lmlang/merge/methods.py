"""Merge methods as pure functions on fp32 tensors, and their registry.

Every function sees one tensor name at a time (the streaming executor calls
it per tensor) and never mutates its inputs.

Two semantics modes:

- ``compat="mergekit"`` reproduces mergekit 0.1.5 operation by operation, so
  results compare tensor by tensor (TIES and SLERP bit for bit). That
  includes its quirks: `torch.argsort`'s unstable tie-breaking at the density
  cut, DARE's L1-norm rescale, `weight` being required, breadcrumbs quietly
  dropping fewer outliers when density + gamma > 1, and a linear merge whose
  weights sum to zero dividing by zero.
- ``compat="lmlang"`` (default) keeps the same algorithms but fixes those:
  ties at the density cut go to the lower index (deterministic across
  versions), DARE rescales by 1/density as in the paper (unbiased), breadcrumbs
  always removes the `gamma` outliers (keeping fewer than `density` if
  needed), a zero weight sum in linear is left unnormalised, `weight`
  defaults to 1.0.

DARE masks never match mergekit's: mergekit draws from the global torch RNG
in its own execution order; lmlang seeds one CPU generator per (seed, tensor,
model), so a merge is deterministic whatever the order or threading.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from .options import METHODS, MethodInfo, unknown_method_message

Tensor = torch.Tensor
COMPAT_MODES = ("lmlang", "mergekit")


@dataclass(frozen=True)
class TensorContext:
    """What a method may know about the tensor it merges."""

    name: str = ""
    compat: str = "lmlang"
    seed: int = 0
    # The input tensors are the merge's own buffers (the streaming merge read
    # them for this call alone): a method may overwrite them instead of
    # allocating copies, which is what bounds a merge's peak memory.
    scratch: bool = False


# ----------------------------------------------------------------- sparsify


def _generator(ctx: TensorContext, index: int) -> torch.Generator:
    digest = hashlib.blake2b(f"{ctx.seed}\0{ctx.name}\0{index}".encode(), digest_size=8).digest()
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF)
    return gen


def _rescaled(tensor: Tensor, mask: Tensor, rescale: bool, eps: float = 1e-7) -> Tensor:
    """mergekit's L1 rescale: masked * (|tensor|_1 / |masked|_1) unless either is ~0."""
    masked = tensor * mask
    if not rescale:
        return masked
    before = tensor.abs().sum()
    after = masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


def _kth_largest_value(w: Tensor, k: int) -> Tensor:
    """The k-th largest value of the flat tensor w, exactly, in about linear time.

    A strided sample brackets the value; only the entries inside the bracket go
    through kthvalue (4x faster than kthvalue over everything on 1M entries).
    """
    n = w.numel()
    if n > 200_000:
        sample = torch.sort(w[:: n // 50_000]).values
        m = sample.numel()
        below = (n - k) / n
        lo_i, hi_i = int((below - 0.01) * m), int((below + 0.01) * m) + 1
        lo = sample[lo_i] if lo_i > 0 else torch.tensor(float("-inf"))
        hi = sample[hi_i] if hi_i < m - 1 else torch.tensor(float("inf"))
        n_above = int((w > hi).sum())
        band = w[(w > lo) & (w <= hi)]
        need = k - n_above
        if 1 <= need <= band.numel():
            return torch.kthvalue(band, band.numel() - need + 1).values
    return torch.kthvalue(w, n - k + 1).values


def _kth_largest_mask(w: Tensor, k: int, compat: str) -> Tensor:
    """Boolean mask of the k largest entries of the flat tensor w.

    Selection by threshold (kthvalue, linear time) gives the same set as a
    full sort unless equal values straddle the cut. Then mergekit mode asks
    `torch.argsort` (mergekit's exact tie order) and lmlang mode keeps the
    lowest indices. Tied zeros are never ambiguous: they contribute nothing.
    """
    n = w.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool)
    v = _kth_largest_value(w, k)
    above = w > v
    n_above = int(above.sum())
    eq = w == v
    n_eq = int(eq.sum())
    if n_above + n_eq == k or float(v) == 0.0:
        return above | eq
    if compat == "mergekit":
        # mergekit keeps argsort(w, descending)[:k]: the n_above larger
        # entries fill its first places, so only places n_above..k-1 (the
        # ties it keeps, in its unstable sort's order) are read. Nothing
        # else full-size is alive during the sort (the embedding's is the
        # merge's peak).
        del eq
        if bool(torch.isnan(w).any()):  # NaNs sort first: take mergekit's first k as they are
            del above
            mask = torch.zeros(n, dtype=torch.bool)
            mask[torch.argsort(w, descending=True)[:k]] = True
            return mask
        kept_ties = torch.argsort(w, descending=True)[n_above:k].clone()
        above[kept_ties] = True
        return above
    idx = eq.nonzero().flatten()[: k - n_above]
    above[idx] = True
    return above


def magnitude(tensor: Tensor, density: float, rescale: bool = False, compat: str = "lmlang") -> Tensor:
    """Keep the `density` fraction of largest |values| (at least one)."""
    if density >= 1:
        return tensor
    if density <= 0 or tensor.numel() == 0:
        return torch.zeros_like(tensor)
    k = max(1, int(density * tensor.numel()))
    w = tensor.abs().reshape(-1).float()
    mask = _kth_largest_mask(w, k, compat).reshape_as(tensor)  # bool: x * True == x, no float copy
    del w
    return _rescaled(tensor, mask, rescale)


def _magnitude_(t: Tensor, density: float, rescale: bool, compat: str) -> None:
    """magnitude() done in place on a scratch tensor (the merge's own delta),
    sparing two full-size copies; same values."""
    if density >= 1:
        return
    if density <= 0 or t.numel() == 0:
        t.zero_()
        return
    k = max(1, int(density * t.numel()))
    before = t.abs().sum() if rescale else None
    w = t.abs().reshape(-1).float()
    mask = _kth_largest_mask(w, k, compat).reshape_as(t)
    del w
    t.mul_(mask)
    if rescale:
        assert before is not None
        after = t.abs().sum()
        if before >= 1e-7 and after >= 1e-7:
            t.mul_(before / after)


def magnitude_outliers(
    tensor: Tensor, density: float, gamma: float = 0.01, rescale: bool = False, compat: str = "lmlang"
) -> Tensor:
    """Breadcrumbs: drop the top `gamma` fraction, then the smallest, keeping `density`.

    mergekit 0.1.5 keeps ranks [n_bot, n_bot + target) of the ascending order
    with n_bot = max(0, N - target - n_top), so when density + gamma > 1 it
    removes fewer outliers (and density >= 1 removes none). lmlang always
    removes int(gamma * N) outliers and keeps min(target, N - n_top).
    """
    n = tensor.numel()
    if compat == "mergekit" and density >= 1:
        return tensor
    target = int(min(density, 1.0) * n)
    n_top = int(gamma * n)
    if compat != "mergekit":
        target = min(target, n - n_top)
        if target >= n:
            return tensor
    n_bot = max(0, n - target - n_top)
    w = tensor.abs().reshape(-1).float()
    mask = torch.zeros(n, dtype=torch.bool)
    if target > 0:
        hi_rank = n_bot + target  # 1-based rank of the last kept value, ascending
        v_hi = torch.kthvalue(w, hi_rank).values
        cand = w <= v_hi
        if n_bot > 0:
            v_lo = torch.kthvalue(w, n_bot).values  # the last dropped value
            cand &= w > v_lo
            lo_ok = float(v_lo) == 0.0 or int((w <= v_lo).sum()) == n_bot
        else:
            lo_ok = True
        hi_ok = float(v_hi) == 0.0 or int((w <= v_hi).sum()) == hi_rank
        if lo_ok and hi_ok:
            mask = cand
        else:
            order = torch.sort(w, descending=False, stable=compat != "mergekit").indices
            mask[order[n_bot : n_bot + target]] = True
    return _rescaled(tensor, mask.to(tensor.dtype).reshape_as(tensor), rescale)


def bernoulli(
    tensor: Tensor, density: float, rescale: bool, generator: torch.Generator, compat: str = "lmlang"
) -> Tensor:
    """DARE: keep each entry with probability `density`.

    Rescale: mergekit matches the L1 norm of the delta; lmlang divides by
    `density` (the paper's unbiased 1/p).
    """
    if density >= 1:
        return tensor
    if density <= 0:
        return torch.zeros_like(tensor)
    mask = torch.bernoulli(torch.full_like(tensor, density, dtype=torch.float32), generator=generator)
    if compat == "mergekit":
        return _rescaled(tensor, mask, rescale)
    masked = tensor * mask
    return masked / density if rescale else masked


# ---------------------------------------------------------------- methods


def linear(
    tensors: Sequence[Tensor], weights: Sequence[float], normalize: bool = True, compat: str = "lmlang"
) -> Tensor:
    dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    w = torch.tensor(list(weights), dtype=dtype)
    result = torch.zeros_like(tensors[0], dtype=dtype)
    for tensor, coef in zip(tensors, w.unbind(0)):
        result.addcmul_(tensor, coef)
    if normalize:
        denom = w.sum()
        if compat == "mergekit" or abs(float(denom)) >= 1e-8:
            result.div_(denom)
    return result.to(tensors[0].dtype)


def generalized_task_arithmetic(
    base: Tensor,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float],
    densities: Sequence[float],
    gammas: Sequence[float] | None = None,
    lam: float = 1.0,
    normalize: bool = False,
    rescale: bool = False,
    sparsify: str | None = None,
    consensus: bool = False,
    int8_mask: bool = False,
    ctx: TensorContext = TensorContext(),
) -> Tensor:
    """task_arithmetic / ties / dare_* / breadcrumbs* in mergekit's order of operations.

    deltas are sparsified, then weighted; with consensus the elected sign is
    that of the weighted sum (>= 0 counts as +), and the divisor is the sum of
    the agreeing models' weights (0 -> 1).
    """
    if not tensors:
        return base
    # Peak memory matters (a 49k x 576 embedding is 113 MB per copy, and
    # mergekit's tie order needs a full argsort of it): with scratch inputs
    # each delta is computed in its input's own buffer and the result in the
    # base's, so nothing full-size is allocated beyond the sparsifier's
    # temporaries; otherwise one new delta per model. The sign election runs
    # over column chunks (stacked per chunk), so its temporaries stay small.
    # Every step is elementwise across models, so chunking changes no value.
    deltas: list[Tensor] = []
    for i, tensor in enumerate(tensors):
        d = tensor.sub_(base) if ctx.scratch else torch.sub(tensor, base)
        if sparsify == "magnitude":
            _magnitude_(d, densities[i], rescale, ctx.compat)
        elif sparsify == "random":
            d = bernoulli(d, densities[i], rescale, _generator(ctx, i), ctx.compat)
        elif sparsify == "outliers":
            d = magnitude_outliers(d, densities[i], (gammas or [0.01] * len(tensors))[i], rescale, ctx.compat)
        deltas.append(d.reshape(-1))
    w = torch.tensor(list(weights), dtype=deltas[0].dtype)
    n = len(tensors)
    total = deltas[0].shape[0]
    base_flat = base.reshape(-1)
    out = base_flat if ctx.scratch else torch.empty(total, dtype=deltas[0].dtype)
    w_col = w.unsqueeze(-1)
    tiny_sum = abs(float(w.sum())) < 1e-8
    chunk = max(1, _GTA_CHUNK // n)
    for s in range(0, total, chunk):
        d = torch.stack([x[s : s + chunk] for x in deltas])
        d.mul_(w_col)
        if consensus:
            mask_dtype = torch.int8 if int8_mask else d.dtype
            sign = d.sign().to(mask_dtype)
            majority = (d.sum(dim=0) >= 0).to(mask_dtype) * 2 - 1
            mask = sign == majority
            del sign, majority
            mixed = (d * mask).sum(dim=0)
            if normalize:
                divisor = (w_col * mask).sum(dim=0)
                divisor[divisor == 0] = 1
                mixed /= divisor
        else:
            mixed = d.sum(dim=0)
            if normalize and not tiny_sum:
                mixed /= w.sum()
        if lam != 1:
            mixed *= lam
        torch.add(base_flat[s : s + chunk], mixed, out=out[s : s + chunk])
    return out.reshape(base.shape)


_GTA_CHUNK = 1024 * 1024  # elements per sign-election chunk, all models together
_CHUNK = 1024 * 1024


def slerp(t: float, v0: Tensor, v1: Tensor, dot_threshold: float = 0.9995, eps: float = 1e-8) -> Tensor:
    """Spherical interpolation of two flattened tensors (t=0 -> v0).

    The angle comes from normalised copies; the coefficients apply to the raw
    tensors; nearly parallel (or antiparallel) pairs, |cos| > dot_threshold,
    are lerped. Norms and the dot product are accumulated over 1M-element
    chunks exactly as mergekit 0.1.5 does, so results match it bit for bit.
    """
    dtype = torch.float64 if v0.dtype == torch.float64 else torch.float32
    out = torch.empty((1, v0.numel()), dtype=v0.dtype)
    a = v0.reshape(1, -1).to(dtype)
    b = v1.reshape(1, -1).to(dtype)
    tt = torch.tensor([t], dtype=dtype).reshape(-1, 1)
    if not a.shape[1]:
        return ((1 - tt) * a + tt * b).reshape(v0.shape).to(v0.dtype)
    starts = range(0, a.shape[1], _CHUNK)
    na = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(a[:, s : s + _CHUNK], dim=1, keepdim=True) for s in starts]), dim=0
    )
    nb = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(b[:, s : s + _CHUNK], dim=1, keepdim=True) for s in starts]), dim=0
    )
    na = torch.where(na > eps, na, 1)
    nb = torch.where(nb > eps, nb, 1)
    dot = (
        torch.stack(
            [((a[:, s : s + _CHUNK] / na) * (b[:, s : s + _CHUNK] / nb)).sum(dim=1, keepdim=True) for s in starts]
        )
        .sum(dim=0)
        .clamp(-1, 1)
    )
    lin = dot.abs() > dot_threshold
    theta = torch.acos(torch.where(lin, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(lin, 1 - tt, torch.sin((1 - tt) * theta) / sin_theta)
    coef_b = torch.where(lin, tt, torch.sin(tt * theta) / sin_theta)
    for s in starts:
        out[:, s : s + _CHUNK] = coef_a * a[:, s : s + _CHUNK] + coef_b * b[:, s : s + _CHUNK]
    return out.reshape(v0.shape)


def model_stock(base: Tensor, tensors: Sequence[Tensor], filter_wise: bool = False) -> Tensor:
    """theta = t * mean(theta_i) + (1 - t) * base, t = N c / (1 + (N - 1) c).

    c is the mean pairwise cosine of the deltas (per tensor, or per row with
    filter_wise); where 1 + (N - 1) c ~ 0 the base is kept.
    """
    out_shape = base.shape
    if filter_wise:
        w0 = base.unsqueeze(0) if base.dim() == 1 else base
        ws = [x.unsqueeze(0) if x.dim() == 1 else x for x in tensors]
    else:
        w0 = base.reshape(-1)
        ws = [x.reshape(-1) for x in tensors]
    offsets = [x - w0 for x in ws]
    cos = []
    for i, oa in enumerate(offsets):
        for ob in offsets[i + 1 :]:
            norm = torch.norm(oa, dim=-1) * torch.norm(ob, dim=-1)
            cos.append(((oa * ob).sum(dim=-1) / norm.clamp(min=1e-6)).clamp(-1, 1))
    cos_theta = torch.stack(cos).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denom = 1 + (n - 1) * cos_theta
    singular = denom.abs() < 1e-6
    safe = torch.where(singular, torch.ones_like(denom), denom)
    t = torch.where(singular, torch.zeros_like(cos_theta), (n * cos_theta) / safe)
    average = sum(ws) / n
    return (t * average + (1 - t) * w0).reshape(out_shape)


def _rank_value(x: Tensor, index: int) -> Tensor:
    """sorted(x, dim=1)[:, index] without a full sort."""
    index = min(max(index, 0), x.shape[1] - 1)
    return torch.kthvalue(x, index + 1, dim=1, keepdim=True).values


def _minmax(x: Tensor) -> Tensor:
    lo = x.min(dim=1, keepdim=True).values
    hi = x.max(dim=1, keepdim=True).values
    span = hi - lo
    span = torch.where(span == 0, torch.ones_like(span), span)  # the official code gives NaN here
    return (x - lo) / span


def pcb(
    base: Tensor, tensors: Sequence[Tensor], weights: Sequence[float], density: float = 0.1, lam: float = 1.0
) -> Tensor:
    """PCB-merging as in the official code, applied to one tensor.

    Task vectors T (n x d): |T| is clamped per row between its 0.01% and
    99.99% order statistics; intra = exp(n * minmax(|T|)^2), inter =
    tanh(T * sum_j T_j); beta = intra * inter is clamped from below at its
    (1 - density) order statistic and min-maxed, so the top `density` fraction
    keeps a positive score; tau = sum(w_i beta_i Tclamped_i) / sum(beta_i).
    The official code flattens the whole model into one row per task; lmlang
    streams, so quantiles and the top fraction are per tensor. A constant row
    min-maxes to 0 instead of NaN.
    """
    n = len(tensors)
    if n == 0:
        return base
    flat = torch.stack([(x - base).reshape(-1) for x in tensors])
    d = flat.shape[1]
    absx = flat.abs()
    lo = _rank_value(absx, int(d * 0.0001))
    hi = _rank_value(absx, int(d * (1 - 0.0001) - 1))
    absx = torch.clamp(absx, lo, hi)
    clamped = torch.sign(flat) * absx
    intra = torch.exp(n * _minmax(absx) ** 2)
    inter = torch.tanh(flat * flat.sum(dim=0))
    beta = intra * inter
    del intra, inter, absx
    floor = _rank_value(beta, int(d * (1 - density)))
    scale = _minmax(torch.clamp(beta, min=floor))
    w = torch.tensor(list(weights), dtype=flat.dtype).unsqueeze(-1)
    merged = (clamped * scale * w).sum(dim=0) / torch.clamp(scale.sum(dim=0), min=1e-12)
    return base + lam * merged.reshape(base.shape)


def _orthonormalized(x: Tensor) -> Tensor:
    """The orthonormal matrix nearest to x (Procrustes: P Q^T from x = P S Q^T)."""
    p, _, qh = torch.linalg.svd(x, full_matrices=False)
    return p @ qh


def tsv(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    rank_fraction: float | None = None,
    lam: float = 1.0,
) -> Tensor:
    """Task Singular Vectors merging (TSV-M, Gargiulo et al., CVPR 2025), per tensor.

    Each model's 2-D delta (times its weight) is cut to its top
    k = rank_fraction * min(m, n) singular triplets (default 1/T, the paper's
    choice: T tasks together fill the rank) and to its numerical rank
    (singular values under 1e-6 of the largest are dropped: a LoRA delta of
    rank 8 has no other directions, and zero-value singular vectors would
    only rotate the others). The tasks' left singular vectors are
    concatenated, and so are the right ones; each set is replaced by the
    nearest orthonormal set, which removes the overlap between the tasks'
    subspaces (the interference) while keeping every task's singular values:
    merged = base + lambda * U_perp diag(sigma) V_perp^T. Tensors that are
    not matrices (norms, biases) get the weighted mean delta, as in the
    paper's code.
    """
    n = len(tensors)
    if n == 0:
        return base
    deltas = [(x - base) * float(w) for x, w in zip(tensors, weights)]
    if base.dim() != 2:
        return base + lam * sum(deltas) / n
    dtype = torch.float64 if base.dtype == torch.float64 else torch.float32
    frac = rank_fraction or 1.0 / n
    k = max(1, int(frac * min(base.shape)))
    us, ss, vs = [], [], []
    for d in deltas:
        u, s, vh = torch.linalg.svd(d.to(dtype), full_matrices=False)
        if not s.numel() or float(s[0]) == 0.0:
            continue
        keep = min(k, int((s > s[0] * 1e-6).sum()))
        us.append(u[:, :keep])
        ss.append(s[:keep])
        vs.append(vh[:keep].T)
    if not us:
        return base.clone()
    u_perp = _orthonormalized(torch.cat(us, dim=1))
    v_perp = _orthonormalized(torch.cat(vs, dim=1))
    merged = (u_perp * torch.cat(ss)) @ v_perp.T
    return base + (lam * merged).to(base.dtype)


# --------------------------------------------------------------- registry


class MergeMethod(ABC):
    """One merge method: metadata (torch-free, from options.py) + a tensor kernel.

    `merge` receives fp32 tensors of one name: `tensors` in model order (base
    excluded), `base` or None, `per_model` and `params` already resolved for
    this tensor (gradients and filters evaluated, defaults filled in).
    """

    name: str

    @property
    def info(self) -> MethodInfo:
        return METHODS[self.name]

    @abstractmethod
    def merge(
        self,
        tensors: Sequence[Tensor],
        base: Tensor | None,
        per_model: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any],
        ctx: TensorContext,
    ) -> Tensor: ...


class LinearMethod(MergeMethod):
    name = "linear"

    def merge(self, tensors, base, per_model, params, ctx):
        return linear(tensors, [p["weight"] for p in per_model], params["normalize"], ctx.compat)


@dataclass(frozen=True)
class _GTAConfig:
    sparsify: str | None
    consensus: bool


class GTAMethod(MergeMethod):
    def __init__(self, name: str, sparsify: str | None, consensus: bool):
        self.name = name
        self.config = _GTAConfig(sparsify, consensus)

    def merge(self, tensors, base, per_model, params, ctx):
        return generalized_task_arithmetic(
            base,
            tensors,
            weights=[p["weight"] for p in per_model],
            densities=[p.get("density", 1.0) for p in per_model],
            gammas=[p.get("gamma", 0.01) for p in per_model],
            lam=params["lambda"],
            normalize=params["normalize"],
            rescale=params["rescale"],
            sparsify=self.config.sparsify,
            consensus=self.config.consensus,
            int8_mask=params["int8_mask"],
            ctx=TensorContext(ctx.name, ctx.compat, int(params.get("seed", ctx.seed)), ctx.scratch),
        )


class SlerpMethod(MergeMethod):
    name = "slerp"

    def merge(self, tensors, base, per_model, params, ctx):
        return slerp(params["t"], base, tensors[0], params.get("dot_threshold", 0.9995))


class ModelStockMethod(MergeMethod):
    name = "model_stock"

    def merge(self, tensors, base, per_model, params, ctx):
        return model_stock(base, tensors, params["filter_wise"])


class PCBMethod(MergeMethod):
    name = "pcb"

    def merge(self, tensors, base, per_model, params, ctx):
        return pcb(base, tensors, [p["weight"] for p in per_model], params["density"], params["lambda"])


class TSVMethod(MergeMethod):
    name = "tsv"

    def merge(self, tensors, base, per_model, params, ctx):
        return tsv(base, tensors, [p["weight"] for p in per_model], params.get("rank_fraction"), params["lambda"])


REGISTRY: dict[str, MergeMethod] = {
    m.name: m
    for m in (
        LinearMethod(),
        GTAMethod("task_arithmetic", None, False),
        GTAMethod("ties", "magnitude", True),
        GTAMethod("dare_linear", "random", False),
        GTAMethod("dare_ties", "random", True),
        GTAMethod("breadcrumbs", "outliers", False),
        GTAMethod("breadcrumbs_ties", "outliers", True),
        SlerpMethod(),
        ModelStockMethod(),
        PCBMethod(),
        TSVMethod(),
    )
}


def get_method(name: str) -> MergeMethod:
    from ..errors import MergeError

    try:
        return REGISTRY[name]
    except KeyError:
        raise MergeError(unknown_method_message(name)) from None
