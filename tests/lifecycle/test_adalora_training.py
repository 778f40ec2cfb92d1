"""`train adalora`: the loop does what PEFT's AdaLoraModel needs of a trainer.
Its orthogonality regularizer (which PEFT adds only to a loss the model
computes from labels; lmlang's loop computes its own) enters the loss, equal
to PEFT's own term, and the rank budget ends at target_r (update_and_allocate
reaches its final step). Tiny model, seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmlang.models.training import adalora_orth_penalty, train_lora

_TARGETS = ["q_proj", "v_proj"]
ROWS = [
    {"prompt": "Review: I loved this film", "completion": "positive"},
    {"prompt": "Review: Terrible service", "completion": "negative"},
    {"prompt": "Review: Great food!", "completion": "positive"},
    {"prompt": "Review: no", "completion": "negative"},
]


@pytest.fixture()
def data(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return path


def _adalora(tiny_model_dir, orth_reg_weight: float):
    from peft import AdaLoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    cfg = AdaLoraConfig(
        init_r=6,
        target_r=2,
        total_step=10,
        target_modules=_TARGETS,
        orth_reg_weight=orth_reg_weight,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, cfg)


def test_the_penalty_is_peft_own_term(tiny_model_dir):
    """PEFT adds w * penalty to a loss computed from labels: ours is that term."""
    model = _adalora(tiny_model_dir, 0.5)
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 2, 50]])
    out = model(input_ids=ids, labels=ids)
    ce = torch.nn.functional.cross_entropy(out.logits[0, :-1], ids[0, 1:])
    penalty = adalora_orth_penalty(model)
    assert float(penalty) > 0.1  # a fresh adapter is far from orthogonal: the comparison means something
    torch.testing.assert_close(out.loss - ce, 0.5 * penalty, rtol=1e-4, atol=1e-5)
    penalty.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_A" in n)


def _trained_penalty(tiny_model_dir, folder: Path) -> float:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(folder), is_trainable=True)
    with torch.no_grad():
        return float(adalora_orth_penalty(model))


def test_training_uses_the_penalty_and_ends_at_the_target_rank(tiny_model_dir, data, lmlang_home):
    opts = {"method": "adalora", "init_r": 6, "target_r": 2, "alpha": 8, "lr": 0.05, "target_modules": _TARGETS}
    opts |= {"epochs": 6, "batch_size": 2, "max_length": 64}
    with_reg = train_lora(tiny_model_dir, data, {**opts, "orth_reg_weight": 0.5}, progress=False)
    without = train_lora(tiny_model_dir, data, {**opts, "orth_reg_weight": 0.0}, progress=False)
    assert with_reg.path != without.path  # the weight is part of the adapter's cache key
    assert _trained_penalty(tiny_model_dir, with_reg.path) < 0.7 * _trained_penalty(tiny_model_dir, without.path)

    config = json.loads((with_reg.path / "adapter_config.json").read_text())
    pattern = config["rank_pattern"]
    assert pattern and config["orth_reg_weight"] == 0.5
    kept = sum(sum(bool(x) for x in mask) for mask in pattern.values())
    assert kept == 2 * len(pattern)  # the final budget: target_r per module on average
