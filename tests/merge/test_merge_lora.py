"""LoRA merges by exact delta algebra, checked against PEFT on the tiny model."""

import json

import pytest
import torch
from safetensors.torch import load_file

from lmlang.errors import MergeError
from lmlang.merge.lora import load_lora, merge_loras


def make_lora(base_dir, out, targets, r, alpha, seed, rslora=False):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, use_rslora=rslora, lora_dropout=0.0)
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)  # B non-zero too
    peft.save_pretrained(out)
    return out


def merged_with_peft(base_dir, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    return {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}


def weights(folder):
    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def loras(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    a = make_lora(tiny_model_dir, root / "a", ["q_proj", "v_proj"], 4, 8, 1)
    b = make_lora(tiny_model_dir, root / "b", ["q_proj", "k_proj"], 2, 4, 2, rslora=True)
    return a, b


def test_single_adapter_matches_merge_and_unload(tiny_model_dir, loras, tmp_path):
    a, _ = loras
    res = merge_loras("linear", [(a, {})], base_model=tiny_model_dir, out_dir=tmp_path / "full")
    ours, ref = weights(res.path), merged_with_peft(tiny_model_dir, a)
    assert {k for k in ref if k != "lm_head.weight"} == set(ours)
    for k, v in ours.items():
        assert torch.allclose(v, ref[k], atol=1e-6, rtol=0), k
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(ours[q], load_file(tiny_model_dir / "model.safetensors")[q])


def test_two_adapters_union_of_targets(tiny_model_dir, loras, tmp_path):
    a, b = loras
    la, lb = load_lora(a), load_lora(b)
    assert lb.modules["model.layers.0.self_attn.k_proj.weight"].scale == pytest.approx(4 / 2**0.5)  # rslora
    res = merge_loras(
        "task_arithmetic",
        [(a, {"weight": 1.0}), (b, {"weight": 0.5})],
        base_model=tiny_model_dir,
        out_dir=tmp_path / "ta",
    )
    base, ours = load_file(tiny_model_dir / "model.safetensors"), weights(res.path)
    for name, w in base.items():
        expect = w.clone()
        if name in la.modules:
            expect = expect + la.modules[name].delta()
        if name in lb.modules:
            expect = expect + 0.5 * lb.modules[name].delta()
        assert torch.allclose(ours[name], expect, atol=1e-6), name
    # sequential PEFT merges agree: W + dA + dB
    merged_a = merged_with_peft(tiny_model_dir, a)
    k = "model.layers.1.self_attn.v_proj.weight"  # only A targets v_proj
    assert torch.allclose(ours[k], merged_a[k], atol=1e-6)


def test_ties_on_deltas_is_not_factor_averaging(tiny_model_dir, loras, tmp_path):
    a, b = loras
    res = merge_loras(
        "ties", [(a, {"density": 0.5}), (b, {"density": 0.5})], base_model=tiny_model_dir, out_dir=tmp_path / "ties"
    )
    from lmlang.merge.methods import generalized_task_arithmetic

    la, lb = load_lora(a), load_lora(b)
    name = "model.layers.0.self_attn.q_proj.weight"
    da, db = la.modules[name].delta(), lb.modules[name].delta()
    expect = generalized_task_arithmetic(
        torch.zeros_like(da),
        [da, db],
        weights=[1.0, 1.0],
        densities=[0.5, 0.5],
        normalize=True,
        sparsify="magnitude",
        consensus=True,
    )
    base = load_file(tiny_model_dir / "model.safetensors")[name]
    assert torch.allclose(weights(res.path)[name], base + expect, atol=1e-6)


def test_svd_refactor(tiny_model_dir, loras, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    a, b = loras
    exact = merge_loras("task_arithmetic", [(a, {}), (b, {})], output="lora", out_dir=tmp_path / "exact")
    assert exact.rank == 6 and exact.overall_error < 1e-5  # rank(dA + dB) <= 4 + 2
    assert set(exact.module_errors) >= {"model.layers.0.self_attn.k_proj", "model.layers.1.self_attn.v_proj"}
    cfg = json.loads((exact.path / "adapter_config.json").read_text())
    assert cfg["r"] == 6 and cfg["lora_alpha"] == 6
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), exact.path)
    refactored = model.merge_and_unload().state_dict()
    full = weights(
        merge_loras("task_arithmetic", [(a, {}), (b, {})], base_model=tiny_model_dir, out_dir=tmp_path / "full").path
    )
    for k, v in full.items():
        assert torch.allclose(refactored[k], v, atol=1e-5), k
    low = merge_loras("task_arithmetic", [(a, {}), (b, {})], output="lora", rank=1, out_dir=tmp_path / "r1")
    assert low.overall_error > 0.05 and all(0 <= e <= 1 for e in low.module_errors.values())
    assert "relative Frobenius error" in (low.path / "README.md").read_text()
    again = merge_loras("task_arithmetic", [(a, {}), (b, {})], output="lora", rank=1, out_dir=tmp_path / "r1")
    assert again.cached and again.overall_error == pytest.approx(low.overall_error)


def test_lora_errors(tiny_model_dir, loras, tmp_path):
    with pytest.raises(MergeError, match="not a PEFT LoRA folder"):
        merge_loras("linear", [(tmp_path, {})], base_model=tiny_model_dir)
    with pytest.raises(MergeError, match="did you mean"):
        merge_loras("lineer", [(loras[0], {})], base_model=tiny_model_dir)
