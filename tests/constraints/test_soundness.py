"""A value never breaks its constraint and never crashes the run (issue 12),
on the tiny random model: each reproducer either checks as an error at the
hole, decodes a value that satisfies every part, or fails with a runtime
error at the query naming the hole. Never a traceback, never a cut value."""

from __future__ import annotations

import json
import os
import re

import pytest

import lmlang
from lmlang.errors import CheckError, LmlangRuntimeError

INT64 = (-(2**63), 2**63 - 1)


def compile_in(tmp_path, model_dir, body: str, files: dict | None = None, flow: str = "r = q() emit x = r.x"):
    """The script `{tmp_path}/s.lm` (query `q` on line 2), with the files it names."""
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    script = tmp_path / "s.lm"
    script.write_text(f'model m = "{model_dir}"\n{body}\nflow {{ {flow} }}\n', encoding="utf-8")
    return lmlang.compile_file(script)


def runtime_error(prog, tmp_path) -> LmlangRuntimeError:
    with pytest.raises(LmlangRuntimeError) as e:
        prog.run()
    err = e.value
    # Positioned at the query (line 2 of s.lm), naming the query and the hole.
    assert err.span.filename == str(tmp_path / "s.lm") and err.span.line == 2, err.span
    assert err.message.startswith("query q, hole [x]: "), err.message
    assert "Traceback" not in str(err)
    return err


ARITH = 'start: expr\nexpr: term (OP term)*\nterm: NUMBER | "(" expr ")"\nOP: " + " | " - " | " * "\nNUMBER: /[0-9]+/\n'
ARITH_RE = re.compile(r"(?:[0-9]+|\(.*\))(?: [-+*] (?:[0-9]+|\(.*\)))*")


@pytest.mark.parametrize("seed", range(4))
def test_grammar_and_len_decodes_a_valid_value(tmp_path, tiny_model_dir, seed):
    """`is grammar ... and len(x) <= 20` crashed with "advance() on a finished
    guide": a forced run crossed the character budget mid-block."""
    import lark

    prog = compile_in(
        tmp_path,
        tiny_model_dir,
        f'query q() using m decode sample(temperature: 2.0, seed: {seed}) '
        '{ "G: [x]" where x is grammar "g.lark" and len(x) <= 20 }',
        {"g.lark": ARITH},
    )
    x = prog.run()["x"]
    assert len(x) <= 20 and ARITH_RE.fullmatch(x)
    lark.Lark(ARITH).parse(x)


@pytest.mark.parametrize("shape", [r'x matches r"[a-z]{30}"', "x is json { name: str, age: int, city: str }"])
def test_token_budget_below_the_shortest_value_is_a_positioned_error(tmp_path, tiny_model_dir, shape):
    prog = compile_in(tmp_path, tiny_model_dir, f'query q() using m {{ "V: [x]" where {shape} and tokens(x) <= 3 }}')
    err = runtime_error(prog, tmp_path)
    assert re.search(r"shortest value found needs \d+ tokens, over the budget of 3", err.message)
    assert err.code == "no-value-fits" and "tokens(x) <= 3" in err.hint


def test_choice_longer_than_its_budget_is_a_positioned_error(tmp_path, tiny_model_dir):
    prog = compile_in(
        tmp_path,
        tiny_model_dir,
        'query q() using m { "V: [x]" where x in ["abcdefghijklmnopqrstuvwxyz"] and tokens(x) <= 2 }',
    )
    err = runtime_error(prog, tmp_path)
    assert "no option fits in 2 tokens" in err.message


def test_grammar_with_no_finite_text_is_a_check_error(tmp_path, tiny_model_dir):
    with pytest.raises(CheckError) as e:
        compile_in(
            tmp_path,
            tiny_model_dir,
            'query q() using m { "G: [x]" where x is grammar "g.lark" }',
            {"g.lark": 'start: "a" start\n'},
        )
    d = e.value.diagnostics[0]
    assert "the grammar derives no finite text" in d.message and d.span.line == 2 and d.code == "unsatisfiable"


def test_required_recursive_schema_is_a_check_error(tmp_path, tiny_model_dir):
    schema = {
        "type": "object",
        "properties": {"child": {"$ref": "#"}, "name": {"type": "string"}},
        "required": ["child"],
    }
    with pytest.raises(CheckError) as e:
        compile_in(
            tmp_path,
            tiny_model_dir,
            'query q() using m { "J: [x]" where x is json "r.json" }',
            {"r.json": json.dumps(schema)},
        )
    d = e.value.diagnostics[0]
    assert "allows no finite value" in d.message and d.span.line == 2


def test_optional_recursion_decodes(tmp_path, tiny_model_dir):
    import jsonschema

    schema = {
        "type": "object",
        "properties": {"child": {"$ref": "#"}, "name": {"type": "string"}},
        "required": ["name"],
    }
    prog = compile_in(
        tmp_path,
        tiny_model_dir,
        'query q() using m { "J: [x]" where x is json "r.json" }',
        {"r.json": json.dumps(schema)},
    )
    jsonschema.validate(prog.run()["x"], schema)


def test_huge_repetition_is_a_positioned_error(tmp_path, tiny_model_dir):
    """`x{1000000}`: the constraint engine gives up (its lexer), or no value
    fits the default budget; either way the hole fails by name."""
    prog = compile_in(tmp_path, tiny_model_dir, 'query q() using m { "R: [x]" where x matches r"x{1000000}" }')
    err = runtime_error(prog, tmp_path)
    assert "the constraint engine gave up" in err.message or "256" in err.message


@pytest.mark.parametrize("n", [1999, 2000, 5000])
def test_long_choice_lists_decode(tmp_path, tiny_model_dir, n):
    """2,000 options or more crashed (llguidance allows 2,000 items in a parser row)."""
    options = [f"opt{i}" for i in range(n)]
    prog = compile_in(tmp_path, tiny_model_dir, f'query q() using m {{ "pick: [x]" where x in {json.dumps(options)} }}')
    assert prog.run()["x"] in options


def test_unbounded_int_is_an_int64(tmp_path, tiny_model_dir):
    """The tiny model writes 2s for ever: before, 255 of them."""
    prog = compile_in(tmp_path, tiny_model_dir, 'query q() using m { "N: [x]" where x is int }')
    x = prog.run()["x"]
    assert isinstance(x, int) and INT64[0] <= x <= INT64[1] and len(str(abs(x))) <= 19


def test_unbounded_float_is_finite_and_short(tmp_path, tiny_model_dir):
    prog = compile_in(tmp_path, tiny_model_dir, 'query q() using m { "F: [x]" where x is float }')
    x = prog.run()["x"]
    assert isinstance(x, float) and abs(x) < 1e116
    text = prog.trace.records[-1].values["x"]
    assert re.fullmatch(r"-?(?:0|[1-9][0-9]{0,15})(?:\.[0-9]{1,16})?(?:[eE][+-]?[0-9]{1,2})?", text), text


def test_inline_json_numbers_are_bounded(tmp_path, tiny_model_dir):
    prog = compile_in(
        tmp_path, tiny_model_dir, 'query q() using m { "J: [x]" where x is json { n: int, f: float, k: int(0..) } }'
    )
    x = prog.run()["x"]
    assert abs(x["n"]) <= 2**53 - 1 and abs(x["f"]) <= 1e16 and 0 <= x["k"] <= 2**53 - 1


def test_inline_int_range_beyond_the_default_is_a_check_error(tmp_path, tiny_model_dir):
    with pytest.raises(CheckError, match="empty range"):
        compile_in(
            tmp_path,
            tiny_model_dir,
            'query q() using m { "J: [x]" where x is json { n: int(100000000000000000000..) } }',
        )


def test_empty_int_range_counts_int64_open_ends(tmp_path, tiny_model_dir):
    with pytest.raises(CheckError, match="empty integer range"):
        compile_in(tmp_path, tiny_model_dir, 'query q() using m { "N: [x]" where x is int(10000000000000000000..) }')


# ----------------------------------------------------------------------------- pydantic: closed objects
def test_pydantic_models_are_generated_closed(tiny_model_dir):
    from pydantic import BaseModel, ConfigDict

    class Person(BaseModel):
        name: str
        age: int

    class Loose(BaseModel):
        model_config = ConfigDict(extra="allow")
        name: str

    assert "additionalProperties" not in Person.model_json_schema()  # pydantic leaves objects open
    prog = lmlang.compile(
        f'model m = "{tiny_model_dir}"\n'
        'query q() using m { "P: [p] L: [l]" where p is json "Person" and tokens(p) <= 40 '
        'where l is json "Loose" and tokens(l) <= 40 }\n'
        'flow { r = q() emit p = r.p, l = r.l }',
        schemas={"Person": Person, "Loose": Loose},
    )
    out = prog.run()
    assert set(out["p"]) == {"name", "age"}
    Person.model_validate(out["p"])
    Loose.model_validate(out["l"])
    from lmlang.constraints.lower import lower
    from lmlang.constraints.spec import JsonSchema

    closed = json.loads(lower(JsonSchema(json.dumps(Person.model_json_schema()))).text)
    loose = json.loads(lower(JsonSchema(json.dumps(Loose.model_json_schema()))).text)
    assert closed["additionalProperties"] is False and loose["additionalProperties"] is True


# ----------------------------------------------------------------------------- UTF-8 boundaries
def _hole(tok, c):
    from lmlang.constraints.hole import HolePlan

    return HolePlan("x", c, tok, [tok.eos_token_id]).start()


def _drive(hole, prefer: list[int], steps: int = 100):
    """Decode with logits that always prefer the next byte of `prefer` (cyclically)."""
    import torch

    from lmlang.constraints.hole import ENDED, SAMPLE

    V = hole.plan.tok.vocab_size
    for i in range(steps):
        logits = torch.zeros(V)
        logits[prefer[i % len(prefer)]] = 10.0
        kind = hole.next(logits)
        if kind == ENDED:
            return
        if kind == SAMPLE:
            t = int(torch.argmax(hole.masked))
            while not hole.fits(t):
                hole.masked[t] = float("-inf")
                t = int(torch.argmax(hole.masked))
            if hole.take(t):
                return


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


@pytest.mark.parametrize("budget", range(1, 10))
def test_free_text_budget_ends_on_a_character_boundary(tok, budget):
    """A model that writes 🌟 byte by byte: the budget never cuts one in half ("🌟🌟�")."""
    from lmlang.constraints import spec as C

    star = [tok.single_byte_tokens()[b] for b in "🌟".encode()]
    hole = _hole(tok, C.MaxTokens(budget))
    _drive(hole, star)
    raw = b"".join(tok.token_bytes[t] for t in hole.gen)
    raw.decode("utf-8")  # complete characters only
    assert len(hole.gen) <= budget and "\ufffd" not in hole.value()
    assert hole.value().count("🌟") == budget // 4


@pytest.mark.parametrize("budget", range(3, 12))
def test_json_string_budget_closes_the_string_on_a_character_boundary(tok, budget):
    from lmlang.constraints import spec as C

    star = [tok.single_byte_tokens()[b] for b in "🌟".encode()]
    quote = tok.single_byte_tokens()[ord('"')]
    hole = _hole(tok, C.All((C.JsonSchema('{"type": "string"}'), C.MaxTokens(budget))))
    _drive(hole, [quote] + star * 10)
    value = json.loads(hole.value())
    assert isinstance(value, str) and "\ufffd" not in value and len(hole.gen) <= budget


# ----------------------------------------------------------------------------- property: any conjunction
# Random conjunctions over the alphabet {a, b}: each either refuses at check
# time, fails before decoding by name (no value fits the token budget), or
# decodes (whatever the logits) a value that satisfies every part.
_PIECES = ["a", "b", "[ab]", "a*", "b+", "(ab|ba)", "a?", "[ab]{2,3}", "(a|bb)*"]


_GRAMMARS = [
    'start: "a" start | "b"\n',
    'start: ("a" | "b")+\n',
    'start: "a"* "b" "a"*\n',
    'start: x x\nx: "ab" | "b" x\n',
]
_SCHEMAS = [
    {"type": "string", "pattern": "^[ab]+$", "maxLength": 4},
    {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 3},
    {
        "type": "object",
        "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}, "b": {"type": "boolean"}},
        "required": ["a"],
    },
    {"type": "object", "properties": {"ab": {"type": "string", "maxLength": 3}}, "required": ["ab"]},
    {"enum": ["a", "ab", 1, None]},
]


def _strategies():
    from hypothesis import strategies as st

    from lmlang.constraints import spec as C

    word = st.text("ab", min_size=1, max_size=5)
    regex = st.lists(st.sampled_from(_PIECES), min_size=1, max_size=3).map("".join)
    shape = st.one_of(
        st.none(),
        regex.map(C.Regex),
        st.lists(word, min_size=1, max_size=5, unique=True).map(lambda o: C.Choice(tuple(o))),
        st.tuples(st.integers(-20, 20), st.integers(-20, 200)).map(lambda r: C.IntType(*r)),
        st.just(C.BoolType()),
        st.sampled_from(_GRAMMARS).map(C.Grammar),
        st.sampled_from(_SCHEMAS).map(lambda d: C.JsonSchema(json.dumps(d, sort_keys=True))),
    )
    extra = st.one_of(st.none(), regex.map(C.Regex))  # a second regex (with a choice or alone)
    # second wave (issue #15): `or` over regex-like shapes, `not in`
    from lmlang.constraints.shapes import any_of

    alternative = st.one_of(
        regex.map(C.Regex),
        st.lists(word, min_size=1, max_size=3, unique=True).map(lambda o: C.Choice(tuple(o))),
        st.tuples(st.integers(-20, 20), st.integers(-20, 200)).map(lambda r: C.IntType(*r)),
        st.just(C.BoolType()),
    )
    shape = st.one_of(shape, st.lists(alternative, min_size=2, max_size=3).map(any_of))
    not_in = st.one_of(st.none(), st.lists(word, min_size=1, max_size=3, unique=True).map(lambda o: C.NotIn(tuple(o))))
    return st.tuples(
        shape,
        extra,
        st.one_of(st.none(), st.integers(0, 8).map(C.MaxChars)),
        st.one_of(st.none(), st.integers(1, 8).map(C.MaxTokens)),
        st.one_of(st.none(), st.tuples(st.sampled_from(["a", "b", "ab"]), st.booleans()).map(lambda s: C.Stop(*s))),
        not_in,
    ), st.integers(0, 2**31)


def _satisfies(part, value: str, gen: list[int]) -> bool:
    from lmlang.constraints import spec as C

    if isinstance(part, C.Regex):
        return re.fullmatch(part.pattern, value) is not None
    if isinstance(part, C.Choice):
        return value in part.options
    if isinstance(part, C.IntType):
        return re.fullmatch(r"-?(0|[1-9][0-9]*)", value) is not None and part.lo <= int(value) <= part.hi
    if isinstance(part, C.BoolType):
        return value in ("true", "false")
    if isinstance(part, C.Grammar):
        import lark

        try:
            lark.Lark(part.lark).parse(value)
        except lark.exceptions.LarkError:
            return False
        return True
    if isinstance(part, C.JsonSchema):
        import jsonschema

        try:
            jsonschema.validate(json.loads(value), json.loads(part.schema))
        except (ValueError, jsonschema.ValidationError):
            return False
        return True
    if isinstance(part, C.MaxChars):
        return len(value) <= part.n
    if isinstance(part, C.MaxTokens):
        return len(gen) <= part.n
    if isinstance(part, C.Stop):
        at = value.find(part.text)
        return at < 0 if not part.include else at in (-1, len(value) - len(part.text))
    if isinstance(part, C.AnyOf):
        return any(_satisfies(a, value, gen) for a in part.alternatives)
    if isinstance(part, C.NotIn):
        return value not in part.options
    raise AssertionError(part)


def test_random_conjunctions_refuse_or_decode_a_valid_value(tok):
    import torch
    from hypothesis import HealthCheck, given, settings

    from lmlang.constraints import spec as C
    from lmlang.constraints.check import check_constraint
    from lmlang.constraints.hole import ENDED, SAMPLE, HolePlan

    @settings(
        max_examples=int(os.environ.get("LMLANG_PROPERTY_CASES", "150")),
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(*_strategies())
    def prop(parts, seed):
        parts = tuple(p for p in parts if p is not None)
        c = C.All(parts) if parts else None
        if any(p.severity == "error" for p in check_constraint(c)):
            return  # refused at check time
        try:
            hole = HolePlan("x", c, tok, [tok.eos_token_id]).start()
        except LmlangRuntimeError as e:
            assert e.code == "no-value-fits" and e.message.startswith("hole [x]: "), e.message
            return
        gen = torch.Generator().manual_seed(seed)
        for _ in range(300):
            kind = hole.next(torch.randn(tok.vocab_size, generator=gen) * 4)
            if kind == ENDED:
                break
            if kind == SAMPLE:
                t = int(torch.multinomial(torch.softmax(hole.masked, -1), 1, generator=gen))
                while not hole.fits(t):
                    hole.masked[t] = float("-inf")
                    t = int(torch.argmax(hole.masked))
                if hole.take(t):
                    break
        else:
            raise AssertionError("the hole never ended")
        b"".join(tok.token_bytes[t] for t in hole.gen).decode("utf-8")  # whole characters only
        value = hole.value()
        bad = [p for p in parts if not _satisfies(p, value, hole.gen)]
        assert not bad, (value, bad)

    prop()


# ----------------------------------------------------------------------------- stops on shapes, the walk, UTF-8 validity
def test_a_stop_on_a_regex_is_part_of_its_language(tok):
    """`matches r"(ab|ba)" and stops before "a"` allows no value (it crashed
    at run time with "no token satisfies the constraint here"); a stop that
    fits the regex is kept to its end."""
    import torch

    from lmlang.constraints import spec as C
    from lmlang.constraints.check import check_constraint

    problems = check_constraint(C.All((C.Regex("(ab|ba)"), C.Stop("a", False), C.MaxChars(2))))
    assert [p.code for p in problems] == ["unsatisfiable"] and "stops before 'a'" in problems[0].message
    assert check_constraint(C.All((C.Regex("[ab]+"), C.Stop("ba", True)))) == []
    for seed in range(5):
        hole = _hole(tok, C.All((C.Regex("[ab]+"), C.Stop("ba", True), C.MaxTokens(8))))
        g = torch.Generator().manual_seed(seed)
        _drive_random(hole, g)
        v = hole.value()
        assert re.fullmatch("[ab]+", v) and v.find("ba") in (-1, len(v) - 2), v


@pytest.mark.parametrize("shape", ["x is json { a: int }", 'x is grammar "g.lark"'])
def test_a_stop_on_json_or_a_grammar_is_a_check_error(tmp_path, tiny_model_dir, shape):
    with pytest.raises(CheckError) as e:
        compile_in(
            tmp_path,
            tiny_model_dir,
            f'query q() using m {{ "V: [x]" where {shape} and x stops at "," }}',
            {"g.lark": 'start: "a"+\n'},
        )
    d = e.value.diagnostics[0]
    assert "a stop string cannot end a" in d.message and d.span.line == 2 and d.code == "conflict"


@pytest.mark.parametrize("pattern", ["a*b", "(0|1)*2"])
def test_the_witness_walk_leaves_a_loop(tmp_path, tiny_model_dir, pattern):
    """The greedy walk took `a` for ever, so `a*b` had no value within any budget."""
    prog = compile_in(
        tmp_path, tiny_model_dir, f'query q() using m {{ "V: [x]" where x matches r"{pattern}" and tokens(x) <= 12 }}'
    )
    assert re.fullmatch(pattern, prog.run()["x"])


@pytest.mark.parametrize("limit", range(0, 4))
def test_free_text_length_bound_ends_on_a_character_boundary(tok, limit):
    """len(x) <= n counts a character at its first byte: the text then
    finishes that character instead of stopping inside it."""
    from lmlang.constraints import spec as C

    star = [tok.single_byte_tokens()[b] for b in "🌟".encode()]
    hole = _hole(tok, C.MaxChars(limit))
    _drive(hole, star)
    raw = b"".join(tok.token_bytes[t] for t in hole.gen)
    assert raw.decode("utf-8") == "🌟" * limit


def test_free_text_never_writes_invalid_utf8(tok):
    """Stray continuation bytes, and lead bytes no character has (0xF5-0xFF, 0xC0, 0xC1), are never taken."""
    import torch

    from lmlang.constraints import spec as C

    singles = tok.single_byte_tokens()
    for bad in (0x80, 0xBF, 0xC0, 0xF7, 0xFF):
        if bad not in singles:
            continue
        hole = _hole(tok, C.MaxTokens(6))
        _drive(hole, [singles[bad]])
        b"".join(tok.token_bytes[t] for t in hole.gen).decode("utf-8")
    hole = _hole(tok, C.MaxTokens(20))
    _drive_random(hole, torch.Generator().manual_seed(0))
    b"".join(tok.token_bytes[t] for t in hole.gen).decode("utf-8")


def _drive_random(hole, gen, steps: int = 100):
    import torch

    from lmlang.constraints.hole import ENDED, SAMPLE

    for _ in range(steps):
        kind = hole.next(torch.randn(hole.plan.tok.vocab_size, generator=gen) * 4)
        if kind == ENDED:
            return
        if kind == SAMPLE:
            t = int(torch.multinomial(torch.softmax(hole.masked, -1), 1, generator=gen))
            while not hole.fits(t):
                hole.masked[t] = float("-inf")
                t = int(torch.argmax(hole.masked))
            if hole.take(t):
                return
