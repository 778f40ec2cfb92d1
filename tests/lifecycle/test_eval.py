"""`eval` blocks: metrics, the batched runner on the tiny model (equal to
calling the query row by row), and `lmlang eval`'s table, JSON and CSV."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

import lmlang
from lmlang.lifecycle.evaluate import accuracy, exact_match, f1, run_evals

TEXTS = ["I loved this film", "Terrible service", "Great food!", "no", "yes true", "abc", "Paris", "Rome"]


def write_data(folder: Path) -> None:
    rows = [{"text": t, "label": "positive" if i % 3 else "negative"} for i, t in enumerate(TEXTS)]
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with open(folder / "test.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)


def script(tiny: Path) -> str:
    return f'''
model base = "{tiny}"
data tests = "test.jsonl"
query classify(text: str) using base {{
    user "Review: {{text}}"
    assistant "[label]"
    where label in ["positive", "negative"]
}}
query say(text: str) using base {{
    user "{{text}}"
    assistant "[label]"
    where tokens(label) <= 3
}}
eval acc = exact_match(classify, tests, expected: label)
eval acc_csv = accuracy(classify, "test.csv", expected: label)
eval overlap = f1(say, tests, expected: label)
'''


def test_metrics():
    assert exact_match(" positive\n", "positive") == 1.0 and exact_match("Positive", "positive") == 0.0
    assert accuracy("Positive ", "positive") == 1.0 and accuracy("negative", "positive") == 0.0
    assert f1("the cat sat", "a cat sat down") == pytest.approx(2 * (1.0 * (2 / 3)) / (1.0 + 2 / 3))
    assert f1("", "") == 1.0 and f1("x", "") == 0.0 and f1("dog", "cat") == 0.0


def test_evals_equal_the_query_called_row_by_row(tmp_path, tiny_model_dir, lmlang_home):
    write_data(tmp_path)
    prog = lmlang.compile(script(tiny_model_dir), base_dir=tmp_path, device="cpu", batch_size=3, cache=False)
    results = {r.name: r for r in run_evals(prog)}
    assert list(results) == ["acc", "acc_csv", "overlap"]
    rows = [json.loads(line) for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    labels = [prog.queries["classify"](r["text"])["label"] for r in rows]
    said = [prog.queries["say"](r["text"])["label"] for r in rows]
    want = sum(a == r["label"] for a, r in zip(labels, rows)) / len(rows)
    assert results["acc"].n == len(rows) and results["acc"].errors == 0
    assert results["acc"].score == pytest.approx(want)
    assert results["acc_csv"].score == pytest.approx(want)
    assert results["overlap"].score == pytest.approx(sum(f1(s, r["label"]) for s, r in zip(said, rows)) / len(rows))
    assert {r.model for r in results.values()} == {"base"}
    assert set(labels) <= {"positive", "negative"}


def test_cli_eval_table_json_and_csv(tmp_path, tiny_model_dir, lmlang_home):
    write_data(tmp_path)
    (tmp_path / "s.lm").write_text(script(tiny_model_dir), encoding="utf-8")
    cmd = [sys.executable, "-m", "lmlang.cli", "eval", str(tmp_path / "s.lm"), "--device", "cpu"]
    js = subprocess.run([*cmd, "--json", "--out", str(tmp_path / "r.csv")], capture_output=True, text=True)
    assert js.returncode == 0, js.stderr
    data = json.loads(js.stdout)
    assert [d["name"] for d in data] == ["acc", "acc_csv", "overlap"]
    with open(tmp_path / "r.csv", newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert [(r["name"], float(r["score"]), int(r["n"])) for r in table] == [
        (d["name"], pytest.approx(d["score"]), d["n"]) for d in data
    ]
    text = subprocess.run([*cmd, "--only", "acc"], capture_output=True, text=True)
    assert text.returncode == 0, text.stderr
    assert "model base" in text.stdout and "exact_match" in text.stdout and "overlap" not in text.stdout
    assert f"{data[0]['score']:.4f}" in text.stdout
