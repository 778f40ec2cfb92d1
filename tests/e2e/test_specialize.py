"""bench/specialize.py: the task generator (fast) and the reduced bench end
to end on the bundled model (e2e: trains three small adapters, cached in the
real LMLANG_HOME after the first run)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import lmlang

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "specialize.py"
sys.path.insert(0, str(REPO / "bench" / "specialize"))

import spec_tasks as T  # noqa: E402

KEYS = ("router_accuracy", "routed_over_expert_min", "best_merge_over_expert_min", "table")


def test_task_data_is_seeded_and_disjoint(tmp_path):
    a = T.write_task_files(tmp_path / "a", 30, 10)
    b = T.write_task_files(tmp_path / "b", 30, 10)
    for task in T.TASKS:
        assert a[task]["train"].read_bytes() == b[task]["train"].read_bytes()
        assert a[task]["test"].read_bytes() == b[task]["test"].read_bytes()
        train_x = {r["x"] for r in a[task]["train_rows"]}
        test_x = {r["x"] for r in a[task]["test_rows"]}
        assert len(train_x) == 30 and len(test_x) == 10 and not train_x & test_x
        for line in a[task]["train"].read_text().splitlines():
            row = json.loads(line)
            assert set(row) == {"prompt", "completion"} and row["completion"]
    labels = [r["y"] for r in a["sentiment"]["test_rows"]]
    assert labels.count("positive") == labels.count("negative") == 5


def test_answers_are_right():
    import random
    import re

    rng = random.Random(3)
    for _ in range(50):
        r = T.arithmetic_row(rng)
        a, op, b = re.match(r"What is (\d+) ([-+]) (\d+)\?", r["x"]).groups()
        assert int(r["y"]) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0
        d = T.dates_row(rng)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", d["y"])
        year, month, day = d["y"].split("-")
        assert year in d["x"] and T.MONTHS[int(month) - 1] in d["x"] and str(int(day)) in d["x"]


def test_generated_scripts_check(tmp_path):
    """Every variant's script compiles (no model is loaded)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("specialize_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["specialize_bench"] = mod
    spec.loader.exec_module(mod)
    cfg = dict(mod.FULL, merges=list(mod.MERGE_OPTIONS))
    files = T.write_task_files(tmp_path, 12, 3)
    examples = {t: [r["x"] for r in files[t]["train_rows"][:3]] for t in T.TASKS}
    names = []
    for v in mod.variants(cfg, examples):
        path = tmp_path / (v.name.replace(":", "_") + ".lm")
        path.write_text(v.script(cfg))
        prog = lmlang.compile_file(path)
        assert set(prog.inputs) == {"x", "task"}
        names.append(v.name)
    assert "route:embedding_minilm" in names and "merge:model_stock" in names and "fuse:ensemble" in names


@pytest.mark.e2e
def test_reduced_bench_runs(tmp_path):
    table = tmp_path / "specialize.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--reduced",
            "--json",
            "--out",
            str(table),
            "--workdir",
            str(tmp_path / "work"),
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in KEYS:
        assert key in report
    names = [row["variant"] for row in report["table"]]
    assert names[:4] == ["base", "expert:sentiment", "expert:arithmetic", "expert:dates"]
    assert any(n.startswith("merge:") for n in names) and any(n.startswith("route:") for n in names)
    text = table.read_text()
    assert "| variant |" in text and "router_accuracy" in text
