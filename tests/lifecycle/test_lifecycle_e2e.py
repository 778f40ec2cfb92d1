"""examples/lifecycle.lm end to end on the bundled model: the selection, the
evals (the trained adapter at least as accurate as the base on its task) and
the adapter's export, run through the CLI as a user runs them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def lmlang(*args, cwd: Path) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [sys.executable, "-m", "lmlang.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=1800
    )
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
    return p


def test_lifecycle_example(tmp_path):
    ex = tmp_path / "examples"
    shutil.copytree(EXAMPLES, ex, ignore=shutil.ignore_patterns("out"))
    picked = [
        json.loads(x) for x in lmlang("data", "show", "picked", "lifecycle.lm", "--json", cwd=ex).stdout.splitlines()
    ]
    assert len(picked) == 6 and all(r["prompt"].startswith("Review:") for r in picked)

    results = {r["name"]: r for r in json.loads(lmlang("eval", "lifecycle.lm", "--json", cwd=ex).stdout)}
    assert set(results) == {"base_acc", "tuned_acc"} and all(r["n"] == 6 and r["errors"] == 0 for r in results.values())
    assert results["tuned_acc"]["model"] == "tuned" and results["base_acc"]["model"] == "base"
    assert results["tuned_acc"]["score"] >= results["base_acc"]["score"]

    out = lmlang("export", "lifecycle.lm", "--only", "sentiment", cwd=ex).stdout
    adapter = ex / "out" / "sentiment-adapter"
    assert str(adapter) in out and (adapter / "adapter_config.json").is_file()
    assert "train lora on \"data/sentiment.jsonl\"" in (adapter / "README.md").read_text(encoding="utf-8")
    assert not (ex / "out" / "sentiment-model").exists()  # --only
