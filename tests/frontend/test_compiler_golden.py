"""Golden fixtures: tests/fixtures/NAME.lm -> NAME.expected.json.

A clean fixture's expectation is its graph (JSON export) and warnings; a
broken one's is its list of diagnostics. Paths are written relative to the
fixtures folder ($FIXTURES), so the files are the same on every machine.

Regenerate after an intended change with:
    LMLANG_REGEN=1 python -m pytest tests/frontend/test_compiler_golden.py
and review the diff.
"""

import json
import os
from pathlib import Path

import pytest

from lmlang.graph import graph_from_json, graph_to_json
from lmlang.errors import LmlangError
from lmlang.frontend import build_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CASES = sorted(FIXTURES.glob("*.lm"))
REGEN = os.environ.get("LMLANG_REGEN") == "1"


@pytest.fixture(autouse=True)
def fixed_hub_cache(monkeypatch):
    """Hub ids are looked up in the local HF cache at check time: one fixed,
    empty cache makes the fixtures' warnings the same on every machine."""
    monkeypatch.setenv("HF_HUB_CACHE", str(FIXTURES / "no-hub-cache"))


def _normalise(obj):
    text = json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True)
    return json.loads(text.replace(str(FIXTURES), "$FIXTURES"))


def outcome(path: Path) -> dict:
    try:
        fe = build_file(path)
    except LmlangError as e:
        return _normalise({"ok": False, "diagnostics": [d.to_dict() for d in e.diagnostics]})
    return _normalise({"ok": True, "warnings": [d.to_dict() for d in fe.warnings], "graph": graph_to_json(fe.compiled)})


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_fixture_matches_expected(path):
    got = outcome(path)
    expected_path = path.with_suffix(".expected.json")
    if REGEN or not expected_path.exists():
        expected_path.write_text(json.dumps(got, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
        if not REGEN:
            pytest.fail(f"wrote missing {expected_path.name}; review it and run again")
    expected = json.loads(expected_path.read_text(encoding="utf-8"))
    assert got == expected


@pytest.mark.parametrize("path", [p for p in CASES if p.name.startswith("ok_")], ids=lambda p: p.stem)
def test_clean_fixture_graph_round_trips_through_json(path):
    compiled = build_file(path).compiled
    data = graph_to_json(compiled)
    back = graph_from_json(json.loads(json.dumps(data)))
    assert back == compiled
    assert graph_to_json(back) == data
    # the networkx view agrees with the plain one
    g = back.graph
    assert sorted(g.nodes) == sorted(compiled.nodes) and sorted(g.edges) == compiled.edges


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_fixture_name_says_whether_it_is_clean(path):
    assert outcome(path)["ok"] == path.name.startswith("ok_")


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_each_broken_fixture_expects_exactly_one_error(path):
    """One error per err_ fixture, so a fixture's name says which check it
    covers and a regression shows up as exactly that fixture failing;
    warnings may accompany it. A clean fixture expects no error at all.
    Reads the committed expectation, so a regeneration that lets a second
    error in (or drops the only one) is caught here too."""
    expected = json.loads(path.with_suffix(".expected.json").read_text(encoding="utf-8"))
    listed = expected.get("diagnostics", []) + expected.get("warnings", [])
    errors = [d["message"] for d in listed if d["severity"] == "error"]
    if path.name.startswith("err_"):
        assert expected["ok"] is False and len(errors) == 1, (path.name, errors)
    else:
        assert errors == [], (path.name, errors)


def test_every_diagnostic_has_a_span_in_a_real_file():
    for path in CASES:
        got = outcome(path)
        for d in got.get("diagnostics", []):
            if d["code"] == "too-many-errors":
                continue
            assert d["line"] >= 1 and d["col"] >= 1, (path.name, d)
            assert d["file"].startswith("$FIXTURES"), (path.name, d)
