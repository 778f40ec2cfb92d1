"""`data NAME = select K from POOL like TARGET by gzip|embedding` and
`lmlang data show`."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

import lmlang
from lmlang.lifecycle import select as S
from lmlang.lifecycle.data import DataSets

MATH = [f"What is {a} plus {b}? The sum of {a} and {b} is {a + b}." for a, b in [(2, 3), (10, 7), (4, 4), (12, 30)]]
COOKING = [
    "Whisk the eggs with sugar, fold in the flour and bake the cake for forty minutes.",
    "Chop the onions, fry them in butter until golden, then add the garlic and the tomatoes.",
    "Knead the dough for ten minutes, let it rise for an hour, then bake the bread.",
]
TARGET = [f"What is {a} plus {b}? The sum is {a + b}." for a, b in [(1, 1), (5, 6), (20, 22)]]


def write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def ncd(x: str, y: str) -> float:
    c = lambda b: len(gzip.compress(b, compresslevel=9, mtime=0))  # noqa: E731
    bx, by = x.encode(), y.encode()
    return (c(bx + b" " + by) - min(c(bx), c(by))) / max(c(bx), c(by))


def test_gzip_distance_is_mean_ncd_and_prefers_the_target_domain():
    pool = [COOKING[0], MATH[0], COOKING[1], MATH[1], COOKING[2], MATH[2]]
    d = S.gzip_distances(pool, TARGET)
    assert d[1] == pytest.approx(sum(ncd(pool[1], t) for t in TARGET) / len(TARGET))
    assert S.pick(d, 3) == [1, 3, 5]  # the math rows, in pool order


def test_pick_breaks_ties_by_pool_order():
    assert S.pick([0.5, 0.1, 0.5, 0.5, 0.1], 3) == [0, 1, 4]
    assert S.pick([0.3, 0.2], 5) == [0, 1]


def test_row_text():
    assert S.row_text({"text": "t", "label": "x"}) == "t"
    assert S.row_text({"prompt": "p", "completion": "c"}) == "p\nc"
    assert S.row_text({"messages": [{"role": "user", "content": "hi"}], "n": 3}) == "hi\n3"


def script(extra: str = "") -> str:
    return 'data target = "target.jsonl"\ndata picked = select 3 from "pool.jsonl" like target by gzip\n' + extra


@pytest.fixture()
def folder(tmp_path) -> Path:
    pool = [COOKING[0], MATH[0], COOKING[1], MATH[1], COOKING[2], MATH[2], MATH[3]]
    write_jsonl(tmp_path / "pool.jsonl", [{"prompt": p, "completion": str(i)} for i, p in enumerate(pool)])
    write_jsonl(tmp_path / "target.jsonl", [{"text": t} for t in TARGET])
    return tmp_path


def test_selection_is_cached_by_content(folder, lmlang_home, monkeypatch):
    prog = lmlang.compile(script(), base_dir=folder)
    rows = DataSets(prog).rows("picked")
    assert len(rows) == 3 and all(r["prompt"].startswith("What is") for r in rows)
    assert [int(r["completion"]) for r in rows] == sorted(int(r["completion"]) for r in rows)
    assert len(list((lmlang_home / "select").glob("*.json"))) == 1

    def boom(*a):
        raise AssertionError("computed again")

    monkeypatch.setattr(S, "gzip_distances", boom)
    assert DataSets(lmlang.compile(script(), base_dir=folder)).rows("picked") == rows
    # another K is another selection
    with pytest.raises(AssertionError, match="computed again"):
        DataSets(lmlang.compile(script().replace("select 3", "select 2"), base_dir=folder)).rows("picked")


def test_selection_by_embedding_on_the_tiny_model(folder, tiny_model_dir, lmlang_home):
    import torch

    from lmlang.runtime.routing import embed_hidden

    src = f'model base = "{tiny_model_dir}"\n' + script().replace("by gzip", "by embedding")
    prog = lmlang.compile(src, base_dir=folder, device="cpu")
    rows = DataSets(prog).rows("picked")
    # the same choice, computed here from the definition
    lm = prog._executor().base_lm(prog.frontend.compiled.names["base"])
    pool = [S.row_text(json.loads(x)) for x in (folder / "pool.jsonl").read_text().splitlines()]
    centroid = torch.nn.functional.normalize(embed_hidden(lm, TARGET).mean(0), dim=0)
    sims = (embed_hidden(lm, pool) @ centroid).tolist()
    want = sorted(sorted(range(len(pool)), key=lambda i: (-sims[i], i))[:3])
    assert [int(r["completion"]) for r in rows] == want


def test_cli_data_show(folder, lmlang_home):
    (folder / "s.lm").write_text(script(), encoding="utf-8")
    cmd = [sys.executable, "-m", "lmlang.cli", "data", "show"]
    js = subprocess.run([*cmd, "picked", str(folder / "s.lm"), "--json"], capture_output=True, text=True)
    assert js.returncode == 0, js.stderr
    shown = [json.loads(x) for x in js.stdout.splitlines()]
    assert len(shown) == 3 and all(r["prompt"].startswith("What is") for r in shown)
    table = subprocess.run([*cmd, "target", str(folder / "s.lm")], capture_output=True, text=True)
    assert table.returncode == 0 and "data target" in table.stdout and "The sum is 42" in table.stdout
    bad = subprocess.run([*cmd, "nope", str(folder / "s.lm")], capture_output=True, text=True)
    assert bad.returncode == 1 and "no data set 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_data_show_limits_to_twenty_rows(tmp_path, lmlang_home):
    write_jsonl(tmp_path / "many.jsonl", [{"i": i} for i in range(25)])
    (tmp_path / "s.lm").write_text('data many = "many.jsonl"\n', encoding="utf-8")
    cmd = [sys.executable, "-m", "lmlang.cli", "data", "show", "many", str(tmp_path / "s.lm"), "--json"]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert len(first.stdout.splitlines()) == 20 and "5 more rows of 25" in first.stderr
    every = subprocess.run([*cmd, "--all"], capture_output=True, text=True)
    assert [json.loads(x)["i"] for x in every.stdout.splitlines()] == list(range(25))
