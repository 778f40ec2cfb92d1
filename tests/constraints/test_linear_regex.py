"""Regexes meet rows and options in linear time (constraints/linear_regex.py):
catastrophic patterns that backtracked for minutes in `re` answer at once,
with `re`'s answers on ordinary patterns; rule patterns the engine cannot
run are check errors."""

import re

import pytest

from lmlang.constraints import linear_regex as L
from lmlang.errors import LmlangError
from lmlang.frontend import build

CASES = [
    (r"[0-9]+ *[-+*/] *[0-9]+", ["what is 2 + 3?", "no numbers", "12*4", ""]),
    (r"^hello", ["hello there", "oh hello", "hello"]),
    (r"bye$", ["goodbye", "bye now", "bye"]),
    (r"(?i)refund", ["I want a REFUND", "fun"]),
    (r"\d{3}-\d{2}", ["call 555-12 now", "55-12"]),
    (r"é+|ü", ["café", "über", "cafe"]),
    (r"a\$", ["cost a$", "a"]),
    (r".*[0-9]+ *[-+*/] *[0-9]+.*", ["2+2", "x"]),
]


@pytest.mark.parametrize("pattern, texts", CASES)
def test_search_agrees_with_re(pattern, texts):
    for t in texts:
        assert L.search(pattern, t) == (re.search(pattern, t) is not None), (pattern, t)


@pytest.mark.parametrize(
    "pattern, texts", [(r"[A-Z]{3}-[0-9]{2}", ["ABC-12", "ABC-123", "abc-12"]), (r"(yes|no)", ["yes", "no", "yesno"])]
)
def test_fullmatch_agrees_with_re(pattern, texts):
    for t in texts:
        assert L.fullmatch(pattern, t) == (re.fullmatch(pattern, t) is not None)


def test_catastrophic_patterns_answer_in_one_pass():
    # `re` needs about 2**n steps on these; the test would not finish with it
    assert L.search(r"(a+)+b", "a" * 30) is False
    assert L.search(r"(a+)+b", "a" * 30 + "b") is True
    assert L.fullmatch(r"(x+x+)+y", "x" * 5000) is False
    assert L.search(r"(a|aa)+c", "a" * 10_000) is False


@pytest.mark.parametrize("pattern", [r"(?=a)a", r"(a)\1", r"\bword\b"])
def test_unsupported_patterns_say_why(pattern):
    assert L.unsupported(pattern)
    with pytest.raises(ValueError):
        L.search(pattern, "a")


def rules(pattern: str) -> str:
    return (
        f'model base = default\nmodel other = default\nrouter r = route rules {{\n'
        f'  other: matches r"{pattern}"\n  default: base\n}}\n'
    )


def test_rule_pattern_the_engine_cannot_run_is_a_check_error():
    with pytest.raises(LmlangError) as info:
        build(rules(r"\brefund\b"), "t.lm")
    d = info.value.diagnostics[0]
    assert "linear-time" in d.message and d.span.line == 4 and "contains" in d.hint


def test_catastrophic_rule_pattern_checks_and_routes_fast():
    build(rules(r"(a+)+b"), "t.lm")
    from lmlang.graph import RouterSpec
    from lmlang.graph import ir as I
    from lmlang.runtime.routing import Router

    spec = RouterSpec("r", "rules", (("other", I.Matches(r"(a+)+b")),), "base", None, ())
    router = Router(spec, {}, None, None)
    assert router.route(["a" * 30, "a" * 30 + "b"]) == ["base", "other"]


def test_catastrophic_regex_against_options_checks_fast():
    src = (
        'model base = default\nquery f() using base {\n  user "hi"\n  assistant "[x]"\n'
        '  where x in ["' + "a" * 40 + '", "b"] and x matches r"(a+)+b"\n}\n'
    )
    with pytest.raises(LmlangError) as info:
        build(src, "t.lm")
    assert info.value.diagnostics[0].span.line == 5
