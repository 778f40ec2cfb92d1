"""The hole guide (constraints/hole.py) on the tiny tokenizer: the exact set
of tokens each step allows, for a choice, a regex with a healed seam space,
the token budget and the terminators."""

import re

import pytest
import torch

from lmlang.constraints import spec as C
from lmlang.constraints.hole import DEFAULT_MAX_TOKENS, ENDED, FEED, SAMPLE, HolePlan

NEG_INF = float("-inf")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    import os

    from tiny import build_tokenizer

    from lmlang.constraints.engine import clear_memory_cache
    from lmlang.constraints.vocab import TokenizerInfo

    old = os.environ.get("LMLANG_HOME")
    os.environ["LMLANG_HOME"] = str(tmp_path_factory.mktemp("home"))
    clear_memory_cache()
    try:
        yield TokenizerInfo.from_hf(build_tokenizer())
    finally:
        clear_memory_cache()
        if old is None:
            os.environ.pop("LMLANG_HOME")
        else:
            os.environ["LMLANG_HOME"] = old


def logits(tok):
    # distinct finite scores, so a kept score can be told from a copied one
    return torch.arange(tok.vocab_size, dtype=torch.float32) / tok.vocab_size


def finite(masked) -> set[int]:
    return {int(i) for i in torch.nonzero(torch.isfinite(masked)).flatten()}


def guide_allowed(hole) -> set[int]:
    return {int(i) for i, ok in enumerate(hole.guide.allowed_mask()) if ok}


def plan(tok, c, heal="", next_text=None):
    nxt = tok.encode(next_text)[0] if next_text else None
    return HolePlan("v", c, tok, [tok.eos_token_id], heal, nxt)


def test_choice_follows_canonical_paths_then_ends(tok):
    options = ("positive", "negative", "neutral")
    paths = [tok.encode(o) for o in options]
    hole = plan(tok, C.Choice(options)).start()
    x = logits(tok)
    assert hole.next(x) == SAMPLE
    assert finite(hole.masked) == {p[0] for p in paths}
    assert torch.equal(hole.masked[[p[0] for p in paths]], x[[p[0] for p in paths]])
    target = paths[2]  # "neutral": shares its start with "negative"
    assert hole.take(target[0]) is False
    while True:
        kind = hole.next(x)
        if kind == ENDED:
            break
        if kind == FEED:
            assert hole.block == target[len(hole.gen) - len(hole.block) : len(hole.gen)]
            continue
        n = len(hole.gen)
        assert finite(hole.masked) == {p[n] for p in paths if len(p) > n and p[:n] == hole.gen}
        assert hole.take(target[n]) is False
    assert hole.gen == target and hole.value() == "neutral"
    assert hole.ended_by in ("complete", "stop")


def test_terminator_ends_a_value_only_where_it_may_end(tok):
    dot, eos = tok.encode(".")[0], tok.eos_token_id
    four = tok.encode("4")[0]
    p = plan(tok, C.IntType(), next_text=". Done")
    assert p.ends == {eos, dot}
    hole = p.start()
    x = logits(tok)
    assert hole.next(x) == SAMPLE
    before = guide_allowed(hole)
    assert finite(hole.masked) == before and dot not in before and eos not in before
    hole.take(four)
    assert hole.next(x) == SAMPLE
    allowed = guide_allowed(hole)
    assert eos in allowed and dot not in allowed
    assert finite(hole.masked) == allowed | {dot}
    assert float(hole.masked[dot]) == float(x[dot])  # the model's own score, not a forced one
    assert hole.take(dot) is True
    assert hole.ended_by == "next-text" and hole.value() == "4" and hole.gen == [four]

    by_eos = p.start()
    by_eos.next(x)
    by_eos.take(four)
    by_eos.next(x)
    assert by_eos.take(eos) is True and by_eos.ended_by == "eos"

    beam = p.start(seam=False)  # beams end on EOS only
    beam.next(x)
    beam.take(four)
    assert finite(beam.mask(x)) == allowed


def test_regex_with_healed_space(tok):
    space = tok.encode(" ")
    assert len(space) == 1
    p = plan(tok, C.Regex("[a-z]{2,6}"), heal=" ", next_text="\n")
    # Healed: " " + a token the regex allows first ([a-z]{1,6}); or the bare space.
    by_bytes = {b: i for i, b in reversed(list(enumerate(tok.token_bytes))) if b}
    healed = {
        i: by_bytes[b[1:]]
        for i, b in enumerate(tok.token_bytes)
        if b.startswith(b" ") and re.fullmatch(rb"[a-z]{1,6}", b[1:]) and b[1:] in by_bytes
    }
    assert healed
    # Healed tokens whose text after the space is several tokens (" step" ->
    # "st" "ep"): admitted on their first byte, checked whole when picked.
    split = {
        i
        for i, b in enumerate(tok.token_bytes)
        if b.startswith(b" ") and len(b) > 1 and b[1:] not in by_bytes and re.fullmatch(rb"[a-z]", b[1:2])
    }
    assert {tok.token_by_bytes()[b" step"], tok.token_by_bytes()[b" capital"]} <= split
    hole = p.start()
    x = logits(tok)
    assert hole.next(x) == SAMPLE
    assert finite(hole.masked) == set(healed) | set(space) | split
    first = max(healed, key=lambda i: len(tok.token_bytes[i]))
    assert hole.take(first) is False
    rest = tok.token_bytes[healed[first]].decode()
    assert hole.gen == [first] and hole.text() == rest and hole.healing == "" and hole.heal_text == " "
    assert hole.next(x) == SAMPLE  # now an ordinary step of the regex
    assert finite(hole.masked) - {tok.encode("\n")[0]} == guide_allowed(hole)

    bare = p.start()
    bare.next(x)
    assert bare.take(space[0]) is False
    assert bare.gen == space and bare.text() == "" and bare.generated == 0
    assert bare.next(x) == SAMPLE and finite(bare.masked) == guide_allowed(bare)


def test_healed_token_split_in_two_after_the_seam(tok):
    """ " step" is one model token, but "step" alone is "st" + "ep": healing
    still offers it (the guide takes "st" "ep"; the budget counts one token),
    and " capital" (7 letters) is refused by [a-z]{2,6} when picked."""
    step, capital = tok.token_by_bytes()[b" step"], tok.token_by_bytes()[b" capital"]
    p = plan(tok, C.Regex("[a-z]{2,6}"), heal=" ", next_text="\n")
    hole = p.start()
    assert hole.next(logits(tok)) == SAMPLE and torch.isfinite(hole.masked[capital])
    assert hole.fits(capital) is False and hole.fits(step) is True
    assert hole.take(step) is False
    assert hole.gen == [step] and hole.value() == "step" and hole.generated == 1
    assert hole.guide.remaining_tokens() == DEFAULT_MAX_TOKENS - 1  # one model token spent, not the guide's two


def test_choice_option_healed_into_one_token(tok):
    """A choice after a held-back space follows the options' healed spelling
    (" capital", one token) even where the bare option is several tokens:
    the most likely option wins, as on a server given the same token paths."""
    capital, step = tok.token_by_bytes()[b" capital"], tok.token_by_bytes()[b" step"]
    x = torch.zeros(tok.vocab_size)
    x[capital], x[step] = 2.0, 1.0
    hole = plan(tok, C.Choice(("step", "capital")), heal=" ").start()
    assert hole.next(x) == SAMPLE
    assert finite(hole.masked) == {capital, step}
    assert hole.fits(capital) and hole.take(capital) is False
    assert hole.next(x) == ENDED  # the guide ends the value: no option continues "capital"
    assert hole.value() == "capital" and hole.gen == [capital]


def test_budget_one_place(tok):
    a = tok.encode("a")[0]
    x = logits(tok)
    # tokens(v) <= 3: the guide ends the value.
    short = plan(tok, C.MaxTokens(3)).start()
    assert short.plan.budget == 3
    for _ in range(3):
        assert short.next(x) == SAMPLE
        short.take(a)
    assert short.next(x) == ENDED and short.ended_by == "max_tokens" and short.value() == "aaa"
    # No budget: every hole carries the default one in its constraint, so its
    # guide ends the value (free text on a character boundary, a shape closed in time).
    free = plan(tok, None).start()
    assert free.plan.budget == free.plan.compiled.plan.max_tokens == DEFAULT_MAX_TOKENS
    for _ in range(DEFAULT_MAX_TOKENS):
        assert free.next(x) == SAMPLE
        free.take(a)
    assert free.next(x) == ENDED and free.ended_by == "max_tokens" and len(free.gen) == DEFAULT_MAX_TOKENS
    for c in (C.JsonSchema('{"type": "object"}'), C.Regex("[a-z]+"), C.IntType()):
        p = plan(tok, c)
        assert p.compiled.plan.max_tokens == p.budget == DEFAULT_MAX_TOKENS


def test_clone_is_independent(tok):
    x = logits(tok)
    hole = plan(tok, C.Regex("[a-z]{2,6}")).start(seam=False)
    hole.mask(x)
    other = hole.clone()
    other.take(tok.encode("a")[0])
    assert hole.gen == [] and hole.text() == "" and other.text() == "a"
    assert hole.mask(x) is not other.mask(x)


def test_budget_below_the_shortest_value_fails_before_decoding(tok):
    """The shortest `{"name": "", "age": 0}` takes more than 3 tokens: the hole
    fails by name before any token is decoded, instead of being cut short."""
    from lmlang.errors import LmlangRuntimeError

    schema = '{"properties": {"age": {"type": "integer"}, "name": {"type": "string"}}, "required": ["name", "age"], "type": "object"}'
    with pytest.raises(
        LmlangRuntimeError, match=r"hole \[v\]: its shortest value found needs \d+ tokens, over the budget of 3"
    ) as e:
        plan(tok, C.All((C.JsonSchema(schema), C.MaxTokens(3))))
    assert e.value.code == "no-value-fits" and "tokens(v) <= 3" in e.value.hint


def test_a_grammar_bounding_its_characters_allows_every_token_that_fits(tok):
    """`x matches R and len(x) <= n` is one grammar (llguidance `&`) that
    bounds the characters itself: a token fits when some value of at most n
    characters starts with it, with no slack kept on top (the server allows
    the same tokens)."""
    by_bytes = tok.token_by_bytes()
    cap, ital = by_bytes[b"cap"], by_bytes[b"ital"]
    p = plan(tok, C.All((C.Regex("[a-z]+"), C.MaxChars(4))))
    assert p.compiled.plan.source.endswith("&len")
    allowed = p.start().guide.allowed_mask()
    assert allowed[cap] and allowed[ital]  # once masked: 4 - 1 (the shortest close) - 2 (slack) < 3
    tight = plan(tok, C.All((C.Regex("[a-z]+"), C.MaxChars(3)))).start().guide.allowed_mask()
    assert tight[cap] and not tight[ital]


@pytest.mark.parametrize("heal", ["", " "])
def test_a_small_budget_leaves_the_first_token_to_the_model(tok, heal):
    """`y is int and tokens(y) <= 3` (or <= 4 after a healed space, which the
    budget counts): the witness "0" plus the closing slack reached the budget
    at once, so closing mode forced "0" before the model wrote anything and
    every answer was 0. The first value token is the model's pick among the
    digits (fits() still refuses one the budget cannot finish)."""
    digits = {tok.token_by_bytes()[str(d).encode()] for d in range(10)}
    hole = plan(tok, C.All((C.IntType(), C.MaxTokens(3 + len(heal)))), heal=heal).start()
    x = logits(tok)
    if heal:
        assert hole.next(x) == SAMPLE
        assert hole.take(tok.encode(" ")[0]) is False
    assert hole.next(x) == SAMPLE
    assert digits <= finite(hole.masked)
    seven = tok.token_by_bytes()[b"7"]
    assert hole.take(seven) is False
    assert hole.value() == "7"
