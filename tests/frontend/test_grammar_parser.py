"""The generated parser (lmlang/grammar_parser.py) against its one source,
grammar/lmlang.lark: it is current (regenerating it gives the committed
bytes), and it parses exactly as lark's parser built from the grammar does
(the fallback parser.py uses while the module is stale), trees and syntax
errors alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmlang import grammar_parser, parser
from lmlang.errors import LmlangSyntaxError
from lmlang.grammar_file import grammar_sha256, grammar_text

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((REPO / "examples").rglob("*.lm")) + sorted((REPO / "tests" / "fixtures").glob("*.lm"))
BAD = [
    "input x: str\nquery q() { \"a\" \n",  # unclosed brace
    'input x: str = "never closed\n',  # unclosed string
    "model m = defualt\nqeury q() using m { \"x\" }\n",  # a misspelt keyword
    "input x: str\n@\n",  # an unexpected character
    "input : str\n",  # a missing name
    "flow { emit }\n",
]


def test_generated_parser_is_current():
    from lmlang.grammar_gen import TARGET, generate

    assert grammar_parser.GRAMMAR_SHA256 == grammar_sha256(grammar_text()), (
        "grammar/lmlang.lark changed: run `python -m lmlang.grammar_gen` and commit lmlang/grammar_parser.py"
    )
    assert generate() == TARGET.read_text(encoding="utf-8"), (
        "lmlang/grammar_parser.py differs from what `python -m lmlang.grammar_gen` writes (another lark, or an "
        "edit by hand): regenerate it"
    )


def test_generated_module_imports_no_pickle_regex_or_logging():
    text = Path(grammar_parser.__file__).read_text(encoding="utf-8")
    assert "import regex" not in text and "import pickle" not in text and "import logging" not in text
    assert grammar_parser.logger.warning("dropped") is None  # the stub logger takes lark's calls


@pytest.fixture
def lark_backend(monkeypatch):
    """parser.parse on lark's parser, as when the generated module is stale."""
    monkeypatch.setattr(grammar_parser, "GRAMMAR_SHA256", "stale")
    parser._backend.cache_clear()
    yield
    parser._backend.cache_clear()


def _outcome(text: str, name: str):
    try:
        return parser.parse(text, name)
    except LmlangSyntaxError as e:
        return ("error", e.message, e.hint, e.span)


def test_both_parsers_agree(lark_backend):
    cases = [(p.read_text(encoding="utf-8"), p.name) for p in SCRIPTS] + [(t, f"bad{i}.lm") for i, t in enumerate(BAD)]
    assert len(SCRIPTS) > 20
    from_lark = [_outcome(t, n) for t, n in cases]
    assert type(parser._backend().parser).__module__.startswith("lark")
    parser._backend.cache_clear()
    grammar_parser.GRAMMAR_SHA256 = grammar_sha256(grammar_text())  # monkeypatch restores the real value
    generated = [_outcome(t, n) for t, n in cases]
    assert parser._backend().parser.__class__.__module__ == "lmlang.grammar_parser"
    assert generated == from_lark
    errors = [o for o in generated if isinstance(o, tuple)]
    assert len(errors) >= len(BAD)  # the bad inputs really fail


def test_lexer_regexes_come_back_from_disk_as_the_same_patterns(lmlang_home):
    from lmlang.grammar_lexer import CachedRe, cache_path

    parser._backend.cache_clear()
    try:
        for p in SCRIPTS[:10]:
            parser.parse(p.read_text(encoding="utf-8"), p.name)  # meets states, writes the entry
    finally:
        parser._backend.cache_clear()
    path = cache_path(grammar_parser.GRAMMAR_SHA256)
    assert path is not None and path.is_file() and str(path).startswith(str(lmlang_home))
    later = CachedRe(path)  # what the next process reads
    assert len(later.stored) > 10
    import re

    for key in later.stored:
        flags, _, pattern = key.partition(":")
        got, want = later.compile(pattern, int(flags)), re.compile(pattern, int(flags))
        assert (got.pattern, got.flags, got.groupindex, got.groups) == (
            want.pattern,
            want.flags,
            want.groupindex,
            want.groups,
        )
        for text in ("model", "query q", '"a [b] c"', "123.5e3", "# note\n", "  x", "flow {"):
            m, n = got.match(text), want.match(text)
            assert (m and (m.group(0), m.lastgroup)) == (n and (n.group(0), n.lastgroup))
    assert not later.added  # every pattern came from the entry, none was compiled again


def test_forged_lexer_entry_is_recompiled(lmlang_home):
    import json

    from lmlang import cachefile
    from lmlang.grammar_lexer import KIND, CachedRe, cache_path

    path = cache_path(grammar_parser.GRAMMAR_SHA256)
    pattern = "(?P<NAME>[a-z]+)|(?P<NUMBER>[0-9]+)"
    forged = {f"0:{pattern}": [0, [1, 2, 3, 999999], 2, {"NAME": 1, "NUMBER": 2}, [None, "NAME", "NUMBER"]]}
    cachefile.write(path, KIND, json.dumps(forged).encode())
    cached = CachedRe(path)
    assert cached.stored  # the entry was read ...
    m = cached.compile(pattern).match("42")
    assert m is not None and m.lastgroup == "NUMBER"  # ... _sre refused its code, and re compiled the pattern
    assert f"0:{pattern}" in cached.added
