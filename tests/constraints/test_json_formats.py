"""JSON Schema `format` while decoding (lmlang/constraints/formats.py).

Every format lmlang enforces accepts valid strings and rejects invalid ones
token by token on the tiny byte-level BPE (tests/tiny.py); a format it cannot
enforce is refused at check time with the keyword's JSON path, unless the
constraint opts to treat it as an annotation (`formats="annotate"`). The
examples follow the RFCs and Python's validators (jsonschema's format checker);
where the two differ, lmlang enforces the narrower.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmlang.constraints.check import check_constraint
from lmlang.constraints.formats import lower_formats, lower_schema_text, subschemas
from lmlang.constraints.lower import lower
from lmlang.constraints.spec import All, Choice, JsonSchema

# format -> (valid strings, invalid strings)
EXAMPLES = {
    "date": (
        ["2024-02-29", "2000-02-29", "2023-12-31", "0001-01-01"],
        ["2023-02-29", "1900-02-29", "2024-13-01", "2024-04-31", "0000-01-01", "2024-1-01", "24-01-01"],
    ),
    "date-time": (
        ["2024-02-29T12:30:00Z", "2023-01-01t00:00:00.5+05:30", "1999-12-31T23:59:59-08:00"],
        [
            "2023-02-29T12:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01 12:00:00Z",
            "2024-01-01T12:00:60Z",
            "2024-01-01T12:00:00",
            "invalid_date",
        ],
    ),
    "time": (
        ["12:30:00Z", "23:59:59.999+01:00", "00:00:00z"],
        ["12:30", "24:00:00Z", "12:30:00", "12:30:60Z", "12:30:00+1:00"],
    ),
    "duration": (["P1Y2M3DT4H5M6S", "PT1H", "P2W", "P1D"], ["P", "1Y", "PT", "P1H"]),
    "email": (["ada@example.com", "a.b+c@x-y.org"], ["ada", "ada@", "@example.com", "a b@example.com"]),
    "idn-email": (
        ["ada@example.com", "δοκιμή@παράδειγμα.δοκιμή", "用户@例子.广告"],
        ["ada", "ada@@x", "@例子.广告", "a b@x.org"],
    ),
    "hostname": (
        ["example.com", "a-b.c", "localhost", "256.256.256.256", ".".join(["a" * 63] * 3)],
        ["-a.com", "a-.com", "a..b", "a_b.com", "x" * 64 + ".com", ".".join(["a" * 63] * 4), "example.com."],
    ),
    "idn-hostname": (
        ["münchen.de", "example.com", "bücher.example", ".".join(["é"] * 30)],
        ["ab--c.com", "xn--abc.com", "-a.de", "a..b", "München.de", "a_b.de", ".".join(["é"] * 32)],
    ),  # its A-label form ("xn--9ca." * 32) is over 253
    "ipv4": (["192.168.0.1", "0.0.0.0", "255.255.255.255"], ["256.1.1.1", "01.2.3.4", "1.2.3", "1.2.3.4.5"]),
    "ipv6": (["::1", "2001:db8::8a2e:370:7334", "fe80::"], ["2001:db8:::1", "1:2:3:4:5:6:7:8:9", "::g", "1.2.3.4"]),
    "uuid": (
        ["123e4567-e89b-12d3-a456-426614174000"],
        ["123e4567e89b12d3a456426614174000", "123e4567-e89b-12d3-a456-42661417400", "not-a-uuid"],
    ),
    "uri": (
        ["https://example.com/a?b=c#d", "urn:isbn:0451450523", "mailto:ada@example.com", "http://[::1]:80/"],
        ["example.com/a", "http://exa mple.com", "://x", "1http://x", "invalid-uri", " invalid_uri"],
    ),
    "uri-reference": (
        ["/a/b?c", "../x", "#frag", "", "https://example.com", "//host/p", "a:b"],
        ["http://exa mple.com", "a b", "\\\\x", "%zz", ":x", "://", "!not a uri-reference!", "Invalid URI Reference :"],
    ),
    "iri": (
        ["https://例子.测试/路径", "http://example.com", "urn:例:1"],
        ["例子/路径", "http://exa mple.com", "not-an-iri", "/relative"],
    ),
    "iri-reference": (["/路径?q=1", "#片段", "https://例子.测试", ""], ["http://a b", ":x", "%g0"]),
    "json-pointer": (["", "/a/b", "/a~0b/c~1d", "/", "/0"], ["a/b", "/a~2", "/~", "#/a"]),
    "relative-json-pointer": (["0", "1/a", "2#", "10/x", "0/a~1b"], ["-1", "01", "/a", "1#/a", "", "#"]),
    "uri-template": (
        ["http://example.com/{user}/repos{?page,per_page}", "{+path}/here", "{var:3}", "{list*}", "plain/text"],
        ["http://example.com/{", "http://example.com/resource/{", "{}", "{a:0}", "a}b", "{=a}", "{a b}"],
    ),
    "regex": (
        ["^[a-z]+$", "(foo|bar)?\\d{2,4}", "a{3}", "[\\w.-]+@x", "(?:a(?:b(?:c)))", "x*?y+?", "a|", ""],
        ["[", "(", "*a", "a**", "a{3,2}", "\\", "(?<=a+)b", "[z-a]", "a)", "Invalid regex pattern ["],
    ),
    "byte": (["aGVsbG8=", "", "YWJj", "YQ=="], ["aGVsbG8", "a===", "ab$c"]),
    "binary": (["anything at all", ""], []),
    "password": (["hunter2", ""], []),
}


@pytest.fixture(scope="module")
def hf_tok():
    from tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture()
def tok(hf_tok, lmlang_home):
    from lmlang.constraints.engine import TokenizerInfo, clear_memory_cache

    clear_memory_cache()
    hf_tok.__dict__.pop("_lmlang_tokenizer_info", None)
    return TokenizerInfo.from_hf(hf_tok)


def accepts(compiled, tok, text: str) -> bool:
    """The canonical tokenization of `text`, token by token: every token allowed, then EOS."""
    g = compiled.start()
    for t in tok.encode(text):
        if not g.allowed_mask()[t]:
            return False
        g.advance(t)
    return bool(g.allowed_mask()[tok.eos_token_id])


def compiled_for(schema, tok, formats: str = "enforce"):
    from lmlang.constraints.engine import compile_constraint

    return compile_constraint(JsonSchema(json.dumps(schema), formats), tok)


@pytest.mark.parametrize("fmt", sorted(EXAMPLES))
def test_enforced_format_accepts_valid_and_rejects_invalid(tok, fmt):
    valid, invalid = EXAMPLES[fmt]
    schema = {"type": "string", "format": fmt}
    assert check_constraint(JsonSchema(json.dumps(schema))) == []
    cc = compiled_for(schema, tok)
    for s in valid:
        assert accepts(cc, tok, json.dumps(s, ensure_ascii=False)), (fmt, s)
    for s in invalid:
        assert not accepts(cc, tok, json.dumps(s, ensure_ascii=False)), (fmt, s)


def test_examples_agree_with_python_where_it_checks_the_format():
    """The valid examples pass jsonschema's own checker and the invalid ones fail it,
    for the formats this installation's jsonschema can check (a guard on the table)."""
    import jsonschema

    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    checked = [f for f in EXAMPLES if f in checker.checkers and f not in ("email", "idn-email")]
    assert "regex" in checked  # needs no optional dependency
    for fmt in checked:
        valid, invalid = EXAMPLES[fmt]
        assert all(checker.conforms(s, fmt) for s in valid), fmt
        # jsonschema's checkers are looser than the RFCs in places: an invalid example it
        # accepts must be one lmlang rejects on purpose (the narrower of the two)
        for s in invalid:
            if checker.conforms(s, fmt):
                assert fmt in ("ipv4", "ipv6", "date", "hostname"), (fmt, s)


@pytest.mark.parametrize("fmt", ["date", "date-time", "time", "hostname", "uri-reference", "iri", "regex"])
def test_random_values_of_a_format_pass_python(fmt):
    """Random walks over the byte-level mask of a format only ever build strings
    Python's own checks accept (`re.compile` for regex; jsonschema's checker and
    the RFC 3339 rules written out here for the rest)."""
    import random
    import re

    import llguidance

    from lmlang.constraints.check import _byte_tokenizer
    from lmlang.constraints.lower import llguidance_json_options

    text = lower_schema_text(json.dumps({"type": "string", "format": fmt}))
    grammar = llguidance.LLMatcher.grammar_from_json_schema(text, overrides=llguidance_json_options())
    rng = random.Random(fmt)
    produced = 0
    for _ in range(200):
        m = llguidance.LLMatcher(_byte_tokenizer(), grammar, log_level=0)
        out = bytearray()
        while len(out) < 200:
            mask = m.compute_bitmask()
            ok = [b for b in range(257) if (mask[b // 8] >> (b % 8)) & 1]
            if 256 in ok and (len(ok) == 1 or rng.random() < 0.2):
                break
            b = rng.choice([b for b in ok if b != 256])
            assert m.consume_token(b)
            out.append(b)
        else:
            continue
        value = json.loads(out.decode("utf-8"))
        produced += 1
        assert _python_accepts(fmt, value, re), (fmt, value)
    assert produced >= 30


def _python_accepts(fmt: str, value: str, re) -> bool:
    import datetime

    if fmt == "regex":
        try:
            re.compile(value)
            return True
        except re.error:
            return False
    if fmt in ("date", "date-time", "time"):
        full = {"date": value + "T00:00:00Z", "time": "1970-01-01T" + value, "date-time": value}[fmt]
        m = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)[tT](\d\d):(\d\d):(\d\d)(\.\d+)?([zZ]|[+-]\d\d:\d\d)", full)
        if not m:
            return False
        try:
            datetime.datetime(*(int(m.group(i)) for i in range(1, 7)))
        except ValueError:
            return False
        return True
    if fmt == "hostname":
        return len(value) <= 253 and all(
            re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", label) for label in value.split(".")
        )
    if fmt in ("uri-reference", "iri"):
        # characters a URI or IRI may not contain anywhere (RFC 3986 2, RFC 3987 2.2)
        if re.search(r"[\x00-\x20\x7f\"<>\\^`{|}]", value) or re.search(r"%(?![0-9A-Fa-f]{2})", value):
            return False
        if fmt == "uri-reference" and re.search(r"[^\x00-\x7f]", value):
            return False
        return fmt != "iri" or re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", value) is not None
    raise AssertionError(fmt)


# ----------------------------------------------------------------------------- refusals and the opt-in
@pytest.mark.parametrize("fmt", ["url", "int64", "double", "jsonschema"])
def test_unenforceable_format_is_refused_with_its_path(fmt):
    schema = {"type": "object", "properties": {"url": {"type": "string", "format": fmt}}}
    problems = check_constraint(JsonSchema(json.dumps(schema)))
    assert [p.code for p in problems] == ["unsupported-format"]
    assert problems[0].message == f"#/properties/url/format: format '{fmt}' cannot be enforced while decoding"
    assert 'json(formats: "annotate")' in problems[0].hint


def test_refusal_names_the_path_behind_refs_and_escapes_it():
    schema = {
        "$defs": {"a/b": {"type": "string", "format": "url"}},
        "type": "object",
        "properties": {"x": {"$ref": "#/$defs/a~1b"}},
    }
    problems = check_constraint(JsonSchema(json.dumps(schema)))
    assert [p.message for p in problems] == ["#/$defs/a~1b/format: format 'url' cannot be enforced while decoding"]
    assert "did you mean 'uri'?" in problems[0].hint


def test_refusal_is_also_the_engine_error_when_no_check_ran(tok):
    from lmlang.constraints.engine import ConstraintCompileError

    schema = {"type": "object", "properties": {"when": {"type": "string", "format": "google-datetime"}}}
    with pytest.raises(ConstraintCompileError, match="#/properties/when/format: format 'google-datetime'"):
        compiled_for(schema, tok)


def test_annotate_opt_in_accepts_unenforceable_formats_unchecked(tok):
    schema = {
        "type": "object",
        "properties": {"url": {"type": "string", "format": "url"}, "n": {"type": "integer", "format": "int64"}},
        "required": ["url", "n"],
        "additionalProperties": False,
    }
    assert check_constraint(JsonSchema(json.dumps(schema), formats="annotate")) == []
    cc = compiled_for(schema, tok, formats="annotate")
    assert accepts(cc, tok, json.dumps({"url": "not a url at all", "n": 2**70}))
    assert not accepts(cc, tok, json.dumps({"url": 3, "n": 1}))  # the rest of the schema still holds


def test_annotate_still_enforces_the_formats_lmlang_can(tok):
    schema = {"type": "string", "format": "uri-reference"}
    cc = compiled_for(schema, tok, formats="annotate")
    assert accepts(cc, tok, json.dumps("/a/b")) and not accepts(cc, tok, json.dumps("a b"))


def test_bad_formats_option_is_a_check_error():
    problems = check_constraint(JsonSchema('{"type": "string"}', formats="anotate"))
    assert problems and "did you mean 'annotate'?" in problems[0].hint


def test_enforce_and_annotate_lower_to_different_plans():
    schema = json.dumps({"type": "string", "format": "url"})
    enforce, annotate = lower(JsonSchema(schema)), lower(JsonSchema(schema, "annotate"))
    assert enforce.key() != annotate.key()
    assert '"format": "url"' in enforce.text and "format" not in annotate.text


# ----------------------------------------------------------------------------- where a format is (and is not)
def test_format_in_data_keywords_and_property_names_is_not_rewritten():
    """`const`, `enum`, `default` and `examples` hold data, not schemas, and a property
    may be called "format": none of those is a format keyword."""
    schema = {
        "type": "object",
        "properties": {"format": {"type": "string", "const": "iri"}},
        "default": {"format": "url"},
        "examples": [{"format": "iri"}],
        "enum": [{"format": "iri"}, {"format": "url"}],
    }
    lowered, refused = lower_formats(schema)
    assert lowered == schema and refused == []


def test_every_schema_position_is_walked():
    schema = {
        "type": "object",
        "properties": {"p": {"format": "iri"}},
        "patternProperties": {"^x": {"format": "iri"}},
        "additionalProperties": {"format": "iri"},
        "dependencies": {"p": {"properties": {"q": {"format": "iri"}}}},
        "items": [{"format": "iri"}],
        "prefixItems": [{"format": "iri"}],
        "anyOf": [{"format": "iri"}],
        "not": {"format": "iri"},
        "if": {"format": "iri"},
        "then": {"format": "iri"},
        "else": {"format": "iri"},
        "x-extension": {"format": "url"},  # not a schema position; a $ref makes it one
        "allOf": [{"$ref": "#/x-extension"}],
    }
    lowered, refused = lower_formats(schema)
    assert refused == [("#/x-extension/format", "url")]
    assert '"format": "iri"' not in json.dumps(lowered)
    assert sum(1 for _ in subschemas(schema)) == 15


def test_lowering_keeps_the_order_of_properties(tok):
    """llguidance writes properties in the schema's order: rewriting a format must not
    reorder them (a sorted copy rejected {"url": ..., "n": ...})."""
    schema = {
        "type": "object",
        "properties": {"url": {"type": "string", "format": "iri"}, "n": {"type": "integer"}},
        "required": ["url", "n"],
        "additionalProperties": False,
    }
    assert list(json.loads(lower_schema_text(json.dumps(schema)))["properties"]) == ["url", "n"]
    assert accepts(compiled_for(schema, tok), tok, json.dumps({"url": "http://a.b", "n": 1}))


def test_format_and_pattern_both_hold(tok):
    schema = {"type": "string", "format": "date", "pattern": "^2024-"}
    cc = compiled_for(schema, tok)
    assert accepts(cc, tok, '"2024-02-29"')
    assert not accepts(cc, tok, '"2020-02-29"')  # a date, but not the pattern
    assert not accepts(cc, tok, '"2024-02-30"')  # the pattern, but not a date


def test_string_format_constrains_strings_only(tok):
    cc = compiled_for({"format": "date"}, tok)
    assert accepts(cc, tok, "42") and accepts(cc, tok, '"2024-01-31"') and not accepts(cc, tok, '"soon"')


@pytest.mark.parametrize(
    "schema, good, bad",
    [
        ({"type": "integer", "format": "int32"}, [2**31 - 1, -(2**31), 0], [2**31, -(2**31) - 1]),
        ({"type": "integer", "format": "uint8", "minimum": 10}, [10, 255], [9, 256, -1]),
        ({"format": "uint8"}, [255, "text", None], [256, 1.5]),
        ({"type": "number", "format": "int16"}, [-32768, 32767], [32768, 0.5]),
    ],
)
def test_integer_formats_bound_numbers(tok, schema, good, bad):
    cc = compiled_for(schema, tok)
    for v in good:
        assert accepts(cc, tok, json.dumps(v)), v
    for v in bad:
        assert not accepts(cc, tok, json.dumps(v)), v


def test_choice_options_are_checked_against_formats():
    """`x in [...] and x is json {...}` keeps only options that satisfy the format too
    (jsonschema.validate alone ignores formats)."""
    schema = JsonSchema(json.dumps({"type": "string", "format": "date"}))
    plan = lower(All((Choice(('"2024-02-29"', '"2023-02-29"', '"tomorrow"')), schema)))
    assert plan.options == ('"2024-02-29"',)


def test_checked_value_never_breaks_its_format(tok):
    """Greedy decoding over the tiny vocabulary from the mask alone ends in a valid date."""
    import re

    cc = compiled_for({"type": "string", "format": "date-time"}, tok)
    g = cc.start()
    for _ in range(80):
        if g.is_finished():
            break
        ids = np.flatnonzero(g.allowed_mask())
        g.advance(int(ids[-1]) if ids[-1] != tok.eos_token_id or len(ids) == 1 else int(ids[-2]))
    value = json.loads(g.value())
    assert re.fullmatch(r"\d{4}-\d\d-\d\d[tT]\d\d:\d\d:\d\d(\.\d+)?([zZ]|[+-]\d\d:\d\d)", value), value


def test_xgrammar_fallback_refuses_a_pattern_with_length_bounds(tok):
    """xgrammar 0.2 drops minLength/maxLength beside a pattern (it accepted "aaaaaa" for
    ^a+$ with maxLength 3), so the chain must not fall back to it for such a schema."""
    from lmlang.constraints.backends import BackendCannot, get_backend

    plan = lower(JsonSchema(json.dumps({"type": "string", "pattern": "^a+$", "maxLength": 3})))
    with pytest.raises(BackendCannot, match="pattern with minLength/maxLength"):
        get_backend("xgrammar").compile(plan, tok)
    cc = compiled_for({"type": "string", "pattern": "^a+$", "maxLength": 3}, tok)  # llguidance enforces both
    assert accepts(cc, tok, '"aaa"') and not accepts(cc, tok, '"aaaa"')


def test_check_does_not_count_on_xgrammar_for_what_it_drops():
    from lmlang.constraints.jsonfix import xgrammar_ignored

    assert xgrammar_ignored({"properties": {"a": {"pattern": "x", "minLength": 2}}}) == {
        "pattern with minLength/maxLength"
    }
    assert xgrammar_ignored({"properties": {"a": {"pattern": "x"}, "b": {"maxLength": 2}}}) == set()
