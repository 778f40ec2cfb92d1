"""Every merge method against a plain reference computation on small tensors."""

import math
import subprocess
import sys

import pytest
import torch

from lmlang.errors import MergeError
from lmlang.merge import methods as M
from lmlang.merge.options import method_names, method_options, resolve_setting, validate_options

T = torch.tensor


def ctx(compat="lmlang", name="w", seed=0):
    return M.TensorContext(name, compat, seed)


# ------------------------------------------------------------------ registry / options


def test_registry_matches_torch_free_schemas():
    assert set(method_names()) == set(M.REGISTRY)
    assert {
        "linear",
        "task_arithmetic",
        "ties",
        "dare_linear",
        "dare_ties",
        "breadcrumbs",
        "breadcrumbs_ties",
        "slerp",
        "model_stock",
        "pcb",
    } <= set(method_names())


def test_unknown_method_suggests():
    with pytest.raises(MergeError, match="unknown merge method 'tis'; did you mean 'ties'\\?"):
        M.get_method("tis")


def test_options_import_is_torch_free():
    code = "import sys, lmlang.merge.options, lmlang.merge; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "method,glob,per,expect",
    [
        ("ties", {"densty": 0.5}, [], "unknown option 'densty' for merge method 'ties'; did you mean 'density'?"),
        ("ties", {}, [{"wieght": 1}], "model 1: unknown option 'wieght'"),
        ("ties", {"lambda": "x"}, [], "option 'lambda' must be a float"),
        ("ties", {}, [{"density": 1.5}], "must be <= 1.0"),
        ("ties", {}, [{"lambda": 2.0}], "applies to the whole merge"),
        ("slerp", {}, [{}], "missing option 't'"),
        ("linear", {"normalize": 1}, [], "must be a bool"),
    ],
)
def test_validate_options_problems(method, glob, per, expect):
    problems = validate_options(method, glob, per)
    assert any(expect in p for p in problems), problems


def test_validate_options_ok_and_mergekit_weight_required():
    assert validate_options("ties", {"density": 0.5}, [{"weight": 1.0}, {}]) == []
    assert validate_options("slerp", {"t": [0, 0.5, {"filter": "x", "value": 1}][:2]}, [{}]) == []
    assert validate_options("slerp", {"t": [{"filter": "mlp", "value": [0, 1]}, {"value": 0.5}]}, [{}]) == []
    probs = validate_options("ties", {}, [{}], compat="mergekit")
    assert any("missing option 'weight'" in p for p in probs)
    assert validate_options("ties", {"weight": 1.0}, [{}], compat="mergekit") == []
    assert (
        "merge method 'slerp' takes at most 2"
        in validate_options("slerp", {"t": 0.5}, [{}, {}], n_models=2, has_base=True)[0]
    )
    assert method_options("ties")["density"].default == 1.0 and method_options("pcb")["density"].default == 0.1
    assert method_options("breadcrumbs")["gamma"].default == 0.01
    assert (
        method_options("dare_ties")["rescale"].default is True and method_options("ties")["normalize"].default is True
    )


def test_resolve_setting_gradients_and_filters():
    assert resolve_setting([0, 0.5, 1], "x", 0.25) == pytest.approx(0.25)
    assert resolve_setting([0, 1, 0], "x", 0.75) == pytest.approx(0.5)
    assert resolve_setting([0, 1], "x", 1.0) == 1.0
    conds = [{"filter": "self_attn", "value": [0, 1]}, {"filter": "mlp", "value": 0.3}, {"value": 0.9}]
    assert resolve_setting(conds, "model.layers.1.self_attn.q_proj.weight", 0.5) == pytest.approx(0.5)
    assert resolve_setting(conds, "model.layers.1.mlp.up_proj.weight", 0.5) == pytest.approx(0.3)
    assert resolve_setting(conds, "model.norm.weight", 0.0) == pytest.approx(0.9)
    assert resolve_setting([{"filter": "mlp", "value": 1}], "model.norm.weight", 0.0) is None


# ------------------------------------------------------------------ plain references


def ref_topk_keep(values, k, order=None):
    """Indices of the k largest |v|, ties broken by `order` (default: lower index first)."""
    idx = list(range(len(values)))
    if order is None:
        idx.sort(key=lambda i: (-abs(values[i]), i))
        return set(idx[:k])
    return set(order[:k])


def ref_ties(base, models, weights, densities, normalize=True, lam=1.0):
    n = len(base)
    deltas = []
    for m, w, d in zip(models, weights, densities):
        delta = [m[i] - base[i] for i in range(n)]
        if d < 1:
            keep = ref_topk_keep(delta, max(1, int(d * n)))
            delta = [delta[i] if i in keep else 0.0 for i in range(n)]
        deltas.append([w * x for x in delta])
    out = []
    for i in range(n):
        total = sum(dl[i] for dl in deltas)
        sign = 1 if total >= 0 else -1
        agree = [(dl[i], w) for dl, w in zip(deltas, weights) if (dl[i] > 0) - (dl[i] < 0) == sign]
        mixed = sum(x for x, _ in agree)
        div = sum(w for _, w in agree) or 1
        out.append(base[i] + lam * (mixed / div if normalize else mixed))
    return out


def test_linear():
    a, b = T([1.0, 2.0, 3.0]), T([3.0, 0.0, -3.0])
    assert torch.allclose(M.linear([a, b], [2.0, 1.0]), (2 * a + b) / 3)
    assert torch.allclose(M.linear([a, b], [2.0, 1.0], normalize=False), 2 * a + b)
    # zero weight sum: mergekit divides by zero, lmlang leaves the sum unnormalised
    assert torch.equal(M.linear([a, b], [1.0, -1.0]), a - b)
    assert not torch.isfinite(M.linear([a, T([1.0, 2.0, 3.0])], [1.0, -1.0], compat="mergekit")).all()


def test_task_arithmetic():
    base, a, b = T([0.0, 1.0]), T([1.0, 1.0]), T([0.0, 3.0])
    impl = M.get_method("task_arithmetic")
    out = impl.merge(
        [a, b],
        base,
        [{"weight": 1.0, "density": 1.0}, {"weight": 0.5, "density": 1.0}],
        {"lambda": 2.0, "normalize": False, "rescale": False, "int8_mask": False},
        ctx(),
    )
    assert torch.allclose(out, base + 2.0 * (1.0 * (a - base) + 0.5 * (b - base)))


def _ties(models, base, weights, densities, compat="lmlang", **glob):
    params = {"lambda": 1.0, "normalize": True, "rescale": False, "int8_mask": False, **glob}
    per = [{"weight": w, "density": d} for w, d in zip(weights, densities)]
    return M.get_method("ties").merge(models, base, per, params, ctx(compat))


def test_ties_hand_case():
    base = torch.zeros(4)
    d1, d2 = T([3.0, -1.0, 0.5, 2.0]), T([-2.0, 2.0, 0.5, 1.0])
    out = _ties([d1, d2], base, [1.0, 1.0], [0.5, 0.5])
    assert out.tolist() == [3.0, 2.0, 0.0, 2.0]
    assert out.tolist() == ref_ties(base.tolist(), [d1.tolist(), d2.tolist()], [1, 1], [0.5, 0.5])


def test_ties_sign_election_is_weighted():
    # weighted: 2*1 + 0.5*(-3) = 0.5 >= 0 -> "+" wins; an unweighted election would pick "-".
    out = _ties([T([1.0]), T([-3.0])], torch.zeros(1), [2.0, 0.5], [1.0, 1.0])
    assert out.tolist() == [1.0]
    # normalize=False keeps the weighted sum of agreeing deltas
    out = _ties([T([1.0]), T([-3.0])], torch.zeros(1), [2.0, 0.5], [1.0, 1.0], normalize=False)
    assert out.tolist() == [2.0]


def test_ties_zero_divisor_and_equal_sum():
    base = T([1.0, 1.0])
    out = _ties([base.clone(), base.clone()], base, [1.0, 1.0], [0.5, 0.5])
    assert torch.equal(out, base)
    # sum exactly 0 elects "+"
    out = _ties([T([2.0]), T([0.0])], T([1.0]), [1.0, 1.0], [1.0, 1.0])
    assert out.tolist() == [2.0]


def test_ties_random_against_reference():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(50, generator=g)
    models = [base + torch.randn(50, generator=g) for _ in range(3)]
    weights, dens = [1.0, 0.7, 0.3], [0.5, 0.3, 0.9]
    out = _ties(models, base, weights, dens)
    ref = ref_ties(base.tolist(), [m.tolist() for m in models], weights, dens)
    assert torch.allclose(out, T(ref), atol=1e-6)


@pytest.mark.parametrize("method", ["ties", "dare_ties", "breadcrumbs_ties", "task_arithmetic"])
def test_scratch_inputs_merge_in_place_with_the_same_values(method):
    """The streaming merge hands its own buffers (scratch): deltas go into the
    inputs and the result into the base, bit for bit what fresh copies give."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(64, 48, generator=g)
    models = [base + 0.1 * torch.randn(64, 48, generator=g) for _ in range(3)]
    per = [{"weight": w, "density": d, "gamma": 0.01} for w, d in ((1.0, 0.5), (0.6, 0.3), (0.4, 0.9))]
    impl = M.get_method(method)
    opts = method_options(method)
    glob = {k: o.default for k, o in opts.items() if not o.per_model}
    glob["normalize"] = True
    ctx = M.TensorContext("w", "mergekit", 0)
    fresh = impl.merge([m.clone() for m in models], base.clone(), per, glob, ctx)
    ins, b = [m.clone() for m in models], base.clone()
    scratch = impl.merge(ins, b, per, glob, M.TensorContext("w", "mergekit", 0, scratch=True))
    assert torch.equal(fresh, scratch)
    assert scratch.data_ptr() == b.data_ptr()  # the base's buffer holds the result
    assert not torch.equal(ins[0], models[0])  # the inputs' buffers held the deltas


def test_density_cut_ties():
    d = T([1.0, 1.0, 1.0, 0.5, -1.0, 0.25])
    k = 3  # density 0.5 of 6; four entries tie at |1|
    lm = M.magnitude(d, 0.5, compat="lmlang")
    assert lm.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]  # lower indices win
    mk = M.magnitude(d, 0.5, compat="mergekit")
    order = torch.argsort(d.abs(), descending=True)[:k].tolist()  # mergekit's own selection
    assert mk.tolist() == [d[i].item() if i in order else 0.0 for i in range(6)]
    # no ties at the cut: both modes agree with a plain sort
    d2 = T([0.3, -2.0, 1.0, 0.1])
    assert M.magnitude(d2, 0.5).tolist() == M.magnitude(d2, 0.5, compat="mergekit").tolist() == [0.0, -2.0, 1.0, 0.0]
    assert M.magnitude(d2, 0.01).tolist() == [0.0, -2.0, 0.0, 0.0]  # at least one kept


def test_dare_seeded_and_rescaled():
    g = torch.Generator().manual_seed(1)
    base = torch.zeros(20000)
    a, b = torch.randn(20000, generator=g), torch.randn(20000, generator=g)
    impl = M.get_method("dare_linear")
    per = [{"weight": 1.0, "density": 0.3}, {"weight": 1.0, "density": 0.3}]
    glob = {"lambda": 1.0, "normalize": False, "rescale": True, "int8_mask": False, "seed": 7}
    one = impl.merge([a, b], base, per, glob, ctx())
    again = impl.merge([a, b], base, per, glob, ctx())
    other = impl.merge([a, b], base, per, dict(glob, seed=8), ctx())
    assert torch.equal(one, again) and not torch.equal(one, other)
    # lmlang: kept entries scaled by exactly 1/density
    single = M.bernoulli(a, 0.3, True, M._generator(ctx(), 0))
    kept = single != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.02
    assert torch.allclose(single[kept], a[kept] / 0.3)
    # mergekit: rescaled to the delta's L1 norm
    mk = M.bernoulli(a, 0.3, True, M._generator(ctx(), 0), compat="mergekit")
    assert mk.abs().sum().item() == pytest.approx(a.abs().sum().item(), rel=1e-5)
    assert torch.equal(mk != 0, kept)  # same mask for the same generator


def test_breadcrumbs():
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(3))
    d = (perm + 1).float()  # values 1..100 in shuffled order

    def kept(out):
        return sorted(int(v) for v in out[out != 0].tolist())

    for compat in ("lmlang", "mergekit"):
        assert kept(M.magnitude_outliers(d, 0.5, 0.1, compat=compat)) == list(range(41, 91))
    # density + gamma > 1: mergekit drops fewer outliers, lmlang keeps fewer values
    assert kept(M.magnitude_outliers(d, 0.95, 0.1, compat="mergekit")) == list(range(1, 96))
    assert kept(M.magnitude_outliers(d, 0.95, 0.1, compat="lmlang")) == list(range(1, 91))
    # density 1: mergekit ignores gamma entirely
    assert torch.equal(M.magnitude_outliers(d, 1.0, 0.1, compat="mergekit"), d)
    assert kept(M.magnitude_outliers(d, 1.0, 0.1, compat="lmlang")) == list(range(1, 91))
    # gamma * N < 1 removes no outlier
    assert kept(M.magnitude_outliers(d, 0.5, 0.001, compat="mergekit")) == list(range(51, 101))


def ref_slerp(t, v0, v1, thr=0.9995):
    a, b = v0.double().flatten(), v1.double().flatten()
    na, nb = a / a.norm(), b / b.norm()
    dot = float((na * nb).sum())
    if abs(dot) > thr:
        return ((1 - t) * a + t * b).reshape(v0.shape)
    th = math.acos(dot)
    return ((math.sin((1 - t) * th) * a + math.sin(t * th) * b) / math.sin(th)).reshape(v0.shape)


def test_slerp_hand_cases():
    out = M.slerp(0.5, T([2.0, 0.0]), T([0.0, 4.0]))
    assert torch.allclose(out, T([2 * math.sqrt(0.5), 4 * math.sqrt(0.5)]))
    assert torch.equal(M.slerp(0.0, T([1.0, 2.0]), T([3.0, 1.0])), T([1.0, 2.0]))
    # near-parallel: plain lerp of the raw tensors
    v0, v1 = T([1.0, 2.0, 3.0]), T([2.0, 4.0, 6.0001])
    assert torch.allclose(M.slerp(0.3, v0, v1), 0.7 * v0 + 0.3 * v1)
    # antiparallel too
    assert torch.allclose(M.slerp(0.25, v0, -v0), 0.75 * v0 - 0.25 * v0)


def test_slerp_random_and_chunked():
    g = torch.Generator().manual_seed(2)
    for shape in [(7, 5), (1100, 1000)]:  # the second spans two 1M-element chunks
        v0, v1 = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        assert torch.allclose(M.slerp(0.3, v0, v1).double(), ref_slerp(0.3, v0, v1), atol=1e-5)


def test_model_stock():
    g = torch.Generator().manual_seed(4)
    base = torch.randn(30, generator=g)
    ws = [base + torch.randn(30, generator=g) + 0.5 for _ in range(3)]
    ds = [w - base for w in ws]
    cos = [float((ds[i] @ ds[j]) / (ds[i].norm() * ds[j].norm())) for i in range(3) for j in range(i + 1, 3)]
    c = sum(cos) / len(cos)
    t = 3 * c / (1 + 2 * c)
    ref = t * (sum(ws) / 3) + (1 - t) * base
    assert torch.allclose(M.model_stock(base, ws), ref, atol=1e-6)
    rows = M.model_stock(base.reshape(5, 6), [w.reshape(5, 6) for w in ws], filter_wise=True)
    assert rows.shape == (5, 6)


def ref_pcb(base, models, density, lam=1.0):
    """The official PCB-merging code, sort-based, on one flattened tensor."""

    def normalize(x):
        lo, hi = x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
        return (x - lo) / (hi - lo)

    def clamp(x, min_ratio, max_ratio):
        d = x.size(1)
        s, _ = torch.sort(x, dim=1)
        return torch.clamp(x, s[:, int(d * min_ratio)].unsqueeze(1), s[:, int(d * (1 - max_ratio) - 1)].unsqueeze(1))

    checks = torch.stack([(m - base).flatten() for m in models])
    n = checks.shape[0]
    absx = clamp(checks.abs(), 0.0001, 0.0001)
    clamped = torch.sign(checks) * absx
    self_pcb = torch.exp(n * normalize(absx) ** 2)
    cross = torch.tanh(checks * checks.sum(dim=0))
    scale = normalize(clamp(self_pcb * cross, 1 - density, 0))
    merged = (clamped * scale).sum(dim=0) / torch.clamp(scale.sum(dim=0), min=1e-12)
    return base + lam * merged.reshape(base.shape)


def test_pcb_matches_official_code():
    g = torch.Generator().manual_seed(5)
    base = torch.randn(40, 30, generator=g)
    models = [base + 0.1 * torch.randn(40, 30, generator=g) for _ in range(3)]
    out = M.pcb(base, models, [1.0, 1.0, 1.0], density=0.2, lam=1.0)
    assert torch.allclose(out, ref_pcb(base, models, 0.2), atol=1e-6)
    # a constant task vector row does not produce NaN
    assert torch.isfinite(M.pcb(base, [base, base], [1.0, 1.0])).all()


def test_int8_mask_changes_nothing():
    g = torch.Generator().manual_seed(6)
    base = torch.randn(100, generator=g)
    ms = [base + torch.randn(100, generator=g) for _ in range(2)]
    a = _ties(ms, base, [1.0, 0.5], [0.4, 0.6])
    b = _ties(ms, base, [1.0, 0.5], [0.4, 0.6], int8_mask=True)
    assert torch.equal(a, b)


@pytest.mark.parametrize("n", [300_000, 1_000_003])
def test_sampled_kth_value_is_exact(n):
    g = torch.Generator().manual_seed(n)
    for w in (torch.randn(n, generator=g).abs(), torch.randint(0, 40, (n,), generator=g).float()):
        for k in (1, n // 10, n // 2, int(0.7 * n), n - 1):
            assert M._kth_largest_value(w, k) == torch.kthvalue(w, n - k + 1).values, (n, k)


# ------------------------------------------------------------------ tsv
def _low_rank(m, n, r, gen):
    return torch.randn(m, r, generator=gen) @ torch.randn(r, n, generator=gen)


def test_tsv_single_model_is_its_delta():
    gen = torch.Generator().manual_seed(0)
    base, d = torch.randn(12, 10, generator=gen), _low_rank(12, 10, 3, gen)
    out = M.tsv(base, [base + d], [1.0], rank_fraction=1.0)
    assert torch.allclose(out, base + d, atol=1e-4)
    assert torch.allclose(M.tsv(base, [base + d], [1.0], rank_fraction=1.0, lam=0.5), base + 0.5 * d, atol=1e-4)


def test_tsv_disjoint_subspaces_add_up_exactly():
    """Models that touch orthogonal row and column spaces do not interfere, so
    TSV equals plain task arithmetic (the sum of the deltas)."""
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(8, 8, generator=gen)
    d1, d2 = torch.zeros(8, 8), torch.zeros(8, 8)
    d1[:4, :4] = _low_rank(4, 4, 2, gen)
    d2[4:, 4:] = _low_rank(4, 4, 2, gen)
    out = M.tsv(base, [base + d1, base + d2], [1.0, 1.0])
    assert torch.allclose(out, base + d1 + d2, atol=1e-4)


def test_tsv_overlapping_subspaces_are_decorrelated():
    """Reference computation of TSV-M: per model top-k SVD, concatenate, replace
    U and V by their nearest orthonormal matrices, keep the singular values."""
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(16, 12, generator=gen)
    deltas = [_low_rank(16, 12, 3, gen) for _ in range(3)]
    weights = [1.0, 0.5, 2.0]
    out = M.tsv(base, [base + d for d in deltas], weights)
    us, ss, vs = [], [], []
    for d, w in zip(deltas, weights):
        u, s, vh = torch.linalg.svd(d * w, full_matrices=False)
        us.append(u[:, :3]), ss.append(s[:3]), vs.append(vh[:3].T)  # k = 12 // 3 = 4 > rank 3
    u, v = torch.cat(us, 1), torch.cat(vs, 1)
    pu, _, qu = torch.linalg.svd(u, full_matrices=False)
    pv, _, qv = torch.linalg.svd(v, full_matrices=False)
    ref = base + ((pu @ qu) * torch.cat(ss)) @ (pv @ qv).T
    assert torch.allclose(out, ref, atol=1e-4)
    assert not torch.allclose(out, base + sum(d * w for d, w in zip(deltas, weights)), atol=1e-2)


def test_tsv_rank_cut_zero_deltas_and_vectors():
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(10, 10, generator=gen)
    d = _low_rank(10, 10, 6, gen)
    # a model that did not change this tensor contributes nothing and disturbs nothing
    assert torch.allclose(M.tsv(base, [base + d, base], [1.0, 1.0], rank_fraction=1.0), base + d, atol=1e-4)
    # k = 0.2 * 10 = 2: only the top two singular triplets survive
    u, s, vh = torch.linalg.svd(d)
    top2 = (u[:, :2] * s[:2]) @ vh[:2]
    assert torch.allclose(M.tsv(base, [base + d], [1.0], rank_fraction=0.2), base + top2, atol=1e-4)
    vec = torch.randn(10, generator=gen)
    assert torch.allclose(M.tsv(vec, [vec + 1, vec + 3], [1.0, 1.0]), vec + 2)  # non-matrices: mean delta
    assert torch.equal(M.tsv(base, [base, base], [1.0, 1.0]), base)


@pytest.mark.parametrize(
    "sparsify,consensus,normalize,rescale",
    [
        ("magnitude", True, True, False),
        ("magnitude", True, False, True),
        (None, False, False, False),
        (None, False, True, False),
        ("random", True, False, True),
        ("outliers", False, False, False),
    ],
)
def test_chunked_sign_election_changes_no_value(monkeypatch, sparsify, consensus, normalize, rescale):
    """generalized_task_arithmetic works over column chunks (to bound its
    temporaries); any chunk size, down to a few elements, gives the same bits."""
    g = torch.Generator().manual_seed(5)
    base = torch.randn(6, 7, generator=g)
    models = [base + torch.randn(6, 7, generator=g) for _ in range(3)]
    kw = dict(
        weights=[1.0, -0.4, 0.8],
        densities=[0.5, 0.6, 0.9],
        normalize=normalize,
        rescale=rescale,
        sparsify=sparsify,
        consensus=consensus,
        lam=1.3,
        ctx=ctx(seed=2),
    )
    copies = [base.clone()] + [m.clone() for m in models]
    whole = M.generalized_task_arithmetic(base, models, **kw)
    assert all(torch.equal(a, b) for a, b in zip(copies, [base, *models]))  # inputs untouched
    monkeypatch.setattr(M, "_GTA_CHUNK", 5)  # 5 // 3 models = 1 column per chunk
    assert torch.equal(M.generalized_task_arithmetic(base, models, **kw), whole)
    monkeypatch.setattr(M, "_GTA_CHUNK", 3 * 11)
    assert torch.equal(M.generalized_task_arithmetic(base, models, **kw), whole)
