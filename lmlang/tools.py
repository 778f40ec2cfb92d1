"""Tools a prompt can call: `{call("NAME", args...)}` inserts a tool's result
as prompt text when decoding reaches it (runtime/prompt_flow.py).

A tool is a built-in from this table or a Python function the host program
registered (`program.register(name, fn)`); a script itself never runs
arbitrary Python. Built-ins are pure functions of their text arguments that
never raise: bad input comes back as a value (`"error: ..."`) the prompt's
conditions can branch on.

Torch-free and cheap to import: the checker reads TOOLS for names and arity.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable

from .frozen import frozen

if TYPE_CHECKING:  # decimal loads when calc runs, not when the checker reads TOOLS
    from decimal import Decimal

MAX_CALC_CHARS = 200  # an expression longer than this is refused, not parsed
MAX_CALC_DEPTH = 20  # parentheses and unary minus nest at most this deep
MAX_CALC_DIGITS = 40  # digits of a number literal, and of the result's precision

_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?|\.\d+)|([-+*/()]))")


class CalcError(ValueError):
    pass


class _Calc:
    """A recursive-descent parser over + - * / and parentheses that computes
    as it parses (Decimal arithmetic: 0.1 + 0.2 is 0.3, no float noise)."""

    def __init__(self, text: str):
        self.tokens = _tokens(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise CalcError("the expression ends too early")
        self.i += 1
        return tok

    def expr(self) -> Decimal:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            right = self.term()
            value = value + right if op == "+" else value - right
        return value

    def term(self) -> Decimal:
        value = self.factor()
        while self.peek() in ("*", "/"):
            op = self.take()
            right = self.factor()
            if op == "*":
                value = value * right
            elif right == 0:
                raise CalcError("division by zero")
            else:
                value = value / right
        return value

    def factor(self) -> Decimal:
        self.depth += 1
        if self.depth > MAX_CALC_DEPTH:
            raise CalcError(f"nested deeper than {MAX_CALC_DEPTH}")
        try:
            tok = self.take()
            if tok == "-":
                return -self.factor()
            if tok == "+":
                return self.factor()
            if tok == "(":
                value = self.expr()
                if self.take() != ")":
                    raise CalcError("a '(' is not closed")
                return value
            if tok in ")*/":
                raise CalcError(f"unexpected '{tok}'")
            if len(tok.replace(".", "")) > MAX_CALC_DIGITS:
                raise CalcError(f"a number longer than {MAX_CALC_DIGITS} digits")
            from decimal import Decimal

            return Decimal(tok)
        finally:
            self.depth -= 1


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        if not text[pos:].strip():
            break
        m = _TOKEN.match(text, pos)
        if not m:
            raise CalcError(f"unexpected character {text[pos:].strip()[0]!r}")
        out.append(m.group(1) or m.group(2))
        pos = m.end()
    return out


def calc(expression) -> str:
    """The value of an arithmetic expression as text (`"7"`, `"2.5"`), or
    `"error: ..."`. Integers stay integers; decimals print without exponent."""
    from decimal import DivisionByZero, InvalidOperation, localcontext

    text = str(expression)
    if len(text) > MAX_CALC_CHARS:
        return f"error: expression longer than {MAX_CALC_CHARS} characters"
    try:
        with localcontext() as ctx:
            ctx.prec = MAX_CALC_DIGITS
            ctx.traps[DivisionByZero] = True
            p = _Calc(text)
            if not p.tokens:
                return "error: empty expression"
            value = p.expr()
            if p.peek() is not None:
                raise CalcError(f"unexpected '{p.peek()}'")
            return _number_text(value)
    except CalcError as e:
        return f"error: {e}"
    except (InvalidOperation, DivisionByZero, OverflowError):
        return "error: the result is not a number"


def _number_text(v: Decimal) -> str:
    if v == v.to_integral_value():
        return str(int(v))
    text = format(v.normalize(), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@frozen
class Tool:
    """A built-in tool. `args`: per argument, the flow types it takes (the
    checker refuses others at the argument's position)."""

    name: str
    fn: Callable
    arity: int
    doc: str
    args: tuple[tuple[str, ...], ...] = ()


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool(
            "calc",
            calc,
            1,
            "arithmetic over + - * / and parentheses, ints and decimals; errors as 'error: ...'",
            (("str", "int", "float"),),
        ),
    )
}


class ToolError(Exception):
    """A tool the prompt names is neither built in nor registered (raised at
    run time when the program's functions changed after the check)."""


def run_tool(name: str, args: list, functions: dict) -> str:
    """A tool's result as text: registered functions first (the host's
    choice overrides a built-in), then TOOLS. A registered function that
    raises gives `"error: ..."` like a built-in, so the prompt can branch."""
    from .builtins import value_text

    fn = functions.get(name)
    if fn is None:
        tool = TOOLS.get(name)
        if tool is None:
            raise ToolError(name)
        fn = tool.fn
    try:
        return value_text(fn(*args))
    except Exception as e:  # a host function failed: a value, never a traceback
        return f"error: {type(e).__name__}: {e}"
