"""Seams between prompt text and holes fall on canonical token boundaries:
the cache ends up holding exactly the canonical tokenization of the text."""

import pytest

from lmlang.constraints import spec as C
from lmlang.runtime.decode import QueryRun, Sampler, decode_rows
from lmlang.runtime.prompt import RenderedPrompt


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    from lmlang.models.loader import load_model
    from lmlang.runtime.lm import HFModel

    return HFModel(load_model(tiny_model_dir, device="cpu"))


def decode(lm, chunks, holes, constraints, greedy=True, seed=0):
    run = QueryRun(lm, RenderedPrompt(tuple(chunks), tuple(holes)), constraints)
    (d,) = decode_rows(lm, [run], [Sampler(greedy, seed=seed)])
    return run, d


def full_text(chunks, holes, values):
    out = chunks[0]
    for h, c in zip(holes, chunks[1:]):
        out += values[h] + c
    return out


@pytest.mark.parametrize("seed", range(6))
def test_cache_holds_canonical_tokens_across_seams(lm, seed):
    chunks = ["Q: What is 12 * 7? Answer: ", ". Label: ", "\nStop here"]
    holes = ["n", "label"]
    cons = {"n": C.IntType(), "label": C.Choice(("positive", "negative"))}
    run, d = decode(lm, chunks, holes, cons, greedy=(seed == 0), seed=seed)
    assert isinstance(d.values["n"], int)
    texts = {h: d.texts[h] for h in holes}
    # Everything up to the last hole's value sits in the cache, canonically.
    expect = lm.encode(full_text(chunks, holes, texts)[: -len(chunks[-1])], first=True)
    assert d.token_ids == expect


def test_space_before_hole_is_healed(lm):
    run, d = decode(lm, ["Answer: ", "."], ["n"], {"n": C.IntType()})
    assert [h.heal for h in run.holes] == [" "]
    # The held-back space was written by the hole's first token (" 4"-style)
    # or as the bare space; either way the cache spells "Answer: <n>".
    assert lm.decode(d.token_ids).endswith(f"Answer: {d.texts['n']}")
    assert not d.texts["n"].startswith(" ")


def test_stops_before_drops_the_stop_text_from_cache(lm):
    chunks = ["Story: ", "\nEnd: ", "."]
    holes = ["s", "e"]
    cons = {"s": C.All((C.Stop("e", False), C.MaxTokens(8))), "e": C.Choice(("ok", "no"))}
    run, d = decode(lm, chunks, holes, cons, greedy=False, seed=3)
    assert "e" not in d.texts["s"] or len(d.texts["s"]) > 0
    expect = lm.encode(full_text(chunks, holes, d.texts)[: -len(chunks[-1])], first=True)
    assert d.token_ids == expect


@pytest.mark.parametrize("cons", [C.Choice(("yes",)), C.Regex("42")], ids=["one-option", "fixed-regex"])
def test_a_forced_value_after_a_held_back_space_keeps_the_space(lm, cons):
    """A value the constraint forces whole, after a prompt that ends in a
    space (held back for healing): the space is still in the cache, before
    the value (it was fed bare once: "Answer:yes")."""
    run, d = decode(lm, ["Answer: "], ["a"], {"a": cons})
    assert d.texts["a"] in ("yes", "42")
    assert lm.decode(d.token_ids).endswith("Answer: " + d.texts["a"])
