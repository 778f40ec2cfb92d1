"""Adapter pools (lmlang.runtime.pool) on the tiny model: routing weights,
discovery and evidence, cached embeddings, rows mixed in one batch against
models with the mixture written in, and PHATGOOSE-style gates."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmlang.errors import LmlangRuntimeError
from lmlang.merge.lora import load_lora
from lmlang.runtime.pool import (
    AdapterPool,
    EmbeddingIndex,
    discover,
    card_description,
    gate_scores,
    stacks_for,
    standardize,
    train_gates,
    training_prompts,
    weights_from_scores,
)

ROWS = [[5, 17, 42, 99, 7, 230], [3, 150, 88, 61, 19, 44], [200, 9, 31, 77, 120, 6]]


def load(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmlang.models.loader import LoadedModel

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return LoadedModel(model, AutoTokenizer.from_pretrained(model_dir), "cpu", "float32", model_dir, "tiny")


def make_lora(model_dir, out, seed, r=4, targets=("q_proj", "v_proj")):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    get_peft_model(
        model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False)
    ).save_pretrained(out, safe_serialization=True)
    return out


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    """Three adapters in one folder; 'math' records its training data, 'senti' has a card, 'misc' neither."""
    root = tmp_path_factory.mktemp("pool")
    make_lora(tiny_model_dir, root / "math", 1)
    make_lora(tiny_model_dir, root / "misc", 2, r=2, targets=("k_proj", "down_proj"))
    make_lora(tiny_model_dir, root / "senti", 3)
    data = write_jsonl(
        root / "math.jsonl",
        [{"prompt": f"{a} + {a} =", "completion": str(2 * a)} for a in range(12)]
        + [{"messages": [{"role": "user", "content": "7 * 6 ="}, {"role": "assistant", "content": "42"}]}],
    )
    (root / "math" / "lmlang_adapter.json").write_text(json.dumps({"data": str(data)}))
    (root / "senti" / "README.md").write_text(
        "---\nlibrary_name: peft\n---\n# Sentiment\n\nLabels a movie   review as\npositive or negative.\n\nMore text.\n"
    )
    (root / "misc" / "README.md").write_text("# Only a heading\n\n- **Developed by:** [More Information Needed]\n")
    (root / "notes").mkdir()  # matched by the glob, but not a PEFT folder
    return root


@pytest.fixture()
def base_lm(tiny_model_dir):
    from lmlang.runtime.lm import HFModel

    return HFModel(load(tiny_model_dir))


def test_weights_from_scores_is_a_softmax_over_the_top_k():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.5], [0.9, -0.2, 0.0, 0.4]])
    w = weights_from_scores(scores, top_k=2, temperature=0.5)
    # Row 0: a tie at 0.5 between experts 1 and 3, both kept.
    e = math.exp(0.0)
    assert w[0].tolist() == pytest.approx([0.0, e / (2 * e), 0.0, e / (2 * e)])
    z = math.exp(0.9 / 0.5) + math.exp(0.4 / 0.5)
    assert w[1].tolist() == pytest.approx([math.exp(1.8) / z, 0.0, 0.0, math.exp(0.8) / z])
    one = weights_from_scores(scores, top_k=1)
    # top_k = 1 with a tie: the lower index wins, at weight 1.
    assert one.tolist() == [[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
    assert weights_from_scores(scores, top_k=9).sum(1).tolist() == pytest.approx([1.0, 1.0])
    with pytest.raises(LmlangRuntimeError, match="top_k"):
        weights_from_scores(scores, top_k=0)
    with pytest.raises(LmlangRuntimeError, match="temperature"):
        weights_from_scores(scores, temperature=0)
    assert stacks_for(torch.tensor([[0.25, 0.0, 0.75], [0.0, 1.0, 0.00001]]), ["a", "b", "c"]) == [
        (("a", 0.25), ("c", 0.75)),
        (("b", 1.0),),
    ]


def test_discover_and_evidence(adapters, tmp_path):
    members = discover("*", adapters)
    assert [m.name for m in members] == ["math", "misc", "senti"]
    assert members[0].path == (adapters / "math").resolve()
    assert [m.name for m in discover(str(adapters / "s*"))] == ["senti"]
    with pytest.raises(LmlangRuntimeError, match="no adapter folder matches"):
        discover("nothing-*", adapters)
    (tmp_path / "x" / "math").mkdir(parents=True)
    (tmp_path / "y").mkdir()
    for d in (tmp_path / "x" / "math", tmp_path / "y" / "math"):
        d.mkdir(exist_ok=True)
        (d / "adapter_config.json").write_text("{}")
    with pytest.raises(LmlangRuntimeError, match="both named 'math'"):
        discover("*/math", tmp_path)
    assert training_prompts(adapters / "math", 3) == ["0 + 0 =", "1 + 1 =", "2 + 2 ="]
    assert training_prompts(adapters / "math", 20)[-1] == "7 * 6 ="
    assert training_prompts(adapters / "senti", 3) == []
    assert card_description(adapters / "senti") == "Labels a movie review as positive or negative."
    assert card_description(adapters / "misc") == ""


def test_embedding_index_scores_and_disk_cache(base_lm, lmlang_home, monkeypatch):
    from lmlang.runtime.routing import embed_hidden

    examples = [["one plus one", "two times three"], ["a great film", "boring movie"]]
    index = EmbeddingIndex(examples, "base", base_lm)
    files = sorted((lmlang_home / "pool").glob("emb-*.safetensors"))
    assert len(files) == 2
    texts = ["three plus four", "what a film"]
    q = embed_hidden(base_lm, texts)
    expect = torch.stack([(q @ embed_hidden(base_lm, ex).T).max(1).values for ex in examples], dim=1)
    assert torch.allclose(index.scores(texts), expect, atol=1e-6)
    # A second index reads the examples' embeddings from disk: the encoder is not run for them.
    calls = []
    monkeypatch.setattr(EmbeddingIndex, "_embed", lambda self, t: calls.append(t) or embed_hidden(base_lm, t))
    again = EmbeddingIndex(examples, "base", base_lm)
    assert calls == [] and all(torch.equal(a, b) for a, b in zip(again.vectors, index.vectors))
    with pytest.raises(LmlangRuntimeError, match="unknown encoder"):
        EmbeddingIndex(examples, "bert")
    with pytest.raises(LmlangRuntimeError, match="needs the base model"):
        EmbeddingIndex(examples, "base")


def test_pool_routes_by_embedding(adapters, base_lm, lmlang_home):
    from lmlang.runtime.routing import embed_hidden

    with pytest.raises(LmlangRuntimeError, match="nothing to route to adapter 'misc'"):
        AdapterPool("*", base_dir=adapters, encoder="base", base_lm=base_lm)
    with pytest.raises(LmlangRuntimeError, match="does not hold"):
        AdapterPool("*", base_dir=adapters, encoder="base", base_lm=base_lm, examples={"other": ["x"]})
    with pytest.raises(LmlangRuntimeError, match="unknown pool routing"):
        AdapterPool("*", base_dir=adapters, by="vote")
    pool = AdapterPool(
        "*",
        base_dir=adapters,
        encoder="base",
        base_lm=base_lm,
        n_examples=4,
        top_k=2,
        temperature=0.1,
        examples={"misc": ["hello there", "goodbye"]},
    )
    assert pool.examples == [
        ["0 + 0 =", "1 + 1 =", "2 + 2 =", "3 + 3 ="],
        ["hello there", "goodbye"],
        ["Labels a movie review as positive or negative."],
    ]
    texts = ["5 + 5 =", "hello", "a review"]
    q = embed_hidden(base_lm, texts)
    scores = torch.stack([(q @ embed_hidden(base_lm, ex).T).max(1).values for ex in pool.examples], dim=1)
    w = pool.route(texts)
    assert torch.allclose(w, weights_from_scores(scores, 2, 0.1), atol=1e-6)
    assert ((w > 0).sum(1) == 2).all()
    assert pool.top(w) == [pool.names[int(i)] for i in scores.argmax(1)]


def test_pool_rows_mix_adapters_in_one_batch(adapters, tiny_model_dir):
    from lmlang.models.adapters import AdapterHost
    from lmlang.runtime.lm import HFModel

    pool = AdapterPool("*", base_dir=adapters, examples={"misc": ["x"], "senti": ["y"]})  # no encoder is run
    loaded = load(tiny_model_dir)
    weights = torch.tensor([[0.0, 1.0, 0.0], [0.6, 0.0, 0.4], [0.1, 0.3, 0.6]], dtype=torch.float64)
    lm = pool.lm_for_rows(HFModel(loaded), AdapterHost(loaded), weights)
    assert lm.stacks[1] == (("math", pytest.approx(0.6)), ("senti", pytest.approx(0.4)))
    out = lm.new_batch(3).feed(ROWS)
    for i, ids in enumerate(ROWS):
        ref_model = load(tiny_model_dir).model
        params = dict(ref_model.named_parameters())
        with torch.no_grad():
            for m, wi in zip(pool.members, weights[i].tolist()):
                for name, mod in load_lora(m.path).modules.items():
                    params[name] += wi * mod.delta()
            ref = ref_model(input_ids=torch.tensor([ids])).logits[0, -1]
        assert torch.allclose(out[i], ref, atol=1e-4), i
    with pytest.raises(LmlangRuntimeError, match="chosen for 3 rows"):
        lm.new_batch(2)


def test_gate_scores_direct():
    torch.manual_seed(0)
    x_q, x_v = torch.randn(5, 8), torch.randn(5, 8)
    g1 = {"q": torch.randn(8), "v": torch.randn(8)}
    g2 = {"q": torch.zeros(8), "k": torch.randn(8)}  # a zero gate scores 0; a module the row lacks is skipped
    got = gate_scores({"q": x_q, "v": x_v}, [g1, g2, {"k": torch.ones(8)}])

    def one(x, g):
        xh = (x - x.mean(-1, keepdim=True)) / (x.std(-1, unbiased=False, keepdim=True) + 1e-6)
        return float((xh @ (g / g.norm())).mean()) / math.sqrt(8)

    assert got[0] == pytest.approx((one(x_q, g1["q"]) + one(x_v, g1["v"])) / 2, rel=1e-5)
    assert got[1] == 0.0
    assert got[2] == float("-inf")
    assert torch.allclose(standardize(x_q).std(-1, unbiased=False), torch.ones(5), atol=1e-4)


def test_gates_train_cache_and_route(adapters, tiny_model_dir, base_lm, lmlang_home):
    with pytest.raises(LmlangRuntimeError, match="training data is unknown"):
        train_gates(adapters / "senti", tiny_model_dir)
    gates = train_gates(adapters / "math", tiny_model_dir, steps=3, lr=0.05, batch_size=4)
    assert sorted(gates) == sorted(n[: -len(".weight")] for n in load_lora(adapters / "math").modules)
    assert all(g.abs().sum() > 0 for g in gates.values())  # the gates moved off their zero start
    files = list((lmlang_home / "pool").glob("gate-*.safetensors"))
    assert len(files) == 1
    again = train_gates(adapters / "math", tiny_model_dir, steps=3, lr=0.05, batch_size=4)
    assert all(torch.equal(gates[k], again[k]) for k in gates)
    assert len(list((lmlang_home / "pool").glob("gate-*.safetensors"))) == 1
    # A pool by gate over the one member with training data: scores are gate_scores of the base's module inputs.
    pool = AdapterPool(
        "ma*",
        base_dir=adapters,
        by="gate",
        base_lm=base_lm,
        base_path=tiny_model_dir,
        gate_options={"steps": 3, "lr": 0.05, "batch_size": 4},
    )
    inputs = pool.gates.module_inputs("4 + 4 =")
    assert set(inputs) == set(gates)
    assert pool.scores(["4 + 4 ="])[0, 0].item() == pytest.approx(gate_scores(inputs, [gates])[0].item(), rel=1e-5)
    assert pool.route(["4 + 4 ="]).tolist() == [[1.0]]
    with pytest.raises(LmlangRuntimeError, match="needs the base model"):
        AdapterPool("ma*", base_dir=adapters, by="gate")
