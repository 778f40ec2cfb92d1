"""LoRA training on the tiny model: data shape, labels, determinism, cache, learning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmlang.errors import DataError, LmlangRuntimeError
from lmlang.models.training import collate, encode_rows, normalize_options, read_rows, train_lora

FAST = {"rank": 4, "alpha": 8, "epochs": 1, "batch_size": 4, "max_length": 64}


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def toy_rows(n: int = 8):
    return [
        {"prompt": f"Review: {w}", "completion": "positive" if i % 2 == 0 else "negative"}
        for i, w in enumerate(
            ["I loved this film", "Terrible service", "Great food!", "no", "yes true", "abc", "Paris", "Rome"][:n]
        )
    ]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


# ---------------------------------------------------------------- data shape

GOOD = {"prompt": "a", "completion": "b"}


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"prompt": "a", "completion": ', "invalid JSON"),
        ('["prompt", "completion"]', "expected a JSON object"),
        ('{"prompt": "a"}', "missing key 'completion'"),
        ('{"completion": "b"}', "missing key 'prompt'"),
        ('{"prompt": 3, "completion": "b"}', "prompt must be a string"),
        ('{"prompt": "a", "completion": ""}', "empty completion"),
        ('{"messages": "hi"}', "messages must be a non-empty list"),
        ('{"messages": [{"role": "user"}]}', "messages[0] must be an object"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "the last message must be the assistant's"),
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}',
            "last assistant message is empty",
        ),
        ('{"messages": [{"role": "assistant", "content": "x"}], "prompt": "a"}', "not both"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, bad_line, message):
    data = write_jsonl(tmp_path / "data.jsonl", [GOOD, "", GOOD, bad_line, GOOD])
    with pytest.raises(DataError) as info:
        read_rows(data)
    assert f"{data}:4: " in str(info.value)
    assert message in str(info.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="training data not found"):
        read_rows(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no training rows"):
        read_rows(write_jsonl(tmp_path / "empty.jsonl", ["", "  "]))


def test_bad_row_fails_before_training(tiny_model_dir, tmp_path, lmlang_home):
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD, '{"prompt": "x"}'])
    with pytest.raises(DataError, match=r"d.jsonl:2: missing key 'completion'"):
        train_lora(tiny_model_dir, data, FAST, progress=False)


def test_labels_cover_only_the_completion(tokenizer, tmp_path):
    data = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "Review: Great food!", "completion": "positive"},
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "What is 12 * 7?"},
                    {"role": "assistant", "content": "84"},
                ]
            },
        ],
    )
    examples = encode_rows(tokenizer, read_rows(data), 64, data)
    first, second = examples
    answer = [t for t, label in zip(first.input_ids, first.labels) if label != -100]
    assert [label for label in first.labels if label != -100] == answer
    assert first.labels[: len(first.labels) - len(answer)] == [-100] * (len(first.labels) - len(answer))
    assert tokenizer.decode(answer) == "positive<|im_end|>\n"
    prompt = tokenizer.decode(first.input_ids[: len(first.input_ids) - len(answer)])
    assert prompt == "<|im_start|>user\nReview: Great food!<|im_end|>\n<|im_start|>assistant\n"
    assert (
        tokenizer.decode([t for t, label in zip(second.input_ids, second.labels) if label != -100]) == "84<|im_end|>\n"
    )
    assert "Be brief." in tokenizer.decode(second.input_ids)

    ids, mask, labels = collate(examples, tokenizer.pad_token_id)
    short = min(range(2), key=lambda i: len(examples[i].input_ids))
    n = len(examples[short].input_ids)
    assert mask[short, n:].sum() == 0 and (labels[short, n:] == -100).all()
    assert (ids[short, n:] == tokenizer.pad_token_id).all()


def test_plain_concatenation_without_chat_template(tokenizer, tmp_path):
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Q: 12 * 7? ", "completion": "84"}])
    (example,) = encode_rows(plain, read_rows(data), 64, data)
    answer = [t for t, label in zip(example.input_ids, example.labels) if label != -100]
    assert answer[-1] == plain.eos_token_id
    assert plain.decode(example.input_ids, skip_special_tokens=True) == "Q: 12 * 7? 84"


def test_truncation_keeps_the_completion(tokenizer, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "word " * 100, "completion": "positive"}])
    (example,) = encode_rows(tokenizer, read_rows(data), 16, data)
    assert len(example.input_ids) == 16
    assert (
        tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label != -100])
        == "positive<|im_end|>\n"
    )


# ---------------------------------------------------------------- options


def test_options_normalized_and_checked():
    opts = normalize_options({"target_modules": ["v_proj", "q_proj", "q_proj"], "alpha": 32})
    assert opts["target_modules"] == ["q_proj", "v_proj"] and opts["rank"] == 8
    assert opts["alpha"] == 32.0 and isinstance(opts["alpha"], float)
    assert normalize_options({"alpha": 32.0}) == opts | {"target_modules": ["q_proj", "v_proj"]}
    with pytest.raises(LmlangRuntimeError, match="unknown training option 'rnak'") as info:
        normalize_options({"rnak": 4})
    assert "did you mean 'rank'" in info.value.render()
    for bad in ({"rank": 0}, {"epochs": 1.5}, {"lr": -1}, {"dropout": 1.0}, {"target_modules": []}, {"seed": "x"}):
        with pytest.raises(LmlangRuntimeError):
            normalize_options(bad)


def test_unknown_target_module(tiny_model_dir, tmp_path, lmlang_home):
    data = write_jsonl(tmp_path / "d.jsonl", toy_rows(2))
    with pytest.raises(LmlangRuntimeError, match="target module 'qproj' does not exist") as info:
        train_lora(tiny_model_dir, data, {**FAST, "target_modules": ["qproj"]}, progress=False)
    assert "did you mean 'q_proj'" in info.value.render()


# ---------------------------------------------------------------- training


def adapter_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_deterministic_per_seed(tiny_model_dir, tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "d.jsonl", toy_rows())
    runs = []
    for i, seed in enumerate([0, 0, 1]):
        monkeypatch.setenv("LMLANG_HOME", str(tmp_path / f"home{i}"))
        result = train_lora(tiny_model_dir, data, {**FAST, "dropout": 0.1, "seed": seed}, progress=False)
        assert not result.cached
        runs.append(adapter_tensors(result.path))
    same, other = runs[1], runs[2]
    assert runs[0].keys() == same.keys() and all(torch.equal(runs[0][k], same[k]) for k in same)
    assert any(not torch.equal(runs[0][k], other[k]) for k in other)


def test_cache_reuse_and_atomic_layout(tiny_model_dir, tmp_path, lmlang_home):
    data = write_jsonl(tmp_path / "d.jsonl", toy_rows())
    first = train_lora(tiny_model_dir, data, FAST, progress=False)
    again = train_lora(tiny_model_dir, data, dict(reversed(list(FAST.items()))), progress=False)
    assert not first.cached and again.cached
    assert again.path == first.path and again.final_loss == first.final_loss and again.steps == 0
    assert first.path.parent == lmlang_home / "adapters"
    assert {p.name for p in first.path.iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
        "lmlang_adapter.json",
    }
    assert not list(first.path.parent.glob(".tmp-*"))
    other = train_lora(tiny_model_dir, data, {**FAST, "seed": 3}, progress=False)
    assert not other.cached and other.path != first.path
    write_jsonl(data, toy_rows() + [GOOD])
    assert not train_lora(tiny_model_dir, data, FAST, progress=False).cached


def test_training_learns_a_toy_set(tiny_model_dir, tmp_path, lmlang_home):
    # A random tiny model's logits are bounded by its small random lm_head (after the
    # final norm), so adapting attention alone cannot lower the loss much: adapt lm_head too.
    data = write_jsonl(tmp_path / "d.jsonl", toy_rows())
    options = {**FAST, "epochs": 12, "lr": 5e-2, "target_modules": ["q_proj", "v_proj", "lm_head"]}
    result = train_lora(tiny_model_dir, data, options, progress=False)
    losses = json.loads((result.path / "lmlang_adapter.json").read_text())["epoch_losses"]
    assert result.steps == 24 and len(losses) == 12
    assert result.final_loss == losses[-1] < 0.5 * losses[0]


def test_trained_adapter_loads_into_a_host(tiny_model_dir, tmp_path, lmlang_home):
    from transformers import AutoModelForCausalLM

    from lmlang.models.adapters import AdapterHost
    from lmlang.models.loader import LoadedModel

    data = write_jsonl(tmp_path / "d.jsonl", toy_rows(4))
    result = train_lora(tiny_model_dir, data, {**FAST, "lr": 1e-2}, progress=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    host = AdapterHost(LoadedModel(model, None, "cpu", "float32", tiny_model_dir, "tiny"))
    host.add("t", result.path)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with host.activate([("t", 1.0)]):
            tuned = model(input_ids=ids).logits
    assert not torch.allclose(base, tuned)


def test_progress_bar_runs(tiny_model_dir, tmp_path, lmlang_home, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", toy_rows(4))
    train_lora(tiny_model_dir, data, FAST, progress=True)
    assert "training LoRA" in capsys.readouterr().err


def test_head_on_completion_only_equals_full_loss(tiny_model_dir, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from lmlang.models.training import _full_logits_loss, _head_on_labels_only, _wrap

    data = write_jsonl(tmp_path / "d.jsonl", toy_rows(4))
    batch = collate(encode_rows(tokenizer, read_rows(data), 64, data), tokenizer.pad_token_id)
    peft_model = _wrap(AutoModelForCausalLM.from_pretrained(tiny_model_dir), normalize_options({}), tiny_model_dir)
    fast = _head_on_labels_only(peft_model, batch)
    assert fast is not None
    torch.testing.assert_close(fast(*batch), _full_logits_loss(peft_model)(*batch))
