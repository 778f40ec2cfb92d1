"""LoRA adapters on the tiny model: checks, scaling, stacking, switching, per-row stacks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lmlang.errors import LmlangRuntimeError
from lmlang.models.adapters import AdapterHost

TOKENS = torch.tensor(
    [
        [5, 17, 42, 99, 7, 230, 12],
        [3, 150, 88, 61, 19, 44, 301],
        [200, 9, 31, 77, 120, 6, 15],
        [8, 8, 270, 333, 41, 2, 90],
    ]
)


def load(model_dir: Path):
    """A fresh (uncached) LoadedModel: each test gets its own weights and host."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmlang.models.loader import LoadedModel

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return LoadedModel(model, AutoTokenizer.from_pretrained(model_dir), "cpu", "float32", model_dir, "tiny")


def make_lora(
    model_dir: Path, out: Path, seed: int, r: int = 4, alpha: int = 8, targets=("q_proj", "v_proj"), **extra
) -> Path:
    """A PEFT LoRA with random, non-zero A and B."""
    from peft import LoraConfig, get_peft_model

    base = load(model_dir).model
    torch.manual_seed(seed)
    peft_model = get_peft_model(
        base, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False, **extra)
    )
    peft_model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def lora_a(tiny_model_dir, tmp_path_factory):
    return make_lora(tiny_model_dir, tmp_path_factory.mktemp("lora") / "a", seed=1)


@pytest.fixture(scope="module")
def lora_b(tiny_model_dir, tmp_path_factory):
    return make_lora(
        tiny_model_dir,
        tmp_path_factory.mktemp("lora") / "b",
        seed=2,
        r=2,
        alpha=4,
        targets=("k_proj", "v_proj", "down_proj"),
    )


@pytest.fixture()
def host(tiny_model_dir, lora_a, lora_b):
    host = AdapterHost(load(tiny_model_dir))
    host.add("a", lora_a)
    host.add("b", lora_b)
    return host


def logits(model, ids=TOKENS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def merged_logits(model_dir: Path, parts: list[tuple[Path, float]], ids=TOKENS):
    """Reference: W + sum(s * alpha/r * B @ A) written into a fresh copy of the base."""
    from safetensors.torch import load_file

    model = load(model_dir).model
    params = dict(model.named_parameters())
    with torch.no_grad():
        for path, scale in parts:
            config = json.loads((path / "adapter_config.json").read_text())
            tensors = load_file(str(path / "adapter_model.safetensors"))
            for key, a in tensors.items():
                if ".lora_A." not in key:
                    continue
                b = tensors[key.replace(".lora_A.", ".lora_B.")]
                name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
                params[name] += scale * config["lora_alpha"] / config["r"] * (b @ a)
    return logits(model, ids)


def edited_copy(src: Path, dst: Path, config_edit=None, tensor_edit=None) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    if config_edit:
        config = json.loads((dst / "adapter_config.json").read_text())
        config_edit(config)
        (dst / "adapter_config.json").write_text(json.dumps(config))
    if tensor_edit:
        tensors = load_file(str(dst / "adapter_model.safetensors"))
        tensor_edit(tensors)
        save_file(tensors, str(dst / "adapter_model.safetensors"))
    return dst


# ---------------------------------------------------------------- checks

Q0 = "base_model.model.model.layers.0.self_attn.q_proj"


def _wrong_target(c):
    c["target_modules"] = ["q_projx", "v_proj"]


def _wrong_arch(c):
    c["auto_mapping"] = {"base_model_class": "GPT2LMHeadModel"}


def _rank(c):
    c["r"] = 8


def _dora(c):
    c["use_dora"] = True


def _shape_a(t):
    t[f"{Q0}.lora_A.weight"] = torch.randn(4, 32)


def _shape_b(t):
    t[f"{Q0}.lora_B.weight"] = torch.randn(48, 4)


def _rank_ab(t):
    t[f"{Q0}.lora_B.weight"] = torch.randn(64, 3)


def _missing_layer(t):
    t["base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight"] = torch.randn(4, 64)
    t["base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight"] = torch.randn(64, 4)


def _vocab(t):
    t["base_model.model.model.embed_tokens.lora_embedding_A"] = torch.randn(4, 500)
    t["base_model.model.model.embed_tokens.lora_embedding_B"] = torch.randn(64, 4)


def _vocab_save(t):
    t["base_model.model.lm_head.weight"] = torch.randn(512, 64)


def _half_pair(t):
    del t[f"{Q0}.lora_B.weight"]


@pytest.mark.parametrize(
    "config_edit, tensor_edit, message",
    [
        (_wrong_target, None, "target module 'q_projx' does not exist"),
        (_wrong_arch, None, "trained on a GPT2LMHeadModel"),
        (_rank, None, "the config says r=8, the weights have rank 4"),
        (_dora, None, "DoRA"),
        (None, _shape_a, "lora_A is (4, 32) but the base layer takes 64 inputs"),
        (None, _shape_b, "lora_B is (48, 4) but the base layer has 64 outputs"),
        (None, _rank_ab, "lora_A has rank 4, lora_B has rank 3"),
        (None, _missing_layer, "model.layers.7.self_attn.q_proj"),
        (None, _vocab, "vocabulary mismatch"),
        (None, _vocab_save, "vocabulary mismatch at lm_head"),
        (None, _half_pair, "only one of the two LoRA matrices"),
    ],
)
def test_adapter_checks(tiny_model_dir, lora_a, tmp_path, config_edit, tensor_edit, message):
    bad = edited_copy(lora_a, tmp_path / "bad", config_edit, tensor_edit)
    host = AdapterHost(load(tiny_model_dir))
    with pytest.raises(LmlangRuntimeError) as info:
        host.add("bad", bad)
    assert message in str(info.value)
    assert str(bad) in str(info.value)
    assert host.names == []


def test_wrong_target_hint(tiny_model_dir, lora_a, tmp_path):
    bad = edited_copy(lora_a, tmp_path / "bad", _wrong_target)
    with pytest.raises(LmlangRuntimeError) as info:
        AdapterHost(load(tiny_model_dir)).add("bad", bad)
    assert "did you mean 'q_proj'" in info.value.render()


def test_pickle_only_folder_is_refused(tiny_model_dir, lora_a, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(lora_a / "adapter_config.json", folder)
    (folder / "adapter_model.bin").write_bytes(b"not even opened")
    with pytest.raises(LmlangRuntimeError, match="refusing to load pickle weights adapter_model.bin"):
        AdapterHost(load(tiny_model_dir)).add("p", folder)


def test_missing_files(tiny_model_dir, tmp_path):
    host = AdapterHost(load(tiny_model_dir))
    with pytest.raises(LmlangRuntimeError, match="folder not found"):
        host.add("x", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmlangRuntimeError, match="missing adapter_config.json"):
        host.add("x", tmp_path / "empty")


def test_adapter_from_another_model_size(tiny_model_dir, tmp_path):
    from tiny import build_tiny_model

    wide = build_tiny_model(tmp_path / "wide", seed=0, hidden=32)
    lora = make_lora(wide, tmp_path / "wide_lora", seed=0)
    with pytest.raises(LmlangRuntimeError, match="shape mismatch"):
        AdapterHost(load(tiny_model_dir)).add("w", lora)


# ---------------------------------------------------------------- scaling, stacking, switching


def test_scale_zero_and_empty_stack_are_the_base(host):
    base = logits(host.model)
    with host.activate(()):
        assert torch.equal(logits(host.model), base)
    with host.activate((("a", 0.0),)):
        assert torch.equal(logits(host.model), base)
    with host.activate((("a", 1.0),)):
        assert not torch.allclose(logits(host.model), base, atol=1e-3)


@pytest.mark.parametrize("scale", [1.0, 0.8, -0.5, 2.0])
def test_scale_matches_peft_merge(tiny_model_dir, lora_a, host, scale):
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    peft_model = PeftModel.from_pretrained(load(tiny_model_dir).model, lora_a)
    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            module.set_scale("default", scale)
    expected = logits(peft_model.merge_and_unload())
    with host.activate((("a", scale),)):
        got = logits(host.model)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_stack_is_the_sum_of_deltas(tiny_model_dir, lora_a, lora_b, host):
    expected = merged_logits(tiny_model_dir, [(lora_a, 0.8), (lora_b, 1.0)])
    with host.activate([("a", 0.8), ("b", 1.0)]):
        got = logits(host.model)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    # the same adapter twice adds its scales
    with host.activate([("a", 0.5), ("a", 0.3), ("b", 1.0)]):
        torch.testing.assert_close(logits(host.model), expected, atol=1e-5, rtol=1e-4)


def test_switching_never_touches_the_base(host):
    before = {k: v.clone() for k, v in host.model.state_dict().items()}
    base = logits(host.model)
    for stack in ([("a", 1.0)], [("b", 0.3)], [("a", 0.8), ("b", 1.0)], []):
        with host.activate(stack):
            logits(host.model)
    assert torch.equal(logits(host.model), base)
    after = host.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    host.close()
    assert torch.equal(logits(host.model), base)


def test_nested_activation_restores(host):
    with host.activate([("a", 1.0)]):
        a = logits(host.model)
        with host.activate([("b", 1.0)]):
            assert not torch.allclose(logits(host.model), a)
        assert torch.equal(logits(host.model), a)


def test_unknown_adapter_and_duplicate_name(host, lora_b):
    with pytest.raises(LmlangRuntimeError, match="unknown adapter 'aa'") as info:
        with host.activate([("aa", 1.0)]):
            pass
    assert "did you mean 'a'" in info.value.render()
    with pytest.raises(LmlangRuntimeError, match="already used"):
        host.add("a", lora_b)


def test_one_host_per_model(host):
    assert AdapterHost.for_model(host.loaded) is host
    with pytest.raises(LmlangRuntimeError, match="already has an AdapterHost"):
        AdapterHost(host.loaded)


# ---------------------------------------------------------------- per-row stacks

ROW_STACKS = [(), (("a", 1.0),), (("b", 0.7),), (("a", 0.5), ("b", 1.0))]


@pytest.mark.parametrize("strategy", ["mixed", "grouped"])
def test_per_row_stacks_equal_one_by_one(host, strategy):
    expected = []
    for row, stack in enumerate(ROW_STACKS):
        with host.activate(stack):
            expected.append(logits(host.model, TOKENS[row : row + 1]))
    with torch.no_grad():
        got = host.forward_rows(ROW_STACKS, strategy=strategy, input_ids=TOKENS)
    torch.testing.assert_close(got, torch.cat(expected), atol=1e-5, rtol=1e-4)


def test_per_row_with_padding_and_cache(host, tiny_model_dir):
    """Mixed rows through generate(): left padding, KV cache, each row as if alone."""
    tok = host.loaded.tokenizer
    tok.padding_side = "left"
    prompts = ["The capital of France", "positive negative", "Q: What is 12 * 7?", "abc"]
    stacks = [(("a", 1.0),), (), (("b", 1.0),), (("a", 1.0),)]
    batch = tok(prompts, return_tensors="pt", padding=True)
    with host.activate_rows(stacks), torch.no_grad():
        out = host.model.generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    for row, (prompt, stack) in enumerate(zip(prompts, stacks)):
        single = tok([prompt], return_tensors="pt")
        with host.activate(stack), torch.no_grad():
            alone = host.model.generate(**single, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
        assert out[row, -5:].tolist() == alone[0, -5:].tolist()


def test_per_row_batch_size_must_match(host):
    with pytest.raises(LmlangRuntimeError, match="selected for 4 rows but a forward got a batch of 2"):
        with host.activate_rows(ROW_STACKS):
            logits(host.model, TOKENS[:2])


def test_per_row_stacks_follow_generate_expansion(host):
    """A batch that is a multiple of the rows (num_return_sequences, beams) repeats each row in place."""
    with host.activate_rows(ROW_STACKS):
        got = logits(host.model, TOKENS.repeat_interleave(3, dim=0))
    with torch.no_grad():
        expected = host.forward_rows(ROW_STACKS, strategy="grouped", input_ids=TOKENS)
    torch.testing.assert_close(got, expected.repeat_interleave(3, dim=0), atol=1e-5, rtol=1e-4)


def test_selection_is_per_thread(host):
    import threading

    base = logits(host.model)
    seen = {}
    inside, release = threading.Event(), threading.Event()

    def other_thread():
        seen["before"] = logits(host.model)
        inside.set()
        release.wait(10)

    with host.activate([("a", 1.0)]):
        thread = threading.Thread(target=other_thread)
        thread.start()
        inside.wait(10)
        tuned = logits(host.model)
        release.set()
        thread.join()
    assert torch.equal(seen["before"], base) and not torch.allclose(tuned, base)


def test_group_rows(host):
    groups = host.group_rows([(("a", 1.0),), (), (("a", 1.0),), (("b", 0.0),)])
    assert groups == [((("a", 1.0),), [0, 2]), ((), [1, 3])]


# ---------------------------------------------------------------- embeddings and modules_to_save


def test_embedding_lora_and_modules_to_save_match_peft(tiny_model_dir, tmp_path):
    from peft import PeftModel

    lora = make_lora(
        tiny_model_dir, tmp_path / "emb", seed=3, targets=("embed_tokens", "q_proj"), modules_to_save=["lm_head"]
    )
    # modules_to_save holds a copy of the base lm_head; make it differ
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(lora / "adapter_model.safetensors"))
    tensors["base_model.model.lm_head.weight"] = tensors["base_model.model.lm_head.weight"] + 0.05 * torch.randn_like(
        tensors["base_model.model.lm_head.weight"]
    )
    save_file(tensors, str(lora / "adapter_model.safetensors"))

    expected = logits(PeftModel.from_pretrained(load(tiny_model_dir).model, lora).eval())
    host = AdapterHost(load(tiny_model_dir))
    host.add("e", lora)
    with host.activate([("e", 1.0)]):
        torch.testing.assert_close(logits(host.model), expected, atol=1e-5, rtol=1e-4)
