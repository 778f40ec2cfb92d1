"""`route pool` and `fuse dynamic` end to end on the bundled model, at a
reduced size: two adapters trained as examples/router.lm trains them (cached
by content), exported to PEFT folders, then routed among as a pool and fused
per step."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import lmlang
from lmlang.lifecycle.export import run_exports

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TRAIN = """model base = default
adapter polite = train lora on "data/polite.jsonl" { base: base, rank: 8, epochs: 3 }
adapter arith = train lora on "data/arith.jsonl" { base: base, rank: 8, epochs: 3 }
"""


@pytest.mark.e2e
def test_pool_and_dynamic_fusion_on_the_bundled_model(tmp_path):
    shutil.copytree(EXAMPLES / "data", tmp_path / "data")
    script = tmp_path / "train.lm"
    script.write_text(TRAIN + 'export polite to "pool/polite"\nexport arith to "pool/arith"\n')
    run_exports(lmlang.compile_file(script))
    assert sorted(p.name for p in (tmp_path / "pool").iterdir()) == ["arith", "polite"]

    script = tmp_path / "pool.lm"
    script.write_text(
        TRAIN
        + """
router many = route pool "pool/*" { base: base, top_k: 2, by: embedding, temperature: 0.1
    examples: { "arith": ["What is 12 * 7?", "Add 5 and 9."], "polite": ["Thank you so much!", "My order was late."] } }
model both = fuse dynamic { base + arith, base + polite }
query ask(q: str) using many(q) {
    user "{q}"
    assistant "The answer is [n]."
    where n is int
}
query fused(q: str) using both {
    user "{q}"
    assistant "The answer is [n]."
    where n is int
}
input q: str = "What is 15 + 27?"
flow { a = ask(q) emit n = a.n, expert = a.expert, fused = fused(q).n }
"""
    )
    p = lmlang.compile_file(script)
    out = p.run()
    assert out["expert"] == "arith" and isinstance(out["n"], int) and isinstance(out["fused"], int)
    pool_rec = next(r for r in p.trace.records if r.query == "ask")
    assert set(pool_rec.details["adapters"]) == {"arith", "polite"}
    assert sum(pool_rec.details["adapters"].values()) == pytest.approx(1.0, abs=1e-4)
    weights = next(r for r in p.trace.records if r.query == "fused").details["fuse_weights"]
    assert list(weights["mean"]) == ["base + arith", "base + polite"]
    assert sum(weights["mean"].values()) == pytest.approx(1.0, abs=1e-3) and weights["steps"] >= 1
