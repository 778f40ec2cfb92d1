"""`train ... { compatible_with: OLD, flip_weight: w }` (MUSCLE): the term
KL(old || new) on rows the old model gets right is in the loss. The data is
built so that plain training flips a row the old model got right (three
conflicting copies outvote it) and the compatibility term keeps it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmlang.errors import CheckError, LmlangRuntimeError
from lmlang.frontend import build_file
from lmlang.models.training import train_lora

LOOP = {"rank": 4, "alpha": 8, "lr": 0.05, "epochs": 25, "batch_size": 4, "max_length": 64}
TARGETS = ["q_proj", "v_proj", "lm_head"]  # the tiny model learns little without its head
KEPT = "Review: I loved this film"
OLD_ROWS = [
    {"prompt": KEPT, "completion": "positive"},
    {"prompt": "Review: Terrible service", "completion": "negative"},
    {"prompt": "Review: Great food!", "completion": "positive"},
    {"prompt": "Review: no", "completion": "negative"},
]
# The update's data: the kept row once, outvoted by three copies that say otherwise.
NEW_ROWS = OLD_ROWS + [{"prompt": KEPT, "completion": "negative"}] * 3


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


class _Loaded:
    def __init__(self, model):
        self.model, self.adapter_host, self.tokenizer = model, None, None


def _first_answer_token(tiny_model_dir, stack_folders) -> int:
    """The argmax at the first completion position of the kept row under base + adapters."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmlang.models.adapters import AdapterHost

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": KEPT}], add_generation_prompt=True, tokenize=False
    )
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    host = AdapterHost(_Loaded(model))
    for i, folder in enumerate(stack_folders):
        host.add(f"a{i}", folder)
    with torch.no_grad(), host.activate(tuple((f"a{i}", 1.0) for i in range(len(stack_folders)))):
        return int(model(input_ids=ids).logits[0, -1].argmax())


def test_the_flip_term_keeps_a_row_the_old_model_got_right(tiny_model_dir, tmp_path, lmlang_home):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    positive = tokenizer("positive", add_special_tokens=False)["input_ids"][0]
    old = train_lora(
        tiny_model_dir, _write(tmp_path / "old.jsonl", OLD_ROWS), {**LOOP, "target_modules": TARGETS}, progress=False
    )
    assert _first_answer_token(tiny_model_dir, [old.path]) == positive  # the old model is right on the kept row

    data = _write(tmp_path / "new.jsonl", NEW_ROWS)
    plain = train_lora(tiny_model_dir, data, {**LOOP, "target_modules": TARGETS}, progress=False)
    assert _first_answer_token(tiny_model_dir, [plain.path]) != positive  # without the term, the row flips

    compat = (Path(tiny_model_dir), ((old.path, 1.0),))
    kept = train_lora(
        tiny_model_dir,
        data,
        {**LOOP, "target_modules": TARGETS, "flip_weight": 20.0},
        progress=False,
        compatible_with=compat,
    )
    assert kept.path != plain.path  # the old model and the weight are in the cache key
    assert _first_answer_token(tiny_model_dir, [kept.path]) == positive
    meta = json.loads((kept.path / "lmlang_adapter.json").read_text())
    assert meta["options"]["flip_weight"] == 20.0 and meta["options"]["compatible_with"]["adapters"][0][1] == 1.0


def test_flip_weight_needs_compatible_with(tiny_model_dir, tmp_path, lmlang_home):
    data = _write(tmp_path / "d.jsonl", OLD_ROWS)
    with pytest.raises(LmlangRuntimeError, match="flip_weight needs compatible_with"):
        train_lora(tiny_model_dir, data, {"flip_weight": 1.0}, progress=False)
    (tmp_path / "main.lm").write_text(
        'model base = default\nadapter a = train lora on "d.jsonl" { rank: 4 }\n'
        'adapter b = train dora on "d.jsonl" { compatible_with: base + a, flip_weight: 2.0 }\n'
        'adapter c = train lora on "d.jsonl" {\n  flip_weight: 1.0 }\n'
        'adapter e = train lora on "d.jsonl" { compatible_with: base + a, flip_weight: -1 }\n',
        encoding="utf-8",
    )
    with pytest.raises(CheckError) as info:
        build_file(tmp_path / "main.lm")
    assert [(d.message, d.span.line) for d in info.value.diagnostics] == [
        ("flip_weight needs compatible_with", 5),
        ("training option 'flip_weight' must be at least 0", 6),
    ]


def test_a_script_trains_an_update_against_its_old_model(tiny_model_dir, tmp_path, lmlang_home):
    import lmlang

    old_data, new_data = _write(tmp_path / "old.jsonl", OLD_ROWS), _write(tmp_path / "new.jsonl", NEW_ROWS)
    src = f'''
model base = "{tiny_model_dir}"
adapter senti = train lora on "{old_data}" {{ base: base, rank: 4, epochs: 1 }}
adapter senti2 = train ia3 on "{new_data}" {{ base: base, epochs: 1, compatible_with: base + senti * 0.5, flip_weight: 3 }}
query q(x: str) using base + senti2 {{ "{{x}} [v]" where v in ["positive", "negative"] }}
flow {{ r = q("Review: no") emit v = r.v }}
'''
    assert lmlang.compile(src).run()["v"] in ("positive", "negative")
    metas = [json.loads(p.read_text()) for p in (lmlang_home / "adapters").glob("*/lmlang_adapter.json")]
    (update,) = [m for m in metas if "compatible_with" in m["options"]]
    assert update["options"]["method"] == "ia3" and update["options"]["flip_weight"] == 3.0
    assert update["options"]["compatible_with"]["adapters"][0][1] == 0.5
