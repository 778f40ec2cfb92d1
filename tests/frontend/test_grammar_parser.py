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


def test_generated_module_imports_no_lark_regex_pickle_or_logging():
    import subprocess
    import sys

    probe = (
        "import sys; import lmlang.grammar_parser; "
        "print(sorted(m for m in ('lark', 'regex', 'pickle', 'logging') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"
    text = Path(grammar_parser.__file__).read_text(encoding="utf-8")
    assert "import " not in text.replace("from .lalr_driver import ", "")  # the tables are literals
    assert issubclass(grammar_parser.Parser, grammar_parser.LALRParser)


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


_META = ("line", "column", "start_pos", "end_line", "end_column", "end_pos", "empty")
_CONTAINER = tuple(f"container_{k}" for k in _META[:-1])


def _shape(node):
    """A tree of either parser as plain data: names, every position (the
    container positions an inlined `?rule` hands its parent too), tokens."""
    if node is None:
        return None
    if hasattr(node, "data"):
        meta = tuple(getattr(node.meta, k, "-") for k in _META + _CONTAINER)
        return (node.data, meta, tuple(_shape(c) for c in node.children))
    return (node.type, str(node), node.start_pos, node.line, node.column, node.end_line, node.end_column, node.end_pos)


def _raw_outcome(p, text: str):
    try:
        return _shape(p.parse(text))
    except Exception as e:  # either parser's UnexpectedToken / UnexpectedCharacters
        seen = getattr(e, "expected", None) or getattr(e, "allowed", None) or ()
        token = getattr(e, "token", None)
        return (type(e).__name__, e.line, e.column, e.pos_in_stream, sorted(seen), token and _shape(token))


def test_trees_positions_and_errors_match_lark_on_damaged_scripts():
    """Below the AST: the driver's raw trees, token positions and error
    fields (expected sets included) are lark's, on every script and on
    damaged copies of them (characters cut, inserted, the tail dropped)."""
    import random

    import lark

    from lmlang.parser_cache import OPTIONS

    ours, theirs = grammar_parser.Parser(), lark.Lark(grammar_text(), **OPTIONS)
    rng = random.Random(11)
    pieces = list('{}()[]"\n =:,.+-*?#r\\@') + ["model", "query", "else", '"""', "where", "x is"]
    kinds = set()
    for path in SCRIPTS:
        text = path.read_text(encoding="utf-8")
        cases = [text]
        for _ in range(3):
            i = rng.randrange(len(text) + 1)
            cut = text[:i] + text[i + rng.randrange(1, 5) :]
            cases += [cut, text[:i] + rng.choice(pieces) + text[i:], text[:i]]
        for case in cases:
            want = _raw_outcome(theirs, case)
            assert _raw_outcome(ours, case) == want, (path.name, case)
            kinds.add(want[0] if want and want[0] in ("UnexpectedToken", "UnexpectedCharacters") else "tree")
    assert kinds == {"tree", "UnexpectedToken", "UnexpectedCharacters"}  # every path was compared
