"""A parallel batch reuses what a call alone reuses (issue #14): each row's
prompt in the prefix cache, rows with nothing to feed sitting a forward out,
and the dispatch rule that decodes fully cached calls one by one."""

import pytest
import torch

import lmlang
import lmlang.runtime.lm as L
from lmlang.runtime import prefix as P
from lmlang.runtime.dispatch import CALL_BY_CALL, ONE_BATCH


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    from lmlang.models.loader import load_model
    from lmlang.runtime.lm import HFModel

    return HFModel(load_model(tiny_model_dir, device="cpu"))


def rows_of(lm) -> list[list[int]]:
    header = lm.encode("You answer questions about short reviews of restaurants. Review: ", first=True)
    text = lm.encode("the pasta was perfect and cheap")
    return [header + text + lm.encode(tail) for tail in ("\nLabel:", "\nTopic of it, in a word:", "\nStars:")]


def flat(lm, seqs):
    """The reference: one padded prefill, no cache."""
    reuse = lm.prefix_reuse
    lm.prefix_reuse = False
    try:
        return P.prefill(lm, seqs)
    finally:
        lm.prefix_reuse = reuse


@pytest.fixture()
def slots(lm):
    """Token slots (rows x width) of every forward pass the model computes."""
    seen: list = []
    hook = lm.model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["input_ids"].numel()), with_kwargs=True
    )
    yield seen
    hook.remove()


def test_a_small_batch_keeps_each_rows_prompt_and_takes_it_back(lm, slots):
    seqs = rows_of(lm)
    lm.prefix_cache.clear()
    first = P.prefill(lm, seqs)
    assert all(tuple(s) in lm.prefix_cache.entries for s in seqs)  # each row's prompt, as one row alone keeps it
    # The same calls again, each a little longer (the next chunk of a
    # prompt): every row comes from its own entry, the tails in one forward.
    longer = [s + lm.encode(" ok") for s in seqs]
    slots.clear()
    again = P.prefill(lm, longer)
    assert slots == [len(seqs) * 3]  # one forward of the tails (" ok": 3 byte tokens)
    ref = flat(lm, longer)
    assert again.ids == ref.ids == longer
    assert torch.allclose(again.logits, ref.logits, atol=1e-4)
    step = [[7], [8], [9]]
    assert torch.allclose(again.feed(step), ref.feed(step), atol=1e-4)
    assert torch.allclose(first.logits, flat(lm, seqs).logits, atol=1e-4)


def test_rows_own_entries_only_where_they_feed_fewer_slots(lm):
    """Rows whose entries cover no more than their shared start take the
    shared path (the radix tree), not one entry per row."""
    seqs = rows_of(lm)
    lm.prefix_cache.clear()
    P.prefill(lm, [seqs[0][:12]])  # an entry covering part of the header only
    own = [lm.prefix_cache.covered(s) for s in seqs]
    assert own == [12, 12, 12]
    assert P._own_entries(lm, seqs) is None  # the shared start costs the same and the rest is shared
    lm.prefix_cache.clear()
    P.prefill(lm, seqs)
    assert P._own_entries(lm, [s + [5] for s in seqs]) is not None


def test_an_exact_entry_beats_a_longer_one(lm):
    seqs = rows_of(lm)
    lm.prefix_cache.clear()
    header = seqs[0][:20]
    P.prefill(lm, [header])
    lm.prefix_cache.store(seqs[0], flat(lm, [seqs[0]]), prune=False)  # a longer entry, stored later
    batch, covered = lm.prefix_cache.lookup(header)
    assert covered == len(header) and batch is not None
    assert torch.allclose(batch.logits, flat(lm, [header]).logits, atol=1e-4)  # its logits: nothing to feed


def test_a_row_copy_is_the_rows_own_dense_batch(lm):
    seqs = rows_of(lm)
    lm.prefix_cache.clear()
    batch = P.prefill(lm, seqs)  # a radix tree: pads between the levels
    assert not batch.dense
    for r, s in enumerate(seqs):
        row = batch.row_copy(r)
        ref = flat(lm, [s])
        assert row.dense and row.ids == [s] and row.mask.shape[1] == len(s)
        assert torch.allclose(row.logits, ref.logits, atol=1e-4)
        assert torch.allclose(row.feed([[11, 12]]), ref.feed([[11, 12]]), atol=1e-4)


@pytest.mark.parametrize("sit_out", [True, False])
def test_rows_with_nothing_to_feed_sit_the_forward_out(lm, monkeypatch, slots, sit_out):
    """Feeding one row of four: with the others sitting out (a forward over
    one row) or not (a forward over four), every row's logits and later
    steps are the same."""
    seqs = rows_of(lm) + [rows_of(lm)[0][:-2]]
    lm.prefix_cache.clear()
    ref = flat(lm, seqs)
    batch = flat(lm, seqs)
    monkeypatch.setattr(L, "SIT_OUT", 2 if sit_out else 100)
    slots.clear()
    got = batch.feed([[], [5, 6], [], []])
    assert slots == [2 if sit_out else 8]
    monkeypatch.undo()
    want = ref.feed([[], [5, 6], [], []])
    assert torch.allclose(got, want, atol=1e-4)
    assert batch.ids == ref.ids and batch.next_pos == ref.next_pos
    step = [[7], [8], [9], [10]]
    assert torch.allclose(batch.feed(step), ref.feed(step), atol=1e-4)


FLOW = """
input t: str
model m = "{model}"
query yes(x: str) using m {{ "A short review of a place to eat. Is it {{x}}? [a]" where a in ["yes", "no"] }}
query word(x: str) using m {{ "A short review of a place to eat. Say {{x}}: [w]" where tokens(w) <= 3 }}
query num(x: str) using m {{ "A short review of a place to eat. {{x}} = [n]" where n is int and tokens(n) <= 3 }}
flow {{
    a = yes(t)
    b = word(t)
    c = yes(t + "!")
    d = num(t)
    emit out = [a.a, b.w, c.a, d.n]
}}
"""


def test_a_repeated_row_decodes_call_by_call_with_the_same_results(tiny_model_dir):
    """The rule: one batch while anything is left to prefill; call by call
    once the prefix cache holds every call's whole prompt (the same row
    again, result cache off). The trace says which, and the results are the
    sequential ones every time."""
    src = FLOW.format(model=tiny_model_dir)
    seq = lmlang.compile(src, cache=False, parallel=False).run(t="the soup was cold")
    par = lmlang.compile(src, cache=False)
    rules = []
    for _ in range(3):
        par.trace.records.clear()
        assert par.run(t="the soup was cold") == seq
        rules.append(sorted((r.batch["calls"], r.batch["rule"]) for r in par.trace.records))
    assert rules[0] == [(4, ONE_BATCH)] * 4
    assert rules[1] == rules[2] == [(1, CALL_BY_CALL)] * 4
    par.trace.records.clear()
    assert par.run(t="a new row") == lmlang.compile(src, cache=False, parallel=False).run(t="a new row")
    assert [r.batch for r in par.trace.records] == [{"calls": 4, "rule": ONE_BATCH}] * 4


def test_calls_that_write_text_batch_even_with_every_prompt_cached(tiny_model_dir):
    """Holes that may write more than a few tokens share every decoding step
    in one batch, so a repeated row still batches; the results are the
    sequential ones."""
    src = FLOW.replace("tokens(w) <= 3", "tokens(w) <= 8")
    src = src.format(model=tiny_model_dir)
    seq = lmlang.compile(src, cache=False, parallel=False).run(t="the soup was cold")
    par = lmlang.compile(src, cache=False)
    for _ in range(2):
        par.trace.records.clear()
        assert par.run(t="the soup was cold") == seq
        assert [r.batch for r in par.trace.records] == [{"calls": 4, "rule": ONE_BATCH}] * 4
