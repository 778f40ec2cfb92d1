"""Twin-Merging (lmlang.merge.twin) on the tiny model: the core and the
exclusive parts against a direct computation, and rows with different router
weights decoded in one batch against models with those weights written in."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from lmlang.errors import MergeError
from lmlang.merge.lora import load_lora
from lmlang.merge.methods import generalized_task_arithmetic
from lmlang.merge.twin import build_twin

ROWS = [[5, 17, 42, 99, 7, 230], [3, 150, 88, 61, 19, 44], [200, 9, 31, 77, 120, 6]]


def make_lora(model_dir, out, seed, r, targets):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    get_peft_model(
        model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False)
    ).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def experts(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("twin_experts")
    return [
        ("a", make_lora(tiny_model_dir, root / "a", 1, 4, ("q_proj", "v_proj"))),
        ("b", make_lora(tiny_model_dir, root / "b", 2, 2, ("q_proj", "k_proj"))),
        ("c", make_lora(tiny_model_dir, root / "c", 3, 4, ("v_proj", "down_proj"))),
    ]


@pytest.fixture(scope="module", autouse=True)
def twin_home(tmp_path_factory):
    """Core merges are cached under LMLANG_HOME: a private one for this module."""
    import os

    home = tmp_path_factory.mktemp("twin_home")
    old = os.environ.get("LMLANG_HOME")
    os.environ["LMLANG_HOME"] = str(home)
    yield home
    if old is None:
        del os.environ["LMLANG_HOME"]
    else:
        os.environ["LMLANG_HOME"] = old


@pytest.fixture(scope="module")
def twin(tiny_model_dir, experts, tmp_path_factory):
    return build_twin(tiny_model_dir, experts, rank=3, out_dir=tmp_path_factory.mktemp("twin") / "t")


def deltas(experts):
    return [load_lora(p).modules for _, p in experts]


def targets(experts):
    return sorted(set().union(*(set(m) for m in deltas(experts))))


def expert_delta(mods, name, like):
    return mods[name].delta() if name in mods else torch.zeros_like(like)


def test_core_is_the_ties_merge_of_the_deltas(tiny_model_dir, experts, twin):
    base = load_file(tiny_model_dir / "model.safetensors")
    core = load_file(twin.core / "model.safetensors")
    mods = deltas(experts)
    for name in targets(experts):
        ds = [expert_delta(m, name, base[name]) for m in mods]
        expect = generalized_task_arithmetic(
            torch.zeros_like(ds[0]),
            ds,
            weights=[1.0] * 3,
            densities=[0.5] * 3,
            normalize=True,
            sparsify="magnitude",
            consensus=True,
        )
        assert torch.allclose(core[name], base[name] + expect, atol=1e-6), name
    untouched = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(core[untouched], base[untouched])


def test_exclusive_parts_are_truncated_svds_of_expert_minus_core(tiny_model_dir, experts, twin):
    base = load_file(tiny_model_dir / "model.safetensors")
    core = load_file(twin.core / "model.safetensors")
    mods = deltas(experts)
    assert twin.experts == ["a", "b", "c"] and twin.rank == 3
    for (name, _), m, folder in zip(experts, mods, twin.exclusive):
        stored = load_lora(folder).modules
        diff_sq = norm_sq = 0.0
        for t in targets(experts):
            e = expert_delta(m, t, base[t]) - (core[t] - base[t])
            u, s, vh = torch.linalg.svd(e.double(), full_matrices=False)
            e3 = (u[:, :3] * s[:3]) @ vh[:3]
            assert torch.allclose(stored[t].delta().double(), e3, atol=1e-5), (name, t)
            diff_sq += float(((e - e3) ** 2).sum())
            norm_sq += float((e.double() ** 2).sum())
        assert twin.errors[name] == pytest.approx((diff_sq / norm_sq) ** 0.5, rel=1e-4)


def load(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmlang.models.loader import LoadedModel

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return LoadedModel(model, AutoTokenizer.from_pretrained(model_dir), "cpu", "float32", model_dir, "tiny")


def reference_logits(model_dir, exclusive, w, ids):
    """W_core + sum_i w_i * (B_i @ A_i) written into a fresh copy of the core."""
    loaded = load(model_dir)
    params = dict(loaded.model.named_parameters())
    with torch.no_grad():
        for folder, wi in zip(exclusive, w):
            for name, mod in load_lora(folder).modules.items():
                params[name] += wi * mod.delta()
        return loaded.model(input_ids=torch.tensor([ids])).logits[0]


def test_rows_with_different_weights_decode_in_one_batch(twin):
    from lmlang.models.adapters import AdapterHost
    from lmlang.runtime.lm import HFModel

    loaded = load(twin.core)
    host = AdapterHost(loaded)
    weights = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.5, 0.3], [0.0, 0.25, 0.75]])
    lm = twin.lm_for_rows(HFModel(loaded), host, weights)
    assert lm.stacks[1] == (
        ("twin:a", pytest.approx(0.2)),
        ("twin:b", pytest.approx(0.5)),
        ("twin:c", pytest.approx(0.3)),
    )
    batch = lm.new_batch(3)
    out = batch.feed(ROWS)
    for i, ids in enumerate(ROWS):
        ref = reference_logits(twin.core, twin.exclusive, weights[i].tolist(), ids)[-1]
        assert torch.allclose(out[i], ref, atol=1e-4), i
    # Rows keep their weights through select (reordered, duplicated) and fork.
    batch.select([2, 0, 2])
    out = batch.fork().feed([[11], [12], [13]])
    for r, (i, tok) in enumerate([(2, 11), (0, 12), (2, 13)]):
        ref = reference_logits(twin.core, twin.exclusive, weights[i].tolist(), ROWS[i] + [tok])[-1]
        assert torch.allclose(out[r], ref, atol=1e-4), r


def test_full_rank_one_hot_row_is_the_expert(tiny_model_dir, experts, tmp_path):
    from lmlang.models.adapters import AdapterHost
    from lmlang.runtime.lm import HFModel

    full = build_twin(tiny_model_dir, experts, core="task_arithmetic", rank=10, out_dir=tmp_path / "full")
    assert max(full.errors.values()) < 1e-5  # rank(D_i - sum_j D_j) <= 4 + 2 + 4
    loaded = load(full.core)
    lm = full.lm_for_rows(HFModel(loaded), AdapterHost(loaded), torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    out = lm.new_batch(2).feed(ROWS[:2])
    for row, (_, folder) in zip(range(2), experts[1:]):
        base = load(tiny_model_dir)
        params = dict(base.model.named_parameters())
        with torch.no_grad():
            for name, mod in load_lora(folder).modules.items():
                params[name] += mod.delta()
            ref = base.model(input_ids=torch.tensor([ROWS[row]])).logits[0, -1]
        assert torch.allclose(out[row], ref, atol=1e-4)


def test_cache_and_errors(tiny_model_dir, experts, twin, tmp_path):
    again = build_twin(tiny_model_dir, experts, rank=3, out_dir=twin.path)
    assert again.cached and again.errors == twin.errors and again.exclusive == twin.exclusive
    with pytest.raises(MergeError, match="at least two experts"):
        build_twin(tiny_model_dir, experts[:1])
    with pytest.raises(MergeError, match="did you mean 'ties'"):
        build_twin(tiny_model_dir, experts, core="tie")
    with pytest.raises(MergeError, match="unique"):
        build_twin(tiny_model_dir, [experts[0], experts[0]])
