"""Every example checks clean; every runnable example runs end to end on the
real bundled model (SmolLM2-135M-Instruct), offline."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmlang.frontend import build_file

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ALL = sorted(EXAMPLES.glob("*.lm"))
# Inputs an example needs for its end-to-end run, and what its output must satisfy.
RUNS = {
    "hello.lm": ([], lambda out: out["city"] == "Paris"),
}


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_example_checks_clean(path):
    build_file(path)


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(RUNS))
def test_example_runs_on_bundled_model(name):
    args, ok = RUNS[name]
    p = subprocess.run([sys.executable, "-m", "lmlang.cli", "run", str(EXAMPLES / name), "--json", *args],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert ok(out), out
