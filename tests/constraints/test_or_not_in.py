"""`or` over one hole's shapes, `not in [...]` and run-time lists (`in NAME`)
(issue #15): exact masks on the tiny 400-token vocabulary, check-time
refusals with positions, and decoding through a whole program."""

from __future__ import annotations

import numpy as np
import pytest

import lmlang
from lmlang.constraints import spec as C
from lmlang.constraints.shapes import any_of
from lmlang.errors import CheckError, LmlangRuntimeError

EXACT = ("outlines_core", "xgrammar")  # backends whose masks are exactly the prefix set (test_constraints.py)


@pytest.fixture(scope="module")
def hf_tok():
    from tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture()
def tok(hf_tok, lmlang_home):
    from lmlang.constraints.engine import TokenizerInfo, clear_memory_cache

    clear_memory_cache()
    return TokenizerInfo.from_hf(hf_tok)


def allowed(g) -> set[int]:
    return set(int(i) for i in np.flatnonzero(g.allowed_mask()))


def prefix_tokens(tok, done: bytes, values: list[bytes]) -> set[int]:
    """Exactly the tokens after which the text is still a prefix of a value (EOS when done is a value)."""
    out = {i for i, b in enumerate(tok.token_bytes) if b and any(v.startswith(done + b) for v in values)}
    return out | ({tok.eos_token_id} if done in values else set())


def walk_exact(tok, compiled, values: list[str], text: str, exact: bool) -> None:
    """Feed text's canonical tokens; at every step the mask is the prefix set
    (exact backends) or a subset of it holding the canonical next token (llguidance)."""
    vals = [v.encode() for v in values]
    g = compiled.start()
    done = b""
    for t in tok.encode(text) + [tok.eos_token_id]:
        want, got = prefix_tokens(tok, done, vals), allowed(g)
        if exact:
            assert got == want, (done, sorted(got ^ want))
        else:
            assert got <= want, (done, sorted(got - want))
        assert t in got, (done, t)
        if t == tok.eos_token_id:
            break
        g.advance(t)
        done += tok.token_bytes[t]


def compile_(c, tok, backend=None):
    from lmlang.constraints.engine import compile_constraint

    return compile_constraint(c, tok, backend)


# ----------------------------------------------------------------------------- `or`: one regex union
OR_DIGITS = any_of([C.Regex("[0-9]{2}"), C.Choice(("unknown", "none"))])
OR_VALUES = [f"{i:02d}" for i in range(100)] + ["unknown", "none"]


def test_or_of_choices_is_one_choice():
    assert any_of([C.Choice(("a", "b")), C.Choice(("b", "c"))]) == C.Choice(("a", "b", "c"))
    assert isinstance(OR_DIGITS, C.AnyOf)


@pytest.mark.parametrize("backend", ("llguidance",) + EXACT)
@pytest.mark.parametrize("text", ["42", "unknown", "none"])
def test_or_masks_exact(tok, backend, text):
    walk_exact(tok, compile_(OR_DIGITS, tok, backend), OR_VALUES, text, backend in EXACT)


@pytest.mark.parametrize("backend", ("llguidance", "xgrammar"))  # outlines_core: the int xfail of test_constraints.py
def test_or_of_int_and_bool(tok, backend):
    c = any_of([C.IntType(0, 20), C.BoolType()])
    walk_exact(tok, compile_(c, tok, backend), [str(i) for i in range(21)] + ["true", "false"], "17", backend in EXACT)


# ----------------------------------------------------------------------------- `not in`: a complement lexeme
def test_not_in_masks_exact(tok):
    """[ab]{1,2} minus "a" and "ab": after "a" only "a" continues (no EOS); EOS after "b"."""
    values = ["b", "aa", "ba", "bb"]
    cc = compile_(C.All((C.Regex("[ab]{1,2}"), C.NotIn(("a", "ab")))), tok)
    for text in values:
        walk_exact(tok, cc, values, text, exact=False)
    g = cc.start()
    g.advance(tok.encode("a")[0])
    got = allowed(g)
    assert got and got <= {i for i, b in enumerate(tok.token_bytes) if b == b"a"}
    assert tok.eos_token_id not in allowed(g)


def test_not_in_on_free_text_refuses_only_the_texts(tok):
    cc = compile_(C.All((C.NotIn(("no",)), C.MaxChars(3))), tok)
    g = cc.start()
    g.advance(tok.encode("n")[0])
    g.advance(tok.encode("o")[0])
    assert tok.eos_token_id not in allowed(g)  # "no" is excluded
    assert tok.encode("t")[0] in allowed(g)  # "not" is fine


def test_not_in_drops_choice_options(tok):
    from lmlang.constraints.lower import lower

    plan = lower(C.All((C.Choice(("praise", "complaint", "other")), C.NotIn(("other",)))))
    assert plan.options == ("praise", "complaint")


# ----------------------------------------------------------------------------- check-time refusals
def check_error(tmp_path, body: str, params: str = "t: str") -> str:
    script = tmp_path / "s.lm"
    script.write_text(f'query q({params}) {{\n  user "{{t}}"\n  assistant "[x] [y]"\n{body}\n}}\n', encoding="utf-8")
    with pytest.raises(CheckError) as e:
        lmlang.compile_file(script)
    return str(e.value)


@pytest.mark.parametrize(
    "body,where,message",
    [
        ('  where x is int or y in ["a"]', "4:21", "`or` joins constraints of one hole: [y] and [x]"),
        ('  where x is int or x stops at "."', "4:21", "a stop string cannot be one side of `or`"),
        ("  where x is int or tokens(x) <= 3", "4:21", "a length bound cannot be one side of `or`"),
        ("  where x is int or x is json {a: int}", "4:21", "`is json` cannot be one side of `or`"),
        ('  where x in ["a", "b"] and x not in ["b", "a"]', "4:29", "`not in` excludes every option"),
        ('  where x is json {a: int} and x not in ["{}"]', "4:32", "`not in` cannot be combined with is json"),
        ("  where x in labels", "4:9", "labels is not a parameter of this query"),
        ("  where x in t", "4:9", "takes a list[str] parameter, but t is str"),
        ('  where x is int and x matches r"[0-9]+" or x in ["u"]', "4:22", "contradict"),
        ('  where x matches r"(a" or x in ["u"]', "4:9", "invalid regex"),
    ],
)
def test_refusals_are_positioned(tmp_path, body, where, message):
    text = check_error(tmp_path, body + '\n  where y stops at "."')
    assert f"s.lm:{where}: error" in text and message in text, text


def test_runtime_list_with_another_shape_is_refused(tmp_path):
    text = check_error(
        tmp_path, '  where x in labels and x matches r"[a-z]+"\n  where y stops at "."', "t: str, labels: list[str]"
    )
    assert "a run-time list on [x] cannot be combined with another shape" in text


# ----------------------------------------------------------------------------- through a program
def program(tmp_path, model_dir, body: str, flow: str):
    script = tmp_path / "s.lm"
    script.write_text(f'model m = "{model_dir}"\n{body}\nflow {{ {flow} }}\n', encoding="utf-8")
    return lmlang.compile_file(script)


PICK = (
    "query pick(text: str, labels: list[str]) using m decode sample(temperature: 3.0, seed: {seed}) {{\n"
    '  "Which label fits? {{text}} Label: [label]"\n'
    "  where label in labels\n"
    '  where label not in ["other"]\n'
    "}}"
)


@pytest.mark.parametrize("seed", range(4))
def test_runtime_list_decodes_one_of_its_options(tmp_path, tiny_model_dir, seed):
    prog = program(
        tmp_path,
        tiny_model_dir,
        PICK.format(seed=seed),
        'r = pick("The battery died.", ["praise", "complaint", "other", "question"]) emit label = r.label',
    )
    label = prog.run()["label"]
    assert label in ("praise", "complaint", "question")


def test_runtime_list_masks_follow_the_argument(tmp_path, tiny_model_dir):
    """Two calls with different lists: each value comes from its own list (masks compiled per call)."""
    prog = program(
        tmp_path,
        tiny_model_dir,
        PICK.format(seed=0),
        'a = pick("x", ["zzz"]) b = pick("x", ["qq", "other"]) emit a = a.label, b = b.label',
    )
    out = prog.run()
    assert out["a"] == "zzz" and out["b"] == "qq"


def test_runtime_list_left_empty_is_a_runtime_error(tmp_path, tiny_model_dir):
    prog = program(tmp_path, tiny_model_dir, PICK.format(seed=0), 'r = pick("x", ["other"]) emit label = r.label')
    with pytest.raises(LmlangRuntimeError) as e:
        prog.run()
    assert "hole [label]: no option of the run-time list is left" in str(e.value)


def test_or_decodes_through_a_program(tmp_path, tiny_model_dir):
    body = (
        "query q() using m decode sample(temperature: 3.0, seed: 3) {\n"
        '  "Answer: [answer]"\n'
        '  where answer is int(0..99) or answer in ["unknown"]\n'
        "}"
    )
    for seed in range(3):
        prog = program(tmp_path, tiny_model_dir, body.replace("seed: 3", f"seed: {seed}"), "r = q() emit a = r.answer")
        a = prog.run()["a"]
        assert a == "unknown" or (type(a) is int and 0 <= a <= 99), a  # the int branch's value is an int


def test_a_runtime_list_inside_or_resolves_per_call():
    from lmlang.constraints.lower import lower
    from lmlang.constraints.runtime_lists import resolve

    c = C.All((any_of([C.ChoiceParam("ls"), C.Choice(("none",))]), C.NotIn(("b",))))
    got = resolve({"x": c}, {"ls": ["a", "b"]})["x"]
    assert lower(got).options == ("a", "none")
    mixed = resolve({"x": any_of([C.ChoiceParam("ls"), C.IntType(0, 9)])}, {"ls": ["n/a"]})["x"]
    assert mixed == C.AnyOf((C.Choice(("n/a",)), C.IntType(0, 9))) and lower(mixed).kind == "regex"
    with pytest.raises(LmlangRuntimeError) as e:
        resolve({"x": C.ChoiceParam("ls")}, {"ls": "abc"})
    assert "needs a list of strings" in str(e.value)
