"""Parallel steps inside a row: independent calls decode together, and the
flow's results are exactly those of running it statement by statement."""

import pytest
import torch

import lmlang
import lmlang.runtime.decode as D
from lmlang.runtime.dispatch import Strategy

QUERIES = '''
query yes(x: str) using m { "Is it {x}? [a]" where a in ["yes", "no"] }
query word(x: str) using m { "Say {x}: [w]" where tokens(w) <= 3 }
query num(x: str) using m { "{x} = [n]" where n is int and tokens(n) <= 3 }
query draw(x: str) using m decode sample(temperature: 2.0, seed: 3) { "{x} [d]" where tokens(d) <= 4 }
'''

FLOWS = {
    "independent": '''
        a = yes(t)
        b = word(t)
        c = yes(t + "!")
        d = num(t)
        emit out = [a.a, b.w, c.a, d.n]''',
    "carried loop": '''
        answers = []
        k = 0
        for q in [t, t + "?", t + "!", "x"] {
            r = yes(q)
            answers = answers + [r.a]
            if r.a == "yes" { k = k + 1 }
        }
        emit out = answers, k = k''',
    "counters in branches": '''
        s1 = 0
        s2 = 0
        for i in range(3) {
            if yes(t + str(i)).a == "yes" { s1 = s1 + 1 }
            if word(t + str(i)).w != "" { s2 = s2 + 1 }
        }
        emit out = [s1, s2]''',
    "nested loops and chains": '''
        out = []
        for a in [t, "b"] {
            for b in ["c", "d"] {
                w = word(a + b).w
                out = out + [w, yes(w).a]
            }
        }
        emit out = out''',
    "dependent on earlier result": '''
        x = word(t).w
        y = word(x).w
        z = yes(y).a
        emit out = [x, y, z]''',
    "calls in branches and emits": '''
        if yes(t).a == "yes" { v = word("p").w } else { v = word("q").w }
        emit out = v, both = [num(t).n, num(t + t).n]''',
    "sampling in a loop": '''
        draws = []
        for i in range(5) { draws = draws + [draw(t).d] }
        emit out = draws''',
}


def program(model_dir, body: str, **settings):
    return lmlang.compile(
        f'input t: str\nmodel m = "{model_dir}"\n{QUERIES}\nflow {{{body}\n}}\n', cache=False, **settings
    )


def count_batches(monkeypatch) -> list:
    sizes = []
    real = D.decode_rows
    monkeypatch.setattr(D, "decode_rows", lambda lm, runs, *a, **k: sizes.append(len(runs)) or real(lm, runs, *a, **k))
    return sizes


@pytest.mark.parametrize("name", list(FLOWS))
def test_parallel_steps_give_the_sequential_results(tiny_model_dir, name, monkeypatch):
    rows = [{"t": "cat"}, {"t": "dog"}]
    sizes = count_batches(monkeypatch)
    seq = program(tiny_model_dir, FLOWS[name], parallel=False).run_batch(rows)
    sequential_batches = len(sizes)
    sizes.clear()
    par = program(tiny_model_dir, FLOWS[name]).run_batch(rows)
    assert par == seq
    if name != "dependent on earlier result":  # a chain has nothing to overlap
        assert len(sizes) < sequential_batches, (sizes, sequential_batches)


def test_four_independent_calls_of_one_row_decode_as_one_batch(tiny_model_dir, monkeypatch):
    sizes = count_batches(monkeypatch)
    program(tiny_model_dir, FLOWS["independent"]).run(t="cat")
    assert sizes == [4]  # three queries, four calls, one batch
    sizes.clear()
    program(tiny_model_dir, FLOWS["independent"], parallel=False).run(t="cat")
    assert sizes == [1, 1, 1, 1]


@pytest.mark.parametrize("packed", [True, False], ids=["tree in one forward", "level by level"])
def test_rows_that_start_alike_compute_their_start_once(tiny_model_dir, packed, monkeypatch):
    """prefix.prefill: a header every row shares, then the row's own text
    that several calls share, then each call's tail: the shared parts are
    fed once (fewer token slots than one padded prefill), and every row's
    cache and logits are those of the flat prefill. Under a root, the texts
    and tails go in one packed forward (tree_feed.py); without it (or where
    the backend refuses), level by level."""
    from lmlang.models.loader import load_model
    from lmlang.runtime.lm import HFBatch, HFModel
    from lmlang.runtime.prefix import prefill

    lm = HFModel(load_model(tiny_model_dir, device="cpu"))
    if not packed:
        monkeypatch.setattr(HFBatch, "feed_tree", lambda self, nodes, leaves: None)
    header = lm.encode("You answer questions about short reviews of restaurants. Review: ", first=True)
    texts = [lm.encode(t) for t in ("the pasta was perfect and cheap", "rude staff, cold soup, never again")]
    tails = [lm.encode(t) for t in ("\nLabel:", "\nTopic of it:", "\nStars:", "")]
    shared = [header + t + tail for t in texts for tail in tails]
    fed: list = []  # token slots of each forward pass
    hook = lm.model.register_forward_pre_hook(
        lambda mod, args, kwargs: fed.append(kwargs["input_ids"].numel()), with_kwargs=True
    )
    # With the header as the common root (cached), and with a row that ends
    # inside it (no root: the header is a shared level like the texts).
    try:
        # Packed: the header, then the tree; level by level (and always without a root): header, texts, tails.
        for seqs, packs in ((shared, packed), (shared + [header[:3]], False)):
            lm.prefix_reuse, fed[:] = False, []
            flat = prefill(lm, seqs)
            flat_slots, fed[:] = sum(fed), []
            lm.prefix_reuse = True
            lm.prefix_cache.clear()
            tree = prefill(lm, seqs)
            assert sum(fed) < flat_slots
            assert len(fed) == 2 if packs else len(fed) >= 3
            assert tree.ids == flat.ids == seqs
            assert torch.allclose(tree.logits, flat.logits, atol=1e-4)
            step = [[7] for _ in seqs]  # one more token on every row: the caches agree too
            assert torch.allclose(tree.feed(step), flat.feed(step), atol=1e-4)
    finally:
        hook.remove()


def test_queries_kept_apart_when_the_strategy_says_so(tiny_model_dir, monkeypatch):
    sizes = count_batches(monkeypatch)
    p = program(tiny_model_dir, FLOWS["independent"])
    p._executor().strategy = Strategy(queries="separate")
    shared = program(tiny_model_dir, FLOWS["independent"]).run(t="cat")
    sizes.clear()
    assert p.run(t="cat") == shared
    assert sorted(sizes) == [1, 1, 2]  # yes x2, word, num


def test_registered_functions_run_in_order_and_only_when_the_flow_calls_them(tiny_model_dir):
    seen = []

    def note(x):
        seen.append(x)
        return x

    body = '''
        a = yes(note(t))
        b = yes(t + "2")
        c = note(b.a)
        d = yes(note(t + "3"))
        emit out = [a.a, c, d.a]'''
    src = f'input t: str\nmodel m = "{tiny_model_dir}"\n{QUERIES}\nflow {{{body}\n}}\n'
    runs = []
    for parallel in (False, True):
        seen.clear()
        out = lmlang.compile(src, functions={"note": note}, cache=False, parallel=parallel).run(t="cat")
        runs.append((out, list(seen)))
    assert runs[0] == runs[1]
    assert runs[0][1][0] == "cat" and runs[0][1][2] == "cat3" and len(runs[0][1]) == 3


def test_an_error_surfaces_where_the_flow_meets_it(tiny_model_dir):
    body = '''
        a = yes(t)
        b = [1, 2][5]
        c = yes(t + "!")
        emit out = a.a'''
    for parallel in (False, True):
        (err,) = program(tiny_model_dir, body, parallel=parallel).run_batch([{"t": "cat"}], errors="return")
        assert isinstance(err, lmlang.LmlangRuntimeError) and "out of range" in err.message


def test_each_sampling_call_in_a_loop_draws_anew_and_reproducibly(tiny_model_dir):
    p = program(tiny_model_dir, FLOWS["sampling in a loop"])
    first = p.run_batch([{"t": "cat"}, {"t": "cat"}])
    draws = first[0]["out"]
    assert len(set(draws)) >= 4, draws  # five calls, five draws (not one draw five times)
    assert first[1]["out"] != draws  # another row, other draws
    assert p.run_batch([{"t": "cat"}, {"t": "cat"}]) == first  # the same seeds again
    assert program(tiny_model_dir, FLOWS["sampling in a loop"]).set_seed(9).run(t="cat")["out"] != draws


# ---------------------------------------------------------------- experts of one base


@pytest.fixture(scope="module")
def experts(tiny_model_dir, tmp_path_factory):
    from test_adapters import make_lora

    root = tmp_path_factory.mktemp("experts")
    return make_lora(tiny_model_dir, root / "a", seed=1, r=8, alpha=64), make_lora(
        tiny_model_dir, root / "b", seed=2, r=8, alpha=64
    )


def routed(tiny_model_dir, experts, **settings):
    la, lb = experts
    return lmlang.compile(
        f'''
model base = "{tiny_model_dir}"
adapter la = lora "{la}"
adapter lb = lora "{lb}"
model ea = base + la
model eb = base + lb
router r = route rules {{
    ea: contains ["math"]
    eb: contains ["food"]
    default: ea
}}
query q(x: str) using r(x) {{ "{{x}} [v]" where tokens(v) <= 4 }}
input t: str
flow {{ o = q(t) emit expert = o.expert, v = o.v }}
''',
        cache=False,
        **settings,
    )


ROUTED_ROWS = [{"t": f"{kind} question {i}"} for i in range(4) for kind in ("math", "food")]


def test_routed_rows_decode_in_one_mixed_batch_with_the_grouped_results(tiny_model_dir, experts, monkeypatch):
    sizes = count_batches(monkeypatch)
    grouped = routed(tiny_model_dir, experts)
    grouped._executor().strategy = Strategy(adapters="grouped")
    g = grouped.run_batch(ROUTED_ROWS)
    assert sorted(sizes) == [4, 4]  # one batch per expert
    sizes.clear()
    mixed = routed(tiny_model_dir, experts)
    mixed._executor().strategy = Strategy(adapters="mixed")
    m = mixed.run_batch(ROUTED_ROWS)
    assert sizes == [8]  # both experts' rows in one batch
    assert [o["expert"] for o in m] == ["ea", "eb"] * 4
    assert m == g
    assert {r.model for r in mixed.trace.records} == {"ea", "eb"}


def test_a_mixed_model_gives_each_row_its_own_experts_logits(tiny_model_dir, experts):
    prog = routed(tiny_model_dir, experts)
    ex = prog._executor()
    ea, eb = ex.lm(prog.frontend.compiled.names["ea"]), ex.lm(prog.frontend.compiled.names["eb"])
    mixed = ex.mixed_lm([ea, eb, ea])
    assert mixed.prefix_reuse is False
    ids = [ea.encode("The capital of France", first=True)] * 3
    b = mixed.new_batch(3)
    b.feed(ids)
    alone = []
    for lm in (ea, eb, ea):
        one = lm.new_batch(1)
        one.feed(ids[:1])
        alone.append(one.logits[0])
    assert torch.allclose(b.logits, torch.stack(alone), atol=1e-5)
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)  # the experts do differ
    assert ex.mixed_lm([ea, ea]) is ea


def test_a_mixed_batch_is_prefilled_per_expert_and_merged(tiny_model_dir, experts):
    """Each expert prefills its own rows (sharing their header, filling its
    own prefix cache); the merged batch then steps every row with its own
    expert exactly as the experts' own batches do."""
    from lmlang.runtime.lm import HFBatch
    from lmlang.runtime.prefix import prefill

    prog = routed(tiny_model_dir, experts)
    ex = prog._executor()
    ea, eb = ex.lm(prog.frontend.compiled.names["ea"]), ex.lm(prog.frontend.compiled.names["eb"])
    head = ea.encode("You answer one question about food or maths, briefly. Question:", first=True)
    rows_a = [head + ea.encode(t) for t in (" what is two plus two", " is soup hot")]
    rows_b = [head + ea.encode(" pasta?")]
    a, b = prefill(ea, rows_a), prefill(eb, rows_b)
    assert ea.prefix_cache.entries and eb.prefix_cache.entries  # each expert cached its own header
    merged = HFBatch.merged(ex.mixed_lm([ea, ea, eb]), [a.fork(), b.fork()])
    assert merged.ids == rows_a + rows_b and not merged.dense  # the shorter part is padded
    assert torch.allclose(merged.logits, torch.cat([a.logits, b.logits]), atol=1e-5)
    step = merged.feed([[5], [6], [7]])
    assert torch.allclose(step, torch.cat([a.feed([[5], [6]]), b.feed([[7]])]), atol=1e-4)


def test_routed_rows_in_a_mixed_unit_reuse_each_experts_prefix_cache(tiny_model_dir, experts):
    prog = routed(tiny_model_dir, experts)
    prog._executor().strategy = Strategy(adapters="mixed")
    prog.run_batch(ROUTED_ROWS)
    ex = prog._executor()
    names = prog.frontend.compiled.names
    assert ex.lm(names["ea"]).prefix_cache.entries and ex.lm(names["eb"]).prefix_cache.entries
