"""ComPEFT compression of LoRA folders (lmlang.merge.compress) on the tiny model:
the stored factors and scales against a direct computation, loading in PEFT
and in lmlang's adapter host, sizes, the packed form, the cache."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from lmlang.errors import MergeError
from lmlang.merge.compress import balance_factors, compress_lora, unpack

TOKENS = torch.tensor([[5, 17, 42, 99, 7, 230, 12], [3, 150, 88, 61, 19, 44, 301]])


def make_lora(model_dir, out, seed, r=4, alpha=8, targets=("q_proj", "v_proj"), **extra):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    peft = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False, **extra)
    )
    peft.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def lora(tiny_model_dir, tmp_path_factory):
    return make_lora(tiny_model_dir, tmp_path_factory.mktemp("compress") / "a", seed=3)


@pytest.fixture(scope="module")
def lora_rs(tiny_model_dir, tmp_path_factory):
    return make_lora(
        tiny_model_dir,
        tmp_path_factory.mktemp("compress") / "rs",
        seed=4,
        r=2,
        alpha=4,
        targets=("k_proj", "down_proj"),
        use_rslora=True,
    )


def factors(folder):
    """module -> (A, B, alpha / r) as PEFT reads the folder."""
    cfg = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(folder / "adapter_model.safetensors")
    out = {}
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        module = key.removeprefix("base_model.model.").replace(".lora_A.weight", "")
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        r = cfg["r"]
        scale = cfg["lora_alpha"] / (math.sqrt(r) if cfg.get("use_rslora") else r)
        out[module] = (a.float(), b.float(), scale)
    return out


def top_fraction_signs(x: torch.Tensor, density: float) -> torch.Tensor:
    """sign(x) on the top `density` fraction of |x| (by a full sort), 0 elsewhere."""
    k = max(1, int(density * x.numel()))
    order = torch.sort(x.abs().reshape(-1), descending=True, stable=True).indices[:k]
    keep = torch.zeros(x.numel(), dtype=torch.bool)
    keep[order] = True
    return torch.sign(x) * keep.reshape(x.shape)


def peft_merged(base_dir, adapter_dir) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir)
    return {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}


def base_weights(base_dir) -> dict:
    return load_file(base_dir / "model.safetensors")


def test_full_density_without_quantization_is_lossless(lora, tmp_path):
    res = compress_lora(lora, density=1.0, quantize="none", out_dir=tmp_path / "c")
    assert res.overall_error == pytest.approx(0.0, abs=1e-7) and not res.cached
    a, b = load_file(lora / "adapter_model.safetensors"), load_file(res.path / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((res.path / "adapter_config.json").read_text())["lora_alpha"] == 8


@pytest.mark.parametrize("which", ["lora", "lora_rs"])
def test_ternary_matches_direct_computation_and_loads_in_peft(which, request, tiny_model_dir, tmp_path):
    src = request.getfixturevalue(which)
    res = compress_lora(src, density=0.5, quantize="ternary", balance=False, out_dir=tmp_path / "c")
    stored = load_file(res.path / "adapter_model.safetensors")
    assert all(t.dtype == torch.int8 and set(t.unique().tolist()) <= {-1, 0, 1} for t in stored.values())
    merged = peft_merged(tiny_model_dir, res.path)
    base = base_weights(tiny_model_dir)
    diff_sq = norm_sq = 0.0
    for module, (a, b, scale) in factors(src).items():
        exact = scale * (b @ a)
        signs = top_fraction_signs(b, 0.5) @ top_fraction_signs(a, 0.5)
        c = float((exact * signs).sum() / (signs * signs).sum())  # least-squares scale
        expect = c * signs
        name = module + ".weight"
        assert torch.allclose(merged[name], base[name] + expect, atol=1e-5), module
        err = float(torch.linalg.matrix_norm(exact - expect) / torch.linalg.matrix_norm(exact))
        assert res.module_errors[module] == pytest.approx(err, rel=1e-4)
        diff_sq += float(((exact - expect) ** 2).sum())
        norm_sq += float((exact**2).sum())
    assert res.overall_error == pytest.approx(math.sqrt(diff_sq / norm_sq), rel=1e-4)
    assert 0 < res.overall_error < 1


def svd_balanced(a, b):
    """B' = U S^1/2, A' = S^1/2 V^T from a direct SVD of the product B A."""
    u, s, vh = torch.linalg.svd((b @ a).double(), full_matrices=False)
    r = a.shape[0]
    return (s[:r].sqrt()[:, None] * vh[:r]).float(), (u[:, :r] * s[:r].sqrt()).float()


def test_balance_factors_keeps_the_product_and_splits_the_singular_values(lora):
    for module, (a, b, _) in factors(lora).items():
        ba, bb = balance_factors(a, b)
        assert ba.shape == a.shape and bb.shape == b.shape
        assert torch.allclose(bb @ ba, b @ a, atol=1e-6), module
        s = torch.linalg.svdvals((b @ a).double())[: a.shape[0]]
        # B'^T B' = A' A'^T = diag(S): orthogonal components, the singular values shared evenly.
        assert torch.allclose((bb.T @ bb).double(), torch.diag(s), atol=1e-5), module
        assert torch.allclose((ba @ ba.T).double(), torch.diag(s), atol=1e-5), module


def ternary_direct(a, b, scale, density):
    """(c * signs, relative error) of least-squares-scaled ternary factors."""
    exact = scale * (b @ a)
    signs = top_fraction_signs(b, density) @ top_fraction_signs(a, density)
    c = float((exact * signs).sum() / (signs * signs).sum())
    return c * signs, float(torch.linalg.matrix_norm(exact - c * signs) / torch.linalg.matrix_norm(exact))


@pytest.mark.parametrize("which,density", [("lora", 0.5), ("lora_rs", 0.5), ("lora", 0.15)])
def test_each_module_keeps_the_better_of_trained_and_balanced_factors(
    which, density, request, tiny_model_dir, tmp_path
):
    src = request.getfixturevalue(which)
    res = compress_lora(src, density=density, quantize="ternary", out_dir=tmp_path / "c")
    raw = compress_lora(src, density=density, quantize="ternary", balance=False, out_dir=tmp_path / "raw")
    merged, base = peft_merged(tiny_model_dir, res.path), base_weights(tiny_model_dir)
    chose_balanced = 0
    for module, (a, b, scale) in factors(src).items():
        # A sign flip of one component flips both factors: the product of their signs is unchanged.
        as_trained = ternary_direct(a, b, scale, density)
        balanced = ternary_direct(*svd_balanced(a, b), scale, density)
        expect, err = min(as_trained, balanced, key=lambda x: x[1])
        chose_balanced += balanced[1] < as_trained[1]
        name = module + ".weight"
        assert torch.allclose(merged[name], base[name] + expect, atol=1e-5), module
        assert res.module_errors[module] == pytest.approx(err, rel=1e-4)
    assert res.balanced_modules == chose_balanced
    assert res.overall_error <= raw.overall_error


def test_lmlang_adapter_host_loads_what_peft_loads(lora, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmlang.models.adapters import AdapterHost
    from lmlang.models.loader import LoadedModel

    res = compress_lora(lora, density=0.3, quantize="ternary", out_dir=tmp_path / "c")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    host = AdapterHost(
        LoadedModel(model, AutoTokenizer.from_pretrained(tiny_model_dir), "cpu", "float32", tiny_model_dir, "t")
    )
    host.add("small", res.path)
    with torch.no_grad(), host.activate((("small", 1.0),)):
        ours = model(input_ids=TOKENS).logits
    ref_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ref_model.load_state_dict(peft_merged(tiny_model_dir, res.path), strict=False)
    with torch.no_grad():
        ref = ref_model(input_ids=TOKENS).logits
    assert torch.allclose(ours, ref, atol=1e-4)


def test_int8_and_alpha_rules(lora, tiny_model_dir, tmp_path):
    res = compress_lora(lora, density=1.0, quantize="int8", balance=False, out_dir=tmp_path / "i8")
    assert res.scale_rule == "absmax" and res.overall_error < 0.01
    merged, base = peft_merged(tiny_model_dir, res.path), base_weights(tiny_model_dir)
    for module, (a, b, scale) in factors(lora).items():
        qa = torch.round(a / (a.abs().max() / 127))
        qb = torch.round(b / (b.abs().max() / 127))
        expect = scale * (a.abs().max() / 127) * (b.abs().max() / 127) * (qb @ qa)
        assert torch.allclose(merged[module + ".weight"], base[module + ".weight"] + expect, atol=1e-5), module

    ternary = compress_lora(lora, density=0.5, quantize="ternary", alpha=2.0, balance=False, out_dir=tmp_path / "alpha")
    assert ternary.scale_rule == "alpha_std"
    cfg = json.loads((ternary.path / "adapter_config.json").read_text())
    for module, (a, b, scale) in factors(lora).items():
        c = (2.0 * float(a.std())) * (2.0 * float(b.std())) * scale
        key = next(k for k in cfg["alpha_pattern"] if k.replace("\\", "") == module)
        assert cfg["alpha_pattern"][key] == pytest.approx(c * cfg["r"], rel=1e-6)


def test_sizes_and_packed_round_trip(lora, tmp_path):
    res = compress_lora(lora, density=0.1, quantize="ternary", packed=True, out_dir=tmp_path / "p")
    assert res.original_bytes == (lora / "adapter_model.safetensors").stat().st_size
    assert res.bytes == (res.path / "adapter_model.safetensors").stat().st_size
    assert 0.2 < res.size_ratio < 0.35  # one byte per fp32 entry, plus the header
    assert res.packed_ratio < 0.1 and res.packed_bytes < res.bytes
    back = unpack(res.path, tmp_path / "back")
    a, b = load_file(res.path / "adapter_model.safetensors"), load_file(back / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    dense = compress_lora(lora, density=0.9, quantize="ternary", out_dir=tmp_path / "d")
    assert dense.packed_bytes > res.packed_bytes and dense.overall_error < res.overall_error


def test_cache_and_errors(lora, tmp_path, lmlang_home):
    first = compress_lora(lora, density=0.2, quantize="int8")
    again = compress_lora(lora, density=0.2, quantize="int8")
    assert str(first.path).startswith(str(lmlang_home)) and again.cached and not first.cached
    assert again.path == first.path and again.overall_error == first.overall_error
    assert again.module_errors == first.module_errors
    with pytest.raises(MergeError, match=r"density must be a number in \(0, 1\]"):
        compress_lora(lora, density=0.0)
    with pytest.raises(MergeError, match="did you mean 'ternary'"):
        compress_lora(lora, quantize="ternery")
    with pytest.raises(MergeError, match="ternary only"):
        compress_lora(lora, quantize="int8", alpha=1.0)
    with pytest.raises(MergeError, match="not a PEFT adapter folder|folder not found"):
        compress_lora(tmp_path / "missing")
    dora = tmp_path / "dora"
    dora.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (dora / name).write_bytes((lora / name).read_bytes())
    cfg = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(MergeError, match="DoRA"):
        compress_lora(dora)
