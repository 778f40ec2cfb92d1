"""`train lora|dora|ia3|adalora`: each PEFT method trains on the tiny model,
learns a memorisable set, and the adapter host applies what it saved exactly
as PEFT's own PeftModel does (DoRA's magnitude, IA3's vectors, AdaLoRA's
SVD form); the options of each method are one table, checked before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmlang.errors import CheckError, LmlangRuntimeError
from lmlang.frontend import build_file
from lmlang.models import options as model_options
from lmlang.models.training import normalize_options, train_lora

METHODS = ("lora", "dora", "ia3", "adalora")
# Small enough to run in seconds; lr high enough that 4 rows are learned. A
# random tiny model's logits are bounded by its small random lm_head, so
# adapting attention alone cannot lower the loss much: every method adapts
# lm_head too (as tests/models/test_training.py does).
_TARGETS = ["q_proj", "v_proj", "lm_head"]
# DoRA on the tiny model's lm_head is NaN in PEFT itself (a zero row of the tied
# embedding has norm 0, so m / ||W|| is 0 / 0): DoRA adapts every linear layer else.
_DORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FAST = {
    "lora": {"rank": 4, "alpha": 8, "lr": 0.05, "target_modules": _TARGETS},
    "dora": {"rank": 4, "alpha": 8, "lr": 0.1, "target_modules": _DORA_TARGETS},
    "ia3": {"lr": 0.3, "target_modules": ["k_proj", "v_proj", "down_proj", "lm_head"]},
    "adalora": {"init_r": 6, "target_r": 2, "alpha": 8, "lr": 0.05, "target_modules": _TARGETS},
}
ROWS = [
    {"prompt": "Review: I loved this film", "completion": "positive"},
    {"prompt": "Review: Terrible service", "completion": "negative"},
    {"prompt": "Review: Great food!", "completion": "positive"},
    {"prompt": "Review: no", "completion": "negative"},
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("methods") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return path


class _Loaded:
    """What AdapterHost needs of a LoadedModel: the model and its host slot."""

    def __init__(self, model):
        self.model, self.adapter_host, self.tokenizer = model, None, None


def _base(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.mark.parametrize("method", METHODS)
def test_each_method_learns_and_the_host_applies_it_as_peft_does(method, tiny_model_dir, data, lmlang_home):
    from peft import PeftModel

    from lmlang.models.adapters import AdapterHost

    opts = {**FAST[method], "epochs": 12, "batch_size": 2, "max_length": 64, "method": method}
    result = train_lora(tiny_model_dir, data, opts, progress=False)
    meta = json.loads((result.path / "lmlang_adapter.json").read_text())
    losses = meta["epoch_losses"]
    assert result.steps == 24
    if method == "dora":  # without lm_head the tiny model's loss moves less (see _DORA_TARGETS)
        assert losses[-1] < losses[0] - 0.4, losses
    else:
        assert losses[-1] < 0.5 * losses[0], losses
    config = json.loads((result.path / "adapter_config.json").read_text())
    assert config["peft_type"] == ("LORA" if method in ("lora", "dora") else method.upper())
    assert bool(config.get("use_dora")) == (method == "dora")

    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 2, 50, 60, 70]])
    base = _base(tiny_model_dir)
    plain = base(input_ids=ids).logits
    host = AdapterHost(_Loaded(base))
    host.add(method, result.path)
    with torch.no_grad(), host.activate(((method, 1.0),)):
        ours = base(input_ids=ids).logits
    host.close()
    peft = PeftModel.from_pretrained(_base(tiny_model_dir), str(result.path)).eval()
    with torch.no_grad():
        theirs = peft(input_ids=ids).logits
    assert (plain - theirs).abs().max() > 1e-2  # the adapter changes the model, so equality means something
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_methods_have_their_own_cache_keys(tiny_model_dir, data, lmlang_home):
    lora = normalize_options({"rank": 4})
    dora = normalize_options({"rank": 4, "method": "dora"})
    assert "method" not in lora  # plain lora keeps the key it always had: old adapters stay cached
    assert {k: v for k, v in dora.items() if k != "method"} == lora and dora["method"] == "dora"


@pytest.mark.parametrize(
    "method, options, message, hint",
    [
        ("ia3", {"rank": 4}, "unknown training option 'rank' for train ia3", "'rank' is an option of lora and dora"),
        ("adalora", {"init": 4}, "unknown training option 'init' for train adalora", "did you mean 'init_r'?"),
        ("adalora", {"init_r": 4, "target_r": 8}, "target_r (8) is above init_r (4)", "prunes"),
        (
            "ia3",
            {"feedforward_modules": ["up_proj"]},
            "feedforward module 'up_proj' is not one of the target_modules",
            "list it in target_modules",
        ),
        ("ia3", {"feedforward_modules": []}, "feedforward_modules takes a non-empty list", ""),
    ],
)
def test_method_options_are_one_table(method, options, message, hint):
    _, problems = model_options.normalize_train_options(options, method)
    assert problems and problems[0].message.startswith(message) and hint in problems[0].hint
    with pytest.raises(LmlangRuntimeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        normalize_options({**options, "method": method})


def _check(tmp_path: Path, text: str) -> list:
    (tmp_path / "d.jsonl").write_text(json.dumps(ROWS[0]) + "\n", encoding="utf-8")
    (tmp_path / "main.lm").write_text(text, encoding="utf-8")
    try:
        build_file(tmp_path / "main.lm")
    except CheckError as e:
        return list(e.diagnostics)
    return []


def test_the_checker_reads_each_methods_table_with_positions(tmp_path):
    assert _check(tmp_path, 'adapter a = train dora on "d.jsonl" { rank: 4, alpha: 8 }\n') == []
    assert _check(tmp_path, 'adapter a = train ia3 on "d.jsonl" { feedforward_modules: ["down_proj"] }\n') == []
    (d,) = _check(tmp_path, 'adapter a = train dorra on "d.jsonl" { rank: 4 }\n')
    assert d.message == "unknown training method 'dorra'" and d.hint == "did you mean 'dora'?"
    (d,) = _check(tmp_path, 'adapter a = train ia3 on "d.jsonl" {\n    rank: 4 }\n')
    assert d.message == "unknown training option 'rank' for train ia3" and (d.span.line, d.span.col) == (2, 5)
    (d,) = _check(tmp_path, 'adapter a = train adalora on "d.jsonl" { init_r: 4,\n  target_r: 6 }\n')
    assert d.message == "target_r (6) is above init_r (4)" and d.span.line == 2


def test_merging_a_non_lora_adapter_is_refused_at_check_time(tmp_path):
    text = (
        'adapter a = train lora on "d.jsonl" {}\n'
        'adapter b = train ia3 on "d.jsonl" {}\n'
        "adapter m = merge ties { models: [a, b], density: 0.5 }\n"
        "model n = merge ties { base: default, models: [default + a, default + b], density: 0.5 }\n"
    )
    diagnostics = _check(tmp_path, text)
    assert [d.message for d in diagnostics] == [
        "adapter 'b' is a ia3 adapter; merges combine LoRA deltas only",
    ] * 2
    assert [d.span.line for d in diagnostics] == [3, 4]
    # a folder's own config says what it is
    (tmp_path / "dora").mkdir()
    (tmp_path / "dora" / "adapter_config.json").write_text('{"peft_type": "LORA", "use_dora": true}')
    diagnostics = _check(
        tmp_path,
        'adapter a = train lora on "d.jsonl" {}\nadapter b = lora "dora"\nadapter m = merge linear { models: [a, b] }\n',
    )
    assert [d.message for d in diagnostics] == ["adapter 'b' is a dora adapter; merges combine LoRA deltas only"]


def test_the_host_refuses_a_dora_config_without_magnitudes(tiny_model_dir, data, lmlang_home, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from lmlang.models.adapters import AdapterHost

    result = train_lora(tiny_model_dir, data, {**FAST["lora"], "epochs": 1, "max_length": 64}, progress=False)
    folder = tmp_path / "fake-dora"
    shutil.copytree(result.path, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    save_file(load_file(str(folder / "adapter_model.safetensors")), str(folder / "adapter_model.safetensors"))
    host = AdapterHost(_Loaded(_base(tiny_model_dir)))
    with pytest.raises(LmlangRuntimeError, match="a DoRA adapter \\(use_dora\\) needs its lora_magnitude_vector"):
        host.add("x", folder)
