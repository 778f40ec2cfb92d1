"""Every example checks clean; every example runs end to end on the real
bundled model (SmolLM2-135M-Instruct), offline, and its output is checked
against the example's constraints (values the tiny model chooses freely
are checked for shape, not for wisdom)."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lmlang.frontend import build_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ALL = sorted(EXAMPLES.glob("*.lm")) + sorted((EXAMPLES / "lib").glob("*.lm"))
ARITH = re.compile(r"(?:[0-9]+|\(.*\))(?: [-+*/] (?:[0-9]+|\(.*\)))*")


def one_line(s):
    return isinstance(s, str) and "\n" not in s


def check_constraints(o):
    assert o["kind"] in ("addition", "subtraction", "multiplication", "division")
    assert isinstance(o["multiplication"], bool) and isinstance(o["confidence"], float)
    assert re.fullmatch(r"[A-Z]{3}-[0-9]{2}", o["code"])
    assert ARITH.fullmatch(o["calculation"]) and len(o["calculation"]) <= 30
    assert isinstance(o["result"], int) and one_line(o["words"])
    return True


def check_decoders(o):
    assert all(one_line(o[k]) for k in ("greedy", "sampled", "beamed", "best"))
    assert isinstance(o["voted"], int)
    assert set(o["odds"]) == {"yes", "no"} and math.isclose(sum(o["odds"].values()), 1.0, rel_tol=1e-5)
    return True


def check_experts(o):
    keys = ("sentiment_base", "sentiment_expert", "sentiment_merged", "adding_base", "adding_expert", "adding_merged")
    assert all(0.0 <= o[k] <= 1.0 for k in keys)
    # Trained experts beat the base model on their own task.
    assert o["sentiment_expert"] >= o["sentiment_base"] and o["adding_expert"] >= o["adding_base"]
    return True


# Arguments for each example's end-to-end run, and what its output must satisfy.
RUNS = {
    "hello.lm": ([], lambda o: o["city"] == "Paris"),
    "flow.lm": (
        [],
        lambda o: (
            len(o["answers"]) == 3
            and set(o["answers"]) <= {"yes", "no"}
            and o["first"] in ("yes", "no")
            and re.fullmatch(r"\d of 3 yes", o["summary"])
        ),
    ),
    "imports.lm": ([], lambda o: one_line(o["sentiment"]) and one_line(o["topic"])),
    "json_extract.lm": (
        [],
        lambda o: (
            isinstance(o["name"], str)
            and isinstance(o["age"], int)
            and 0 <= o["age"] <= 150
            and {"item", "price", "quantity"} <= set(o["order"])
        ),
    ),
    "constraints.lm": ([], check_constraints),
    "review.lm": ([], lambda o: o["label"] in ("positive", "negative") and one_line(o["answer"])),
    "decoders.lm": ([], check_decoders),
    "adapters.lm": ([], lambda o: one_line(o["reply"]) and isinstance(o["answer"], int)),
    "merge.lm": ([], lambda o: all(one_line(o[k]) for k in ("ties", "linear", "adapters"))),
    "fuse.lm": ([], lambda o: all(isinstance(o[k], int) for k in ("ensemble", "proxy", "contrastive"))),
    "router.lm": ([], lambda o: len(o["experts"]) == 3 and all(len(row) == 3 for row in o["experts"])),
    "experts.lm": (["--set", "n=4"], check_experts),  # reduced: 4 held-out rows per task
    "agent.lm": (
        [],
        lambda o: (
            isinstance(o["answer"], int)
            and 1 <= o["steps"] <= 4
            and len(o["expressions"]) in (o["steps"], o["steps"] - 1)  # a finishing step writes no expression
            and all(re.fullmatch(r"[0-9+*/() -]{1,40}", e) for e in o["expressions"])
        ),
    ),
    "lifecycle.lm": ([], lambda o: o["label"] in ("positive", "negative")),  # eval/export: tests/lifecycle
    "served.lm": ([], None),  # runs on the test run's one vLLM server, in test_served_vllm.py
    # second wave (issue #15): run-time labels, `or`, sample(n: 3); the leak guard
    "classify_runtime.lm": (
        [],
        lambda o: (
            len(o["labels"]) == 3
            and set(o["labels"]) <= {"praise", "complaint", "question"}
            and o["first"] == o["labels"][0]
            and o["stars"] in (1, 2, 3, 4, 5, "unknown")  # the int side of `or` gives an int
            and o["percent"] == (0 if o["stars"] == "unknown" else o["stars"] * 20)
        ),
    ),
    # issue #17: compress, merge twin, merge atlas (two small adapters, one epoch)
    "compose.lm": (
        [],
        lambda o: (
            o["twin_label"] in ("positive", "negative")
            and o["compressed_label"] in ("positive", "negative")
            and all(one_line(o[k].rstrip("\n")) for k in ("atlas_sum", "twin_sum"))
        ),
    ),
    "guarded.lm": ([], lambda o: one_line(o["answer"]) and "4417" not in o["answer"].replace(" ", "")),
}


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_example_checks_clean(path):
    build_file(path)


def test_every_example_has_an_end_to_end_run():
    assert {p.name for p in EXAMPLES.glob("*.lm")} == set(RUNS)


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(RUNS))
def test_example_runs_on_bundled_model(name):
    args, ok = RUNS[name]
    if ok is None:
        pytest.skip("runs against the shared vLLM server (test_served_vllm.py)")
    p = subprocess.run(
        [sys.executable, "-m", "lmlang.cli", "run", str(EXAMPLES / name), "--json", *args],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert ok(out), out
