"""bench/lifecycle.py: its generated scripts check (fast, no model) and the
reduced bench runs end to end on the bundled model (e2e: trains ten tiny
adapters, cached in the real LMLANG_HOME after the first run)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import lmlang

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "lifecycle.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("lifecycle_bench", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["lifecycle_bench"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_generated_scripts_check(bench, tmp_path):
    """Every script the bench writes compiles; the data files they read exist
    and the random rows are pool rows."""
    cfg = bench.REDUCED
    data = bench.write_data(cfg, tmp_path)
    scripts = {
        "synthetic": bench.synthetic_script(cfg, "arithmetic"),
        "synthetic_vote": bench.synthetic_script(cfg, "dates", vote=True),
        "synthetic_more": bench.synthetic_script(cfg, "dates", more=True),
        "select": bench.select_script(cfg, "dates"),
        "dora": bench.dora_script(cfg, "dates"),
        "flip": bench.flip_script(cfg, "sentiment"),
    }
    for name, text in scripts.items():
        path = tmp_path / f"{name}.lm"
        path.write_text(text, encoding="utf-8")
        prog = lmlang.compile_file(path)
        checked = prog.frontend.checked
        if name == "synthetic":  # arithmetic: the generation shows demos, the base is scored with them too
            assert "synth" in checked.datasets and {"base_acc", "tuned_acc", "base_demos_acc"} <= set(checked.evals)
        if name == "flip":
            assert {"old", "plain", "compat_1", "current"} <= set(checked.models)
    assert "vote: 3, agree: 2" in scripts["synthetic_vote"] and "vote" not in scripts["synthetic_more"]
    assert (
        scripts["synthetic_more"].count("unlabeled_dates_more.jsonl")
        == 1
        == scripts["synthetic_vote"].count("unlabeled_dates_more.jsonl")
    )
    assert "output is int" in scripts["synthetic"] and "compatible_with: base + old_a" in scripts["flip"]
    assert f'demos: "demos_arithmetic.jsonl", shots: {cfg["shots"]}' in scripts["synthetic"]
    assert "demos" not in bench.synthetic_script(cfg, "dates")
    demos = [json.loads(line) for line in (tmp_path / "demos_arithmetic.jsonl").read_text().splitlines()]
    seen = {json.loads(line)["x"] for line in (tmp_path / "test_arithmetic.jsonl").read_text().splitlines()}
    seen |= {
        json.loads(line)["text"] for line in (tmp_path / "unlabeled_arithmetic_more.jsonl").read_text().splitlines()
    }
    assert len(demos) == cfg["shots"] and not {r["prompt"] for r in demos} & seen  # no held-out or unlabeled input
    pool = [json.loads(line) for line in (tmp_path / "pool.jsonl").read_text().splitlines()]
    rnd = [json.loads(line) for line in (tmp_path / f"random_{cfg['n_train']}.jsonl").read_text().splitlines()]
    assert len(pool) == 3 * cfg["n_train"] and len(rnd) == cfg["n_train"] and all(r in pool for r in rnd)
    assert len(data["flip_test"]) == cfg["flip_test"]
    old, test, new = bench.flip_rows(bench.FULL)
    inputs = [{r["prompt"] for r in old}, {r["x"] for r in test}, {r["prompt"] for r in new}]
    assert [len(s) for s in inputs] == [64, 48, 32] and not inputs[0] & inputs[1]
    assert not (inputs[0] | inputs[1]) & inputs[2]  # the update's rows are neither OLD's nor held out
    assert "flip_weight: 3.0" in bench.flip_script(bench.FULL, "dates")


def test_the_flip_summary_takes_the_best_weight_that_keeps_accuracy(bench):
    out = {
        "with": {
            "0.3": {"ratio": 1.0, "accuracy": 0.875, "accuracy_gap": 0.0},
            "1": {"ratio": 0.33, "accuracy": 0.917, "accuracy_gap": 0.042},
            "3": {"ratio": 0.0, "accuracy": 0.80, "accuracy_gap": 0.075},  # fewer flips, bought with accuracy
        }
    }
    assert bench.best_ratio(out, lambda d: d["accuracy"] >= 0.875 - 0.02) == (1.0, 0.33)
    assert bench.best_ratio(out, lambda d: d["accuracy_gap"] <= 0.02) == (0.3, 1.0)
    assert bench.best_ratio(out, lambda d: False) == (None, None)


@pytest.mark.e2e
def test_reduced_bench_runs(tmp_path):
    table = tmp_path / "lifecycle.md"
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
            "--vllm",
            "off",
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(report["synthetic_gain"]) == {"sentiment", "arithmetic", "dates"}
    for d in report["synthetic_gain"].values():
        assert d["gain"] == pytest.approx(d["tuned"] - d["base"]) and d["generated_rows"] == 8
    arith = report["synthetic_gain"]["arithmetic"]  # its generation showed demos: the base is scored with them too
    assert arith["gain_vs_base_demos"] == pytest.approx(arith["tuned"] - arith["base_demos"])
    sel = report["select_gain"]
    assert sel["k"] == 12 and 0.0 <= sel["select_precision"] <= 1.0
    assert {"accuracy", "train_seconds"} <= set(report["dora_vs_lora"]["dora"])
    flip = report["flip_rate_ratio"]
    assert flip["rows"] == 6 and {"accuracy", "negative_flip_rate", "ratio"} <= set(flip["with"]["1"])
    assert flip["ratio"] in (None, flip["with"]["1"]["ratio"]) and "ratio_equal_accuracy" in flip
    assert report["export_parity"]["peft"] is True  # the exported folder decodes as lmlang does
    assert report["export_parity"]["vllm"] == "skipped (--vllm off)"
    text = table.read_text()
    assert "| synthetic_gain sentiment |" in text and "flip_rate_ratio" in text
