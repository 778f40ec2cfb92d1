"""sample(n: k), vote and best_of expose their samples (issue #15), on the tiny model."""

from __future__ import annotations

import pytest

import lmlang
from lmlang.errors import CheckError

OPTIONS = ("alpha", "beta", "gamma delta")


def prog(tiny, decoder: str, flow: str = "r = pick(\"Greek\") emit r = r"):
    return lmlang.compile(f'''
model m = "{tiny}"
query pick(x: str) using m decode {decoder} {{ "{{x}} Pick one: [v] and [w]." where v in ["alpha", "beta", "gamma delta"] and w is int(0..9) }}
flow {{ {flow} }}
''')


def test_sample_n_returns_a_list_per_hole_each_sample_its_seed(tiny_model_dir):
    decoder = "sample(n: 4, temperature: 3.0, seed: 11)"
    out = prog(tiny_model_dir, decoder).queries["pick"](x="Greek")
    assert isinstance(out["v"], list) and len(out["v"]) == 4 and len(out["w"]) == 4
    assert all(v in OPTIONS for v in out["v"]) and all(isinstance(w, int) and 0 <= w <= 9 for w in out["w"])
    # k independent draws (seeds seed+0..k-1), repeatable
    assert len(set(zip(out["v"], out["w"]))) > 1
    again = prog(tiny_model_dir, decoder).queries["pick"](x="Greek")
    assert again == out


def test_checker_types_sample_lists(tiny_model_dir):
    p = prog(tiny_model_dir, "sample(n: 3, seed: 1)", 'r = pick("a") emit n = len(r.v), first = r.w[0] + 1')
    out = p.run()
    assert out["n"] == 3 and isinstance(out["first"], int)
    with pytest.raises(CheckError) as e:  # a list is not an int
        prog(tiny_model_dir, "sample(n: 3, seed: 1)", 'r = pick("a") emit bad = r.w + 1')
    assert "list" in str(e.value)


def test_vote_exposes_samples_and_tally(tiny_model_dir):
    decoder = "vote(n: 5, temperature: 3.0, seed: 2)"
    out = prog(tiny_model_dir, decoder).queries["pick"](x="Greek")
    samples, votes = out["samples"], out["votes"]
    assert len(samples) == 5 and all(isinstance(s, int) for s in samples)  # the voted hole is the last: w
    assert sum(votes.values()) == 5 and set(votes) == {str(s) for s in samples}
    top = max(votes.values())
    assert votes[str(out["w"])] == top
    # the winner is the first-drawn of the most frequent values
    assert out["w"] == next(s for s in samples if votes[str(s)] == top)


def test_best_of_exposes_scores(tiny_model_dir):
    out = prog(tiny_model_dir, "best_of(n: 3, temperature: 2.0, seed: 4)").queries["pick"](x="Greek")
    scores = out["scores"]
    assert len(scores) == 3 and all(isinstance(s, float) and s <= 0 for s in scores)


def test_vote_details_are_in_the_trace(tiny_model_dir):
    p = prog(tiny_model_dir, "vote(n: 3, temperature: 2.0, seed: 2)", "r = pick(\"Greek\") emit s = r.samples")
    p.run()
    rec = p.trace.records[-1]
    assert rec.decoder == "vote" and len(rec.details["samples"]) == 3 and sum(rec.details["votes"].values()) == 3


def test_flow_reads_the_fields(tiny_model_dir):
    p = prog(tiny_model_dir, "vote(n: 3, seed: 2)", 'r = pick("Greek") emit k = len(r.samples), best = r.w')
    out = p.run()
    assert out["k"] == 3 and isinstance(out["best"], int)


@pytest.mark.parametrize(
    "decoder,field",
    [("vote(n: 3)", "r.scores"), ("sample(seed: 1)", "r.samples"), ("best_of(n: 2)", "r.votes")],
)
def test_fields_of_other_decoders_are_check_errors(tiny_model_dir, decoder, field):
    with pytest.raises(CheckError) as e:
        prog(tiny_model_dir, decoder, f'r = pick("a") emit s = {field}')
    assert field.split(".")[1] in str(e.value)


def test_a_hole_named_like_a_decoder_field_is_refused(tiny_model_dir):
    with pytest.raises(CheckError) as e:
        lmlang.compile(f'''
model m = "{tiny_model_dir}"
query q() using m decode vote(n: 3) {{ "V: [votes]" where votes in ["a", "b"] }}
''')
    assert "'votes' is a result field of vote" in str(e.value)
