"""The pygments lexer: registered under the `lmlang` name, covers every
example without error tokens, and marks prompt holes and interpolations."""

from pathlib import Path

import pytest
from pygments import lex
from pygments.lexers import get_lexer_by_name, get_lexer_for_filename
from pygments.token import Error, Keyword, Name, Punctuation, String

from lmlang.highlight import LmlangLexer

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").rglob("*.lm"))


def test_registered_through_the_entry_point():
    assert isinstance(get_lexer_by_name("lmlang"), LmlangLexer)
    assert isinstance(get_lexer_for_filename("review.lm"), LmlangLexer)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_lex_without_errors(path):
    tokens = list(lex(path.read_text(), LmlangLexer()))
    assert not [t for t in tokens if t[0] is Error]
    assert "".join(v for _, v in tokens) == path.read_text() + ("" if path.read_text().endswith("\n") else "\n")


def test_token_kinds():
    src = 'query q(x: str) using m decode sample(seed: 1) {\n  user "Hi {x}: [a] \\{lit\\}"\n  where a matches r"[a-z]+"\n}\n'
    toks = [(t, v) for t, v in lex(src, LmlangLexer()) if v.strip()]
    assert (Keyword.Declaration, "query") in toks and (Keyword, "using") in toks
    assert (Keyword.Pseudo, "user") in toks
    assert (String.Interpol, "{x}") in toks and (Name.Variable, "[a]") in toks
    assert (String.Escape, "\\{") in toks
    assert (String.Regex, "[a-z]+") in toks


def test_json_options_lex_as_a_call():
    src = 'query q() using m {\n  "[o]"\n  where o is json(formats: "annotate") "s.json"\n}\n'
    tokens = list(lex(src, LmlangLexer()))
    assert not [t for t in tokens if t[0] is Error]
    toks = [(t, v) for t, v in tokens if v.strip()]
    i = toks.index((Keyword, "json"))
    assert toks[i + 1 : i + 4] == [(Punctuation, "("), (Name, "formats"), (Punctuation, ":")]
    assert (String.Double, "annotate") in toks
