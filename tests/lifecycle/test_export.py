"""`export`: adapters as PEFT folders, models as HF folders, loaded back with
plain transformers + PEFT on the tiny model and compared with lmlang's own
logits and greedy tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lmlang
from lmlang.errors import LmlangRuntimeError
from lmlang.lifecycle.export import MARKER, run_exports

ROWS = [
    {"prompt": f"Review: {w}", "completion": "positive" if i % 2 == 0 else "negative"}
    for i, w in enumerate(["I loved this film", "Terrible service", "Great food!", "no", "yes true", "abc"])
]
PROMPT = "Review: I loved this film. Answer:"


def script(tiny: Path) -> str:
    return f'''
model base = "{tiny}"
adapter senti = train lora on "train.jsonl" {{ base: base, rank: 4, alpha: 8, epochs: 1, batch_size: 4, max_length: 64 }}
model tuned = base + senti
export senti to "out/senti"
export tuned to "out/tuned"
'''


@pytest.fixture()
def exported(tmp_path, tiny_model_dir, lmlang_home):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    prog = lmlang.compile(script(tiny_model_dir), base_dir=tmp_path, device="cpu", dtype="float32")
    done = run_exports(prog)
    return prog, {x.name: x for x in done}


def lmlang_logits(prog, name: str, ids: list[int]) -> torch.Tensor:
    lm = prog._executor().lm(prog.frontend.compiled.names[name])
    return lm.new_batch(1).feed([ids], all_logits=True)[0].float()


def greedy(step, ids: list[int], n: int = 8) -> list[int]:
    out = list(ids)
    for _ in range(n):
        out.append(int(step(out)[-1].argmax()))
    return out[len(ids) :]


def test_exported_folders_load_in_transformers_and_peft(exported, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prog, done = exported
    senti, tuned = done["senti"].path, done["tuned"].path
    assert (senti / "adapter_config.json").is_file() and (senti / "adapter_model.safetensors").is_file()
    assert {"config.json", "tokenizer.json"} <= set(p.name for p in tuned.iterdir())
    assert any(p.suffix == ".safetensors" for p in tuned.iterdir())

    tok = AutoTokenizer.from_pretrained(tuned)  # the exported folder's own tokenizer
    ids = tok(PROMPT)["input_ids"]
    ours = lmlang_logits(prog, "tuned", ids)

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(senti)).eval()
    merged = AutoModelForCausalLM.from_pretrained(tuned, dtype=torch.float32).eval()

    def step_of(model):
        return lambda seq: model(input_ids=torch.tensor([seq])).logits[0].float()

    with torch.no_grad():
        theirs_peft = step_of(peft_model)(ids)
        theirs_merged = step_of(merged)(ids)
        assert torch.allclose(ours, theirs_peft, atol=1e-4), (ours - theirs_peft).abs().max()
        assert torch.allclose(ours, theirs_merged, atol=1e-4), (ours - theirs_merged).abs().max()
        # the adapter changes the model: the comparison could fail
        plain = step_of(base.get_base_model() if hasattr(base, "get_base_model") else base)
        with peft_model.disable_adapter():
            assert not torch.allclose(ours, plain(ids), atol=1e-4)
        ours_tokens = greedy(lambda seq: lmlang_logits(prog, "tuned", seq), ids)
        assert ours_tokens == greedy(step_of(peft_model), ids) == greedy(step_of(merged), ids)


def test_model_card_holds_recipe_and_input_hashes(exported, tmp_path):
    _, done = exported
    for name in ("senti", "tuned"):
        card = (done[name].path / "README.md").read_text(encoding="utf-8")
        facts = json.loads((done[name].path / MARKER).read_text(encoding="utf-8"))
        assert "adapter senti = train lora on \"train.jsonl\"" in card
        data_hash = facts["inputs"][f"training data {tmp_path / 'train.jsonl'}"]
        import hashlib

        assert data_hash == "sha256:" + hashlib.sha256((tmp_path / "train.jsonl").read_bytes()).hexdigest()
        assert data_hash in card
        assert any(k.startswith("model ") for k in facts["inputs"])
    assert "model tuned = base + senti" in (done["tuned"].path / "README.md").read_text(encoding="utf-8")
    assert "model tuned" not in (done["senti"].path / "README.md").read_text(encoding="utf-8")
    # lmlang's own metadata stays behind
    assert not (done["senti"].path / "lmlang_adapter.json").exists()


def test_export_replaces_its_own_folder_but_never_a_foreign_one(exported, tmp_path):
    prog, done = exported
    again = {x.name: x for x in run_exports(prog, ("senti",))}
    assert set(again) == {"senti"} and (again["senti"].path / MARKER).is_file()
    (tmp_path / "out" / "senti" / MARKER).unlink()
    with pytest.raises(LmlangRuntimeError, match="did not write"):
        run_exports(prog, ("senti",))


def test_an_adapter_merge_exports_as_a_peft_folder(tmp_path, tiny_model_dir, lmlang_home):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    (tmp_path / "other.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[::-1][:4]), encoding="utf-8")
    src = script(tiny_model_dir) + (
        'adapter other = train lora on "other.jsonl" { base: base, rank: 4, epochs: 1, batch_size: 2, seed: 3 }\n'
        "adapter mixed = merge linear { models: { senti: 0.5, other: 0.5 } }\n"
        "model both = base + mixed\n"
        'export mixed to "out/mixed"\n'
    )
    prog = lmlang.compile(src, base_dir=tmp_path, device="cpu", dtype="float32")
    (done,) = run_exports(prog, ("mixed",))
    card = (done.path / "README.md").read_text(encoding="utf-8")
    assert "adapter mixed = merge linear" in card and "adapter other = train lora" in card
    ids = AutoTokenizer.from_pretrained(tiny_model_dir)(PROMPT)["input_ids"]
    ours = lmlang_logits(prog, "both", ids)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(done.path)).eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=torch.tensor([ids])).logits[0].float()
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
