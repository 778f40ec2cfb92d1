"""Routers and logit fusion on tiny models."""

import torch

import lmlang
from lmlang.runtime.fusion import combine


def prog(tiny_model_dir, tiny_model_dir_b, router: str, extra: str = ""):
    return lmlang.compile(f'''
model a = "{tiny_model_dir}"
model b = "{tiny_model_dir_b}"
{router}
{extra}
query q(x: str) using r(x) {{ "{{x}} [v]" where v in ["yes", "no"] }}
input t: str
flow {{ o = q(t) emit expert = o.expert, v = o.v }}
''')


def test_rules_router_first_match_wins_and_default(tiny_model_dir, tiny_model_dir_b):
    p = prog(
        tiny_model_dir,
        tiny_model_dir_b,
        '''
router r = route rules {
    a: matches r"[0-9]+ *[+*] *[0-9]+"
    b: contains ["thank", "sorry"]
    default: a
}''',
    )
    rows = [{"t": "What is 3 + 4?"}, {"t": "Thank you so much"}, {"t": "hello"}, {"t": "sorry, 2 * 2"}]
    out = p.run_batch(rows)
    assert [o["expert"] for o in out] == ["a", "b", "a", "a"]
    assert all(o["v"] in ("yes", "no") for o in out)
    assert {r.expert for r in p.trace.records} == {"a", "b"}


def test_embedding_router_picks_nearest_examples(tiny_model_dir, tiny_model_dir_b):
    p = prog(
        tiny_model_dir,
        tiny_model_dir_b,
        '''
router r = route embedding {
    a: ["What is 12 times 7?", "Compute 30 minus 4.", "Add 5 and 9."]
    b: ["The soup was cold and the waiter rude.", "I loved the film!", "Terrible service at the hotel."]
}''',
    )
    out = p.run_batch([{"t": "What is 8 times 9?"}, {"t": "The pasta was cold and the staff rude."}])
    assert [o["expert"] for o in out] == ["a", "b"]


def test_classify_router_matches_exact_choice_scoring(tiny_model_dir, tiny_model_dir_b):
    p = prog(
        tiny_model_dir,
        tiny_model_dir_b,
        '''
router r = route classify using a {
    a: "arithmetic questions"
    b: "restaurant reviews"
}''',
    )
    first = p.run(t="What is 2 + 2?")
    again = p.run(t="What is 2 + 2?")
    assert first["expert"] in ("a", "b") and first == again


def test_fused_logprobs_equal_weighted_combination(tiny_model_dir, tiny_model_dir_b):
    from lmlang.models.loader import load_model
    from lmlang.runtime.fusion import FusedLM
    from lmlang.runtime.lm import HFModel

    a = HFModel(load_model(tiny_model_dir, device="cpu"))
    b = HFModel(load_model(tiny_model_dir_b, device="cpu"))
    ids = a.encode("The capital of France is")
    fused = FusedLM([(a, 1.5), (b, -0.5)])
    out = fused.new_batch(1).feed([ids])[0]
    la = a.new_batch(1).feed([ids])[0]
    lb = b.new_batch(1).feed([ids])[0]
    expect = 1.5 * torch.log_softmax(la, -1) - 0.5 * torch.log_softmax(lb, -1)
    assert torch.allclose(out, expect, atol=1e-5)


def test_contrastive_keeps_only_plausible_tokens():
    expert = torch.tensor([[4.0, 3.5, 0.0, -5.0]])
    amateur = torch.tensor([[4.0, 0.0, 3.0, -5.0]])
    out = combine([expert, amateur], [1.0, -1.0], "contrastive", plausibility=0.1)
    p = torch.softmax(expert, -1)
    plausible = p >= 0.1 * p.max()
    # Every plausible token outranks every implausible one; all stay finite so
    # a constraint that allows only implausible tokens can still proceed.
    assert torch.isfinite(out).all()
    assert out[plausible].min() > out[~plausible].max()
    lp_e, lp_a = torch.log_softmax(expert, -1), torch.log_softmax(amateur, -1)
    assert torch.allclose(out[plausible], (lp_e - lp_a)[plausible])
    # Among plausible tokens the amateur's favourite is pushed down.
    assert int(out.argmax()) == 1


def test_fuse_node_runs_under_constraints(tiny_model_dir, tiny_model_dir_b):
    out = lmlang.compile(f'''
model a = "{tiny_model_dir}"
model b = "{tiny_model_dir_b}"
model f = fuse {{ a: 1.0, b: -0.5 }}
query q(x: str) using f {{ "{{x}} [v]" where v in ["positive", "negative"] }}
flow {{ o = q("I loved it") emit v = o.v }}
''').run()
    assert out["v"] in ("positive", "negative")
