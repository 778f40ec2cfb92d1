"""Lark's parse errors -> LmlangSyntaxError with a span and a hint.

Nothing of Lark escapes: the exception classes come from whichever parser
ran (the generated one, or lark's while the generated one is stale; see
parser.py), and only their plain fields (line, column, token, expected) are
read here.
"""

from __future__ import annotations

from .errors import LmlangSyntaxError
from .source import Source, Span, brackets, line_col
from .suggest import closest

TERMINAL_NAMES = {
    "NAME": "a name",
    "STRING": "a string",
    "LONG_STRING": "a string",
    "NUMBER": "a number",
    "INT": "an integer",
    "ROLE": "a role (system, user, assistant)",
    "ROLE_BLOCK": "a role (system, user, assistant)",
    "LENFN": "tokens() or len()",
    "CMP_OP": "a comparison",
    "ADD_OP": "'+' or '-'",
    "MUL_OP": "'*', '/' or '%'",
    "SIGN": "'-'",
    "OPTIONAL": "'?'",
    "RANGE_DOTS": "'..'",
    "$END": "the end of the file",
}


def _describe_terminal(name: str, parser) -> str:
    if name in TERMINAL_NAMES:
        return TERMINAL_NAMES[name]
    try:
        term = parser.get_terminal(name)
        if term.pattern.type == "str":
            return f"'{term.pattern.value}'"
    except KeyError:
        pass
    return name.lower()


def syntax_error(e, source: Source, parser, exceptions) -> LmlangSyntaxError:
    """The diagnostic for a Lark UnexpectedInput `e`; `exceptions` is the
    namespace of the parser's exception classes."""

    line = getattr(e, "line", 1) or 1
    col = getattr(e, "column", 1) or 1
    expected = sorted(
        {_describe_terminal(t, parser) for t in (getattr(e, "expected", None) or getattr(e, "allowed", None) or ())}
    )
    unclosed = unclosed_string(source, line)
    if unclosed is not None:
        return unclosed
    if isinstance(e, exceptions.UnexpectedCharacters):
        ch = source.text[e.pos_in_stream] if e.pos_in_stream < len(source.text) else ""  # type: ignore[index, operator]  # lark declares pos_in_stream = None; UnexpectedCharacters sets the int position
        message = f"unexpected character {ch!r}"
        span = source.span(line, col)
    elif isinstance(e, exceptions.UnexpectedEOF) or getattr(getattr(e, "token", None), "type", "") == "$END":
        line = source.line_count()
        if line > 1 and not source.line_text(line):  # a final newline: point at the last text
            line -= 1
        col = len(source.line_text(line)) + 1
        message = "unexpected end of file"
        span = source.span(line, col)
    else:
        tok = e.token
        width = max(len(str(tok)), 1)
        span = Span(
            line,
            col,
            getattr(tok, "end_line", line) or line,
            getattr(tok, "end_column", col + width) or col + width,
            source.filename,
        )
        text = str(tok)
        shown = text if len(text) <= 30 else text[:27] + "..."
        if tok.type in TERMINAL_NAMES and tok.type != "NAME":
            word = (
                TERMINAL_NAMES[tok.type].split(" ", 1)[1]
                if TERMINAL_NAMES[tok.type].startswith(("a ", "an "))
                else TERMINAL_NAMES[tok.type]
            )
            message = f"unexpected {word} {shown}"
        else:
            message = f"unexpected {shown!r}"
    hint = ""
    name = getattr(getattr(e, "token", None), "type", "") == "NAME" and str(e.token)
    keywords = [x.strip("'") for x in expected if x.startswith("'") and x[1:2].isalpha()]
    if name and keywords and closest(name, keywords):
        hint = f"did you mean '{closest(name, keywords)}'?"
    elif expected:
        listed = expected[:8]
        if len(expected) > 8:
            hint = "expected " + ", ".join(listed) + ", ..."
        elif len(listed) > 1:
            hint = "expected " + ", ".join(listed[:-1]) + " or " + listed[-1]
        else:
            hint = "expected " + listed[0]
    return LmlangSyntaxError(message, span, hint).with_source(source)


def unclosed_string(source: Source, upto_line: int) -> LmlangSyntaxError | None:
    """The error for the first string never closed at or before the line
    where parsing failed: Lark only sees a stray quote (or an `r`, or an
    empty string and a stray quote for \"\"\"), so its own message says
    little; this points at where the string starts."""
    for i, ch in brackets(source.text):
        if ch not in ('"', '"""'):
            continue
        line, col = line_col(source.text, i)
        if line > upto_line:
            return None
        if i > 0 and source.text[i - 1] == "r":
            end = source.text.find('"', i + 1)  # a raw string has no escapes: closed after all?
            if ch == '"' and end >= 0 and "\n" not in source.text[i:end]:
                continue
            i, col = i - 1, col - 1
        span = source.span(line, col, line, col + len(ch) + (source.text[i] == "r"))
        if ch == '"""':
            return LmlangSyntaxError(
                'unclosed string: this """ is never closed', span, 'close it with """'
            ).with_source(source)
        return LmlangSyntaxError(
            'unclosed string: this " has no closing " on its line',
            span,
            'close it on the same line, or write """...""" for text over several lines',
        ).with_source(source)
    return None
