"""Diagnostics point at the right place whatever the text holds: odd line
breaks, a byte order mark, bytes that are not UTF-8, unclosed strings, long
lines; misspelt keywords and names get a "did you mean"."""

import pytest

from lmlang.errors import LmlangError
from lmlang.frontend import build, build_file
from lmlang.source import ODD_BREAKS, Source, Span


def error(text: str) -> LmlangError:
    with pytest.raises(LmlangError) as info:
        build(text, "t.lm")
    return info.value


@pytest.mark.parametrize("brk", list(ODD_BREAKS))
def test_odd_line_breaks_do_not_move_the_underline(brk):
    e = error(f"model base = default\n# a{brk}b\nmodel c = bse\n")
    d = e.diagnostics[0]
    assert (d.span.line, d.span.col) == (3, 11)
    shown = e.render().splitlines()
    assert shown[1] == "   3 | model c = bse"
    assert shown[2].index("^") == shown[1].index("bse")


def test_odd_break_inside_the_shown_line_keeps_carets_aligned():
    e = error("model base = default\nmodel c = \u2028bse\n")
    assert "unexpected character '\\u2028'" in e.diagnostics[0].message
    shown = e.render().splitlines()
    assert shown[1] == "   2 | model c =  bse"
    assert shown[2].index("^") == shown[1].index(" bse")


def test_line_text_counts_lines_as_the_parser_does():
    src = Source("a\u2028b\x0cc\r\nd\ne", "t.lm")
    assert src.line_text(1) == "a\u2028b\x0cc"
    assert src.line_text(2) == "d"
    assert src.line_text(3) == "e"
    assert src.line_text(4) == "" and src.line_count() == 3


def test_long_lines_are_shown_as_a_window_around_the_span():
    src = Source("x" * 5000 + " bad " + "y" * 5000, "t.lm")
    out = src.underline(Span(1, 5002, 1, 5005, "t.lm")).splitlines()
    assert len(out[0]) < 200 and out[0].count("...") == 2
    col = out[1].index("^")
    assert out[0][col : col + 3] == "bad" and out[1].count("^") == 3


def test_byte_order_mark_is_accepted(tmp_path):
    assert build("\ufeffmodel base = default\n", "t.lm")
    p = tmp_path / "bom.lm"
    p.write_bytes(b"\xef\xbb\xbfmodel base = bse\n")
    with pytest.raises(LmlangError) as info:
        build_file(p)
    assert (info.value.diagnostics[0].span.line, info.value.diagnostics[0].span.col) == (1, 14)


def test_non_utf8_script_reports_the_bytes_line_and_column(tmp_path):
    p = tmp_path / "bad.lm"
    p.write_bytes(b"model base = default\n# caf\xe9 au lait\n")
    with pytest.raises(LmlangError) as info:
        build_file(p)
    e = info.value
    assert e.exit_code == 2
    d = e.diagnostics[0]
    assert (d.span.line, d.span.col) == (2, 6)
    assert "0xe9" in d.message and "UTF-8" in d.hint
    assert "   2 | # caf\ufffd au lait" in e.render()


def test_non_utf8_used_file_is_positioned_in_that_file(tmp_path):
    (tmp_path / "lib.lm").write_bytes(b"model base = default\n\xff\n")
    (tmp_path / "main.lm").write_text('use "lib.lm"\n')
    with pytest.raises(LmlangError) as info:
        build_file(tmp_path / "main.lm")
    d = [d for d in info.value.diagnostics if "UTF-8" in d.message][0]
    assert d.span.filename.endswith("lib.lm") and (d.span.line, d.span.col) == (2, 1)
    info.value.render()


@pytest.mark.parametrize(
    "text, line, col, quote",
    [
        ('model base = default\nquery q() using base {\n  user "hi\n  assistant "[x]"\n}\n', 3, 8, '"'),
        ('model base = default\ninput s: str = "abc\n', 2, 16, '"'),
        ('model base = default\nquery q() using base {\n  user """hi\n  assistant "[x]"\n}\n', 3, 8, '"""'),
        ('model base = default\nquery q() using base {\n  user r"hi\n  assistant "[x]"\n}\n', 3, 8, '"'),
    ],
)
def test_unclosed_string_points_at_its_start(text, line, col, quote):
    e = error(text)
    d = e.diagnostics[0]
    assert d.message.startswith("unclosed string") and quote in d.message
    assert (d.span.line, d.span.col) == (line, col)
    assert "expected a string" not in e.render()


def test_closed_raw_string_with_a_backslash_is_not_blamed():
    e = error('model base = default\ninput s: str = r"a\\d" +\n')
    assert not e.diagnostics[0].message.startswith("unclosed string")


@pytest.mark.parametrize(
    "text, suggestion",
    [
        ("model base = defualt\n", "did you mean 'default'?"),
        ("modle base = default\n", "did you mean 'model'?"),
        ('model base = default\nqeury q() using base { assistant "[x]" }\n', "did you mean 'query'?"),
        ('model base = default\nmodel b = bsae\n', "did you mean 'base'?"),
    ],
)
def test_misspellings_get_did_you_mean(text, suggestion):
    assert error(text).diagnostics[0].hint == suggestion
