"""sample(n: k), vote and best_of on a served model (issue #15): the same
result fields as locally (runtime/samples.py), against a scripted fake server."""

from __future__ import annotations

import pytest

from test_served_engine import _answer, _program
from test_serving_client import FakeServer

REPLIES = [(200, _answer(" red")), (200, _answer(" blue")), (200, _answer(" red"))]


def query(decoder: str) -> str:
    return f'query q(t: str) using m decode {decoder} {{ "Label {{t}}: [y]" where y in ["red", "blue"] }}'


def test_vote_on_a_server_exposes_samples_and_votes(tiny_model_dir, monkeypatch):
    with FakeServer(REPLIES) as fake:
        prog = _program(tiny_model_dir, fake.url, query("vote(n: 3, seed: 1)"), monkeypatch, concurrency=1)
        out = prog.queries["q"]("x")
    assert out["y"] == "red" and sorted(out["samples"]) == ["blue", "red", "red"]
    assert out["votes"] == {"red": 2, "blue": 1} and list(out["votes"]) == ["red", "blue"]
    assert prog.trace.records[-1].details["votes"] == {"red": 2, "blue": 1}


def test_sample_n_on_a_server_returns_lists(tiny_model_dir, monkeypatch):
    with FakeServer(REPLIES) as fake:
        prog = _program(tiny_model_dir, fake.url, query("sample(n: 3, seed: 1)"), monkeypatch, concurrency=1)
        out = prog.queries["q"]("x")
    assert sorted(out["y"]) == ["blue", "red", "red"]
    assert sorted(r["body"]["seed"] for r in fake.requests) == [
        s + k for s in [min(r["body"]["seed"] for r in fake.requests)] for k in range(3)
    ]


@pytest.mark.parametrize("n", [2, 3])
def test_best_of_on_a_server_exposes_scores(tiny_model_dir, monkeypatch, n):
    with FakeServer(REPLIES) as fake:
        prog = _program(tiny_model_dir, fake.url, query(f"best_of(n: {n}, seed: 1)"), monkeypatch, concurrency=1)
        out = prog.queries["q"]("x")
    assert len(out["scores"]) == n and out["y"] in ("red", "blue")


@pytest.mark.parametrize(
    "decl,message",
    [
        (
            'query q(t: str) using m guard leak { system "s" user "{t}" assistant "[y]" where y in ["a"] }',
            "cannot run `guard leak`",
        ),
        ('query q(t: str, ls: list[str]) using m { "L {t}: [y]" where y in ls }', "run-time list"),
    ],
)
def test_what_a_server_cannot_do_is_a_check_error(decl, message):
    import lmlang
    from lmlang.errors import CheckError

    with pytest.raises(CheckError) as e:
        lmlang.compile(f'model m = server "http://127.0.0.1:9/v1" {{ model: "m", backend: guidance }}\n{decl}')
    assert message in str(e.value)
