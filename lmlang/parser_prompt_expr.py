"""Expressions inside a prompt's braces: the arguments of
`{call("tool", args...)}` (issue 15).

A tool call sits inside a prompt string, so Lark never sees its arguments;
this small recursive-descent parser reads them with the flow's expression
syntax and precedence (grammar/lmlang.lark, `expr`): literals, names and
fields, indexing, list literals, calls of builtins, unary `-` and `not`,
`* / %`, `+ -`, one comparison or `in`, `and`, `or`, parentheses. It builds
the same AST nodes as the grammar, so the checker types them and the
compiler lowers them like any flow expression. Each node's span is its own
text in the source (`at` maps offsets of the call's text to spans).
"""

from __future__ import annotations

import re
from typing import Callable, TypeVar

from . import ast as A
from .errors import LmlangSyntaxError
from .source import Span

_R = TypeVar("_R")
MAX_DEPTH = 64  # nesting of parentheses, brackets and unary operators

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\]|\\.)*")
    | (?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op>==|!=|<=|>=|[-+*/%<>()\[\].,:=])
    )""",
    re.VERBOSE,
)
_CMP = ("==", "!=", "<=", ">=", "<", ">")
_KEYWORDS = ("and", "or", "not", "in", "true", "false")
HINT = 'write {call("tool", arg, ...)}: arguments are expressions of the flow (x + 1, "a" + b, xs[0], str(n))'


class _Tok:
    __slots__ = ("kind", "text", "start", "end")

    def __init__(self, kind: str, text: str, start: int, end: int):
        self.kind, self.text, self.start, self.end = kind, text, start, end


def parse_call(text: str, at: Callable[[int, int], Span], whole: Span) -> A.ToolCall:
    """`call("name", arg, ...)` (text: the braces' inside, escapes resolved)
    as a ToolCall; a LmlangSyntaxError positioned at the offending token."""
    p = _Parser(text, at, whole)
    bind = None
    if len(p.toks) > 1 and p.toks[0].kind == "name" and p.toks[1].text == "=":  # `{obs = call(...)}`
        bind = p.toks[0].text
        if bind in _KEYWORDS or bind == "call":
            raise LmlangSyntaxError(f"'{bind}' cannot name a tool's result", p.at(0, len(bind)), HINT)
        p.i = 2
    if not (p.take_if("name", "call") and p.take_if("op", "(")):
        raise LmlangSyntaxError(f"invalid tool call {{{text}}}", whole, HINT)
    args = p.items(")")
    p.expect("op", ")")
    if p.peek() is not None:
        raise p.error(p.peek())
    if not args or not isinstance(args[0], A.Lit) or not isinstance(args[0].value, str):
        raise LmlangSyntaxError("a tool call names its tool first, as a string", whole, HINT)
    return A.ToolCall(args[0].value, tuple(args[1:]), bind, span=whole, name_span=args[0].span)


class _Parser:
    def __init__(self, text: str, at: Callable[[int, int], Span], whole: Span):
        self.text, self.at, self.whole = text, at, whole
        self.toks = self._tokens()
        self.i = 0
        self.depth = 0

    def _tokens(self) -> list[_Tok]:
        out, pos = [], 0
        while self.text[pos:].strip():
            m = _TOKEN.match(self.text, pos)
            if not m:
                start = len(self.text) - len(self.text[pos:].lstrip())
                raise LmlangSyntaxError(
                    f"unexpected {self.text[start]!r} in a tool call", self.at(start, start + 1), HINT
                )
            kind = m.lastgroup or "op"
            out.append(_Tok(kind, m.group(kind), m.start(kind), m.end(kind)))
            pos = m.end()
        return out

    # ------------------------------------------------------------ tokens
    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def is_(self, kind: str, text: str | None = None) -> bool:
        t = self.peek()
        return t is not None and t.kind == kind and (text is None or t.text == text)

    def take_if(self, kind: str, text: str | None = None) -> _Tok | None:
        if self.is_(kind, text):
            self.i += 1
            return self.toks[self.i - 1]
        return None

    def expect(self, kind: str, text: str) -> _Tok:
        tok = self.take_if(kind, text)
        if tok is None:
            raise self.error(self.peek(), f"expected '{text}'")
        return tok

    def error(self, tok: _Tok | None, what: str = "") -> LmlangSyntaxError:
        if tok is None:
            end = len(self.text)
            return LmlangSyntaxError(
                f"the tool call ends too early{': ' + what if what else ''}", self.at(end, end), HINT
            )
        return LmlangSyntaxError(
            f"unexpected '{tok.text}' in a tool call{': ' + what if what else ''}", self.at(tok.start, tok.end), HINT
        )

    def _here(self) -> int:
        """The offset where the next token starts (the end at the end)."""
        t = self.peek()
        return t.start if t is not None else len(self.text)

    def span(self, start: int) -> Span:
        return self.at(start, self.toks[self.i - 1].end)

    # ------------------------------------------------------------ grammar
    def items(self, close: str) -> list:
        out: list = []
        while not self.is_("op", close):
            out.append(self.expr())
            if not self.take_if("op", ","):
                break
        return out

    def expr(self) -> A.Expr:
        return self._chain(self.and_expr, "or")

    def and_expr(self) -> A.Expr:
        return self._chain(self.not_expr, "and")

    def _chain(self, sub, word: str) -> A.Expr:
        start = self._here()
        e = sub()
        while self.take_if("name", word):
            e = A.BinOp(word, e, sub(), span=self.span(start))
        return e

    def not_expr(self) -> A.Expr:
        start = self._here()
        if self.take_if("name", "not"):
            return A.UnaryOp("not", self._nested(self.not_expr), span=self.span(start))
        return self.comparison()

    def comparison(self) -> A.Expr:
        start = self._here()
        left = self.arith()
        t = self.peek()
        if t is not None and ((t.kind == "op" and t.text in _CMP) or (t.kind == "name" and t.text == "in")):
            self.i += 1
            return A.BinOp(t.text, left, self.arith(), span=self.span(start))
        return left

    def arith(self) -> A.Expr:
        return self._ops(self.term, ("+", "-"))

    def term(self) -> A.Expr:
        return self._ops(self.factor, ("*", "/", "%"))

    def _ops(self, sub, ops: tuple) -> A.Expr:
        start = self._here()
        e = sub()
        while (t := self.peek()) is not None and t.kind == "op" and t.text in ops:
            self.i += 1
            e = A.BinOp(t.text, e, sub(), span=self.span(start))
        return e

    def factor(self) -> A.Expr:
        start = self._here()
        if self.take_if("op", "-"):
            return A.UnaryOp("-", self._nested(self.factor), span=self.span(start))
        return self.postfix()

    def _nested(self, sub: Callable[[], _R]) -> _R:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise LmlangSyntaxError(f"a tool call's argument nests deeper than {MAX_DEPTH}", self.whole, HINT)
        try:
            return sub()
        finally:
            self.depth -= 1

    def postfix(self) -> A.Expr:
        start = self._here()
        e = self.atom()
        while True:
            if self.take_if("op", "."):
                name = self.take_if("name")
                if name is None or name.text in _KEYWORDS:
                    raise self.error(self.peek(), "expected a field name")
                e = A.Attr(e, name.text, span=self.span(start))
            elif self.take_if("op", "["):
                index = self._nested(self.expr)
                self.expect("op", "]")
                e = A.Index(e, index, span=self.span(start))
            else:
                return e

    def atom(self) -> A.Expr:
        t = self.peek()
        if t is None:
            raise self.error(None, "expected a value")
        self.i += 1
        if t.kind == "str":
            return A.Lit(t.text[1:-1].replace('\\"', '"').replace("\\\\", "\\"), span=self.span(t.start))
        if t.kind == "num":
            from .parser_strings import number_value

            return A.Lit(number_value(t.text, self.span(t.start)), span=self.span(t.start))
        if t.kind == "name" and t.text in ("true", "false"):
            return A.Lit(t.text == "true", span=self.span(t.start))
        if t.kind == "name" and t.text not in _KEYWORDS:
            if self.take_if("op", "("):
                args = self._nested(lambda: self.items(")"))
                self.expect("op", ")")
                return A.Call(t.text, tuple(args), span=self.span(t.start))
            return A.Var(t.text, span=self.span(t.start))
        if t.kind == "op" and t.text == "[":
            items = self._nested(lambda: self.items("]"))
            self.expect("op", "]")
            return A.ListExpr(tuple(items), span=self.span(t.start))
        if t.kind == "op" and t.text == "(":
            e = self._nested(self.expr)
            self.expect("op", ")")
            return e
        raise self.error(t)
