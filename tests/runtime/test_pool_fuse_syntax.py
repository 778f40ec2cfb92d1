"""`route pool "GLOB" { ... }` and `fuse dynamic { a, b }` end to end on the
tiny model: what a script routes or fuses equals a direct computation with
the weights the trace reports (runtime/pool.py, runtime/fusion_dynamic.py)."""

from __future__ import annotations

import pytest
import torch

import lmlang
from test_pool import make_lora

TEXTS = ["3 + 4 =", "what a film", "hello there"]
EXAMPLES = '"math": ["1 + 1 =", "2 * 3 ="], "misc": ["hello there", "good morning"], "senti": ["a great film"]'


@pytest.fixture(scope="module")
def pool_dir(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("pool_syntax")
    for seed, name in enumerate(["math", "misc", "senti"], start=1):
        make_lora(tiny_model_dir, root / name, seed)
    return root


def pool_program(tiny_model_dir, pool_dir, top_k: int):
    return lmlang.compile(f'''
model base = "{tiny_model_dir}"
router many = route pool "{pool_dir}/*" {{
    base: base, top_k: {top_k}, by: embedding, encoder: base, temperature: 1.0
    examples: {{ {EXAMPLES} }}
}}
query q(x: str) using many(x) {{ "{{x}} [v]" distribution v in ["yes", "no", "maybe"] }}
query a(x: str) using many(x) {{ "{{x}} [v]" where tokens(v) <= 4 }}
input t: str
flow {{ o = q(t) emit expert = o.expert, d = o.distribution, a = a(t).v }}
''')


def direct_weights(tiny_model_dir, top_k: int) -> list[dict]:
    """The pool's weights per text, computed here from the base's hidden states."""
    from lmlang.models.loader import load_model
    from lmlang.runtime.lm import HFModel
    from lmlang.runtime.pool import weights_from_scores
    from lmlang.runtime.routing import embed_hidden

    base = HFModel(load_model(tiny_model_dir, device="cpu", dtype="auto"))
    examples = [["1 + 1 =", "2 * 3 ="], ["hello there", "good morning"], ["a great film"]]
    q = embed_hidden(base, TEXTS)
    scores = torch.stack([(q @ embed_hidden(base, ex).T).max(1).values for ex in examples], dim=1)
    w = weights_from_scores(scores, top_k, 1.0)
    names = ["math", "misc", "senti"]
    return [{names[j]: x for j, x in enumerate(row) if x >= 1e-4} for row in w.tolist()]


def static_distribution(tiny_model_dir, pool_dir, text: str, mix: dict) -> dict:
    """The same query on `base + a * w_a + b * w_b`: the mixture written in."""
    adapters = "\n".join(f'adapter {n} = lora "{pool_dir / n}"' for n in mix)
    stack = " + ".join(f"{n} * {w!r}" for n, w in mix.items())
    p = lmlang.compile(f'''
model base = "{tiny_model_dir}"
{adapters}
model direct = base + {stack}
query q(x: str) using direct {{ "{{x}} [v]" distribution v in ["yes", "no", "maybe"] }}
input t: str
query a(x: str) using direct {{ "{{x}} [v]" where tokens(v) <= 4 }}
flow {{ emit d = q(t).distribution, a = a(t).v }}
''')
    return p.run(t=text)


@pytest.mark.parametrize("top_k", [1, 2])
def test_pool_rows_equal_their_mixture_written_in(tiny_model_dir, pool_dir, lmlang_home, top_k):
    p = pool_program(tiny_model_dir, pool_dir, top_k)
    out = p.run_batch([{"t": t} for t in TEXTS])
    records = sorted((r for r in p.trace.records if r.query == "q"), key=lambda r: r.row)
    expected = direct_weights(tiny_model_dir, top_k)
    for text, o, rec, want in zip(TEXTS, out, records, expected):
        got = rec.details["adapters"]
        assert list(got) == list(want) and len(got) == top_k
        assert list(got.values()) == pytest.approx(list(want.values()), abs=1e-5)
        assert o["expert"] == rec.expert == max(want, key=want.get)
        direct = static_distribution(tiny_model_dir, pool_dir, text, got)
        assert o["d"] == pytest.approx(direct["d"], abs=1e-4), text
        assert o["a"] == direct["a"], text
    # "mixed": the rows' different mixtures decode in one batch, with the same values
    mixed = pool_program(tiny_model_dir, pool_dir, top_k)
    mixed._executor().strategy.adapters = "mixed"
    assert [o["a"] for o in mixed.run_batch([{"t": t} for t in TEXTS])] == [o["a"] for o in out]
    if top_k == 2:  # mixing matters: every row holds two adapters
        assert all(min(r.details["adapters"].values()) > 1e-3 for r in records)


def test_pool_result_cache_follows_the_folders(tiny_model_dir, pool_dir, lmlang_home):
    from lmlang.runtime.result_cache import CallKeys

    p = pool_program(tiny_model_dir, pool_dir, 1)
    c = p._executor().c
    (rid,) = [n for n, s in c.nodes.items() if s.kind == "router"]
    before = CallKeys(c, {}).model_hash(rid)
    make_lora(tiny_model_dir, pool_dir / "extra", 9)
    try:
        assert CallKeys(c, {}).model_hash(rid) != before  # a new member: other results
    finally:
        import shutil

        shutil.rmtree(pool_dir / "extra")
    assert CallKeys(c, {}).model_hash(rid) == before


def dynamic_program(src_a, src_b, fuse: str):
    return lmlang.compile(f'''
model a = "{src_a}"
model b = "{src_b}"
model f = {fuse}
query g(x: str) using f {{ "{{x}} [v]" where tokens(v) <= 3 }}
input t: str
flow {{ emit v = g(t).v }}
''')


def hf_logits(model_dir, ids: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[:, -1]


@pytest.mark.parametrize("fuse", ["fuse dynamic { a, b }", "fuse dynamic(anchor: a, grid: 4, max: 1.5) { b }"])
def test_fuse_dynamic_first_step_is_fuse_with_the_chosen_weights(tiny_model_dir, tiny_model_dir_b, fuse):
    from lmlang.runtime.fusion_dynamic import DynamicFusedLM, dynamic_weights, fuse_with

    p = dynamic_program(tiny_model_dir, tiny_model_dir_b, fuse)
    out = p.run_batch([{"t": "hello"}, {"t": "12 + 30 ="}])
    assert all(isinstance(o["v"], str) for o in out)
    execu = p._executor()
    (fid,) = [n for n, s in execu.c.nodes.items() if s.kind == "fuse"]
    lm = execu.lm(fid)
    assert isinstance(lm, DynamicFusedLM)
    anchored = "anchor" in fuse
    for rec in p.trace.records:
        ids = lm.encode(rec.prompt[: rec.prompt.index("[v]")])  # the text before the hole
        la, lb = hf_logits(tiny_model_dir, ids), hf_logits(tiny_model_dir_b, ids)
        if anchored:
            w = dynamic_weights([lb], la, grid=4, max_weight=1.5)
            expect = fuse_with([lb], w, la)
            names = ["b"]
        else:
            w = dynamic_weights([la, lb], grid=10)
            expect = fuse_with([la, lb], w)
            names = ["a", "b"]
        batch = lm.new_batch(1)
        got = batch.feed([ids])
        assert torch.equal(batch.last_weights, w)
        width = expect.shape[-1]
        assert torch.allclose(torch.log_softmax(got[:, :width].float(), -1), expect, atol=1e-5)
        summary = rec.details["fuse_weights"]
        assert list(summary["first"]) == names
        assert list(summary["first"].values()) == pytest.approx(w[0].tolist(), abs=1e-4)
        assert summary["steps"] >= 1
        if anchored:  # each expert's shift on the grid {0, max/grid, ..., max}
            assert all(0.0 <= x <= 1.5 for x in summary["mean"].values())
        else:  # weights on the simplex
            assert sum(summary["mean"].values()) == pytest.approx(1.0, abs=1e-3)
