"""aTLAS (lmlang.merge.atlas) on the tiny model: coefficients move the right
way on a toy objective, and the written folder is base + sum c * delta."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lmlang.errors import MergeError
from lmlang.merge.atlas import fit_atlas, fit_coefficients, group_of
from lmlang.merge.lora import load_lora

IDS = torch.tensor([[5, 17, 42, 99, 7, 230], [3, 150, 88, 61, 19, 44]])


def make_lora(model_dir, out, seed, r=4, targets=("q_proj", "v_proj")):
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
    root = tmp_path_factory.mktemp("atlas_experts")
    return [
        ("a", make_lora(tiny_model_dir, root / "a", 1)),
        ("b", make_lora(tiny_model_dir, root / "b", 2, r=2, targets=("k_proj", "v_proj", "down_proj"))),
    ]


@pytest.fixture()
def data(tmp_path):
    rows = [{"prompt": f"{i} + {i} =", "completion": f" {2 * i}"} for i in range(6)]
    path = tmp_path / "dev.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def test_groups():
    assert group_of("model.layers.3.self_attn.q_proj.weight", "block") == "layer.3"
    assert group_of("model.embed_tokens.weight", "block") == "other"
    assert group_of("model.layers.3.mlp.down_proj.weight", "tensor") == "model.layers.3.mlp.down_proj.weight"
    assert group_of("model.layers.3.mlp.down_proj.weight", "model") == "model"


@pytest.mark.parametrize("granularity", ["model", "block"])
def test_coefficients_move_towards_the_expert_the_objective_wants(tiny_model_dir, experts, granularity):
    """Toy objective: match the logits of base + delta_a. The optimum is c_a = 1, c_b = 0."""
    deltas = [{n: m.delta() for n, m in load_lora(p).modules.items()} for _, p in experts]
    target_model = model(tiny_model_dir)
    params = dict(target_model.named_parameters())
    with torch.no_grad():
        for n, d in deltas[0].items():
            params[n] += d
        target = target_model(input_ids=IDS).logits

    def loss_fn(forward):
        return ((forward(input_ids=IDS).logits - target) ** 2).mean()

    base = model(tiny_model_dir)
    before = {n: p.clone() for n, p in base.named_parameters()}
    groups, coef, losses = fit_coefficients(base, deltas, granularity, loss_fn, init=0.5, steps=30, lr=0.05)
    assert groups == (["model"] if granularity == "model" else ["layer.0", "layer.1"])
    assert coef.shape == (len(groups), 2)
    assert (coef[:, 0] > 0.5).all() and (coef[:, 1] < 0.5).all()
    assert losses[-1] < 0.5 * losses[0]
    # The model's own weights are untouched (the forward is functional).
    assert all(torch.equal(p, before[n]) for n, p in base.named_parameters())


def test_fit_atlas_writes_base_plus_scaled_deltas(tiny_model_dir, experts, data, tmp_path, lmlang_home):
    res = fit_atlas(tiny_model_dir, experts, data, {"steps": 4, "lr": 0.05, "batch_size": 4}, out_dir=tmp_path / "m")
    assert not res.cached and res.experts == ["a", "b"] and res.groups == ["layer.0", "layer.1"]
    assert len(res.losses) == 4
    assert any(abs(res.coefficients[g][n] - 0.5) > 1e-4 for g in res.groups for n in res.experts)  # init 1/n, moved
    base = load_file(tiny_model_dir / "model.safetensors")
    merged = load_file(res.path / "model.safetensors")
    deltas = [load_lora(p).modules for _, p in experts]
    touched = set()
    for (name, _), mods in zip(experts, deltas):
        touched |= set(mods)
    for n in base:
        if n not in touched:
            assert torch.equal(merged[n], base[n]), n
            continue
        g = group_of(n, "block")
        expect = base[n].clone()
        for (name, _), mods in zip(experts, deltas):
            if n in mods:
                expect = expect + res.coefficients[g][name] * mods[n].delta()
        assert torch.allclose(merged[n], expect, atol=1e-6), n
    saved = json.loads((res.path / "atlas.json").read_text())
    assert saved["coefficients"] == res.coefficients
    again = fit_atlas(tiny_model_dir, experts, data, {"steps": 4, "lr": 0.05, "batch_size": 4}, out_dir=tmp_path / "m")
    assert again.cached and again.coefficients == res.coefficients
    # The default destination is the content-keyed cache under LMLANG_HOME; other data, another folder.
    cached = fit_atlas(tiny_model_dir, experts, data, {"steps": 1, "granularity": "model"})
    assert cached.path.parent == lmlang_home / "merges" and cached.groups == ["model"]
    data.write_text(data.read_text() + json.dumps({"prompt": "9 + 9 =", "completion": " 18"}) + "\n")
    assert fit_atlas(tiny_model_dir, experts, data, {"steps": 1, "granularity": "model"}).path != cached.path


def test_lora_output_and_full_model_experts(tiny_model_dir, experts, data, tmp_path):
    res = fit_atlas(
        tiny_model_dir, experts, data, {"steps": 2, "granularity": "tensor", "output": "lora"}, out_dir=tmp_path / "l"
    )
    out = load_lora(res.path).modules
    deltas = [load_lora(p).modules for _, p in experts]
    for n, mod in out.items():
        expect = sum(
            res.coefficients[n][name] * mods[n].delta() for (name, _), mods in zip(experts, deltas) if n in mods
        )
        assert torch.allclose(mod.delta(), expect, atol=1e-5), n
    # A full model folder as an expert: its delta is (expert - base) wherever they differ.
    full = fit_atlas(tiny_model_dir, experts, data, {"steps": 1}, out_dir=tmp_path / "full_a")
    mixed = fit_atlas(
        tiny_model_dir,
        [("full", full.path), experts[1]],
        data,
        {"steps": 2, "granularity": "model"},
        out_dir=tmp_path / "mixed",
    )
    base, f, m = (load_file(p / "model.safetensors") for p in (tiny_model_dir, full.path, mixed.path))
    c = mixed.coefficients["model"]
    n = "model.layers.0.self_attn.q_proj.weight"  # touched by expert a only (inside `full`)
    assert torch.allclose(m[n], base[n] + c["full"] * (f[n] - base[n]), atol=1e-6)


def test_errors(tiny_model_dir, experts, data, tmp_path):
    with pytest.raises(MergeError, match="granularity"):
        fit_atlas(tiny_model_dir, experts, data, {"granularity": "layer"})
    with pytest.raises(MergeError, match="unknown option 'step'"):
        fit_atlas(tiny_model_dir, experts, data, {"step": 3})
    with pytest.raises(MergeError, match="unique"):
        fit_atlas(tiny_model_dir, [experts[0], experts[0]], data)
    with pytest.raises(Exception, match="not found"):
        fit_atlas(tiny_model_dir, experts, tmp_path / "none.jsonl")
