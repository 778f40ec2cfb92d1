"""The LALR(1) parser that runs lmlang's generated tables (lmlang/grammar_parser.py).

Lark builds the tables (`python -m lmlang.grammar_gen` writes them as plain
literals: tuples of names and integers, the lexers' terminal lists); this
module is the small runtime that reads them, so `lmlang check` neither
imports lark nor rebuilds Lark's objects (rules, terminals, parse table,
one lexer per parser state) at every start. It makes what Lark's LALR
parser makes, so parser_ast.py and parser_errors.py cannot tell the two
apart (tests/frontend/test_grammar_parser.py compares both on every example,
fixture and bad input):

* the same trees: rule names and aliases, `_rule`s inlined into their
  parent, `?rule`s with one child replaced by it, anonymous tokens filtered
  out, None for a missing `[optional]` (maybe_placeholders), and Lark's
  propagate_positions `meta` (line, column, end_line, end_column and the
  `container_*` positions an inlined `?rule` hands its parent);
* the same tokens: Lark's contextual lexer, one scanner per set of
  terminals a state accepts (terminals in Lark's priority order, keywords
  recognised from a name by exact match), line and column as Lark counts
  them;
* the same errors: UnexpectedCharacters with the state's allowed terminals,
  UnexpectedToken with the state's expected terminals (and Lark's retry with
  all terminals, which turns a character the state does not accept into an
  unexpected token), the end of input as a `$END` token at the last token.

The generator checks, against Lark's own objects, everything this module
assumes (no flags, plain-string keywords, the scanners' pattern text).
Transformer and v_args are the part of Lark's API parser_ast.py uses: a
method per rule called as method(meta, children), exceptions wrapped in
VisitError. Tokens are passed through (no token callbacks).
"""

from __future__ import annotations

import re
from typing import Any


class LarkError(Exception):
    """Base of the parser's errors (the name Lark gives them)."""


class UnexpectedInput(LarkError):
    line: Any = 1  # Lark's UnexpectedToken takes '?' for a token without one
    column: Any = 1
    pos_in_stream: int | None = None


class UnexpectedCharacters(UnexpectedInput):
    """No terminal the current state accepts matches here."""

    def __init__(self, text: str, pos: int, line: int, column: int, allowed: set[str]) -> None:
        self.line, self.column, self.pos_in_stream, self.allowed = line, column, pos, allowed
        self.char = text[pos]
        super().__init__(f"No terminal matches {self.char!r} at line {line} col {column}")


class UnexpectedToken(UnexpectedInput):
    """A token the current state has no action for."""

    def __init__(self, token: Token, expected: set[str]) -> None:
        self.token, self.expected = token, expected
        self.line = getattr(token, "line", "?")
        self.column = getattr(token, "column", "?")
        self.pos_in_stream = getattr(token, "start_pos", None)
        super().__init__(f"Unexpected token {token!r} at line {self.line}, column {self.column}")


class UnexpectedEOF(UnexpectedInput):
    """Never raised by an LALR parser (the end of input is a `$END` token);
    defined because parser_errors.py tells the error kinds apart by class."""


class VisitError(LarkError):
    """An exception raised by a Transformer method, with the rule it ran for."""

    def __init__(self, rule: str, obj: Any, orig_exc: Exception) -> None:
        self.rule, self.obj, self.orig_exc = rule, obj, orig_exc
        super().__init__(f'Error trying to process rule "{rule}":\n\n{orig_exc}')


class Token(str):
    """A piece of the source: its text, terminal name and position (Lark's Token)."""

    type: str
    value: str
    start_pos: int | None
    line: int | None
    column: int | None
    end_line: int | None
    end_column: int | None
    end_pos: int | None

    def __new__(
        cls, type_, value, start_pos=None, line=None, column=None, end_line=None, end_column=None, end_pos=None
    ):
        inst = super().__new__(cls, value)
        inst.type, inst.value, inst.start_pos, inst.line, inst.column = type_, value, start_pos, line, column
        inst.end_line, inst.end_column, inst.end_pos = end_line, end_column, end_pos
        return inst

    def __repr__(self) -> str:
        return f"Token({self.type!r}, {self.value!r})"

    def __eq__(self, other) -> bool:
        if isinstance(other, Token) and self.type != other.type:
            return False
        return str.__eq__(self, other)

    __hash__ = str.__hash__


class Meta:
    """A tree's position; attributes exist only once set (Lark tests them with hasattr)."""

    __slots__ = (
        "empty",
        "line",
        "column",
        "start_pos",
        "end_line",
        "end_column",
        "end_pos",
        "container_line",
        "container_column",
        "container_start_pos",
        "container_end_line",
        "container_end_column",
        "container_end_pos",
    )

    empty: bool
    line: int
    column: int
    start_pos: int
    end_line: int
    end_column: int
    end_pos: int
    container_line: int
    container_column: int
    container_start_pos: int
    container_end_line: int
    container_end_column: int
    container_end_pos: int

    def __init__(self) -> None:
        self.empty = True


class Tree:
    """A rule's node: its name (`data`), children (trees, tokens, None) and meta."""

    __slots__ = ("data", "children", "_meta")

    def __init__(self, data: str, children: list, meta: Meta | None = None) -> None:
        self.data, self.children, self._meta = data, children, meta

    @property
    def meta(self) -> Meta:
        if self._meta is None:
            self._meta = Meta()
        return self._meta

    def __repr__(self) -> str:
        return f"Tree({self.data!r}, {self.children!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Tree) and self.data == other.data and self.children == other.children

    def __hash__(self) -> int:
        return hash((self.data, tuple(self.children)))


def v_args(meta: bool = False):
    """Lark's class decorator, as parser_ast.py uses it: v_args(meta=True)
    makes every rule method receive (meta, children)."""

    def decorate(cls):
        cls.__meta_args__ = meta
        return cls

    return decorate


class Transformer:
    """Bottom-up tree -> value, one method per rule name (Lark's Transformer,
    recursive like it); a rule without a method stays a Tree."""

    __meta_args__ = False

    def transform(self, tree: Tree) -> Any:
        return self._transform_tree(tree)

    def _transform_tree(self, tree: Tree) -> Any:
        children = [self._transform_tree(c) if isinstance(c, Tree) else c for c in tree.children]
        f = getattr(self, tree.data, None)
        if f is None:
            return Tree(tree.data, children, tree.meta)
        try:
            return f(tree.meta, children) if self.__meta_args__ else f(children)
        except Exception as e:
            raise VisitError(tree.data, tree, e) from e


class TerminalInfo:
    """What parser_errors.py reads of a terminal: its name and pattern (type 'str' or 're', value)."""

    __slots__ = ("name", "pattern")

    def __init__(self, name: str, kind: str, value: str) -> None:
        self.name, self.pattern = name, _Pattern(kind, value)


class _Pattern:
    __slots__ = ("type", "value")

    def __init__(self, kind: str, value: str) -> None:
        self.type, self.value = kind, value


class _Scanner:
    """One lexer of the contextual lexer: compiled on first use."""

    __slots__ = ("mres", "keywords", "newline_types", "allowed")

    def __init__(self, spec: tuple, patterns: dict[str, str], flags: int, re_module) -> None:
        chunks, keywords, newline_types, allowed = spec
        self.mres = [
            re_module.compile("|".join(f"(?P<{name}>{patterns[name]})" for name in chunk), flags) for chunk in chunks
        ]
        self.keywords = {kind: dict(pairs) for kind, pairs in keywords}
        self.newline_types = frozenset(newline_types)
        self.allowed = set(allowed)


class LALRParser:
    """The driver; the generated module subclasses it with its tables as
    class attributes (START, END, STATES, RULES, STATE_LEXER, LEXERS,
    ROOT_LEXER, PATTERNS, TERMINALS, IGNORE, FLAGS)."""

    START: int
    END: int
    STATES: tuple  # per state: (names, actions); action >= 0 shifts to that state, -1 - r reduces rule r
    RULES: tuple  # per rule: (origin, size, tree name, expand1, to_include or None, nones to append)
    STATE_LEXER: tuple  # per state: its lexer's index in LEXERS
    LEXERS: tuple  # per lexer: (chunks of terminal names, keyword pairs, newline types, allowed)
    ROOT_LEXER: tuple  # the lexer with every terminal (its errors say more)
    PATTERNS: dict  # terminal name -> regex
    TERMINALS: dict  # terminal name -> (pattern type, value)
    IGNORE: frozenset
    FLAGS: int

    def __init__(self, re_module: Any = re) -> None:
        """re_module: what compiles the scanners (`re`, or grammar_lexer's disk-cached CachedRe)."""
        self.re = re_module
        self._states: list[dict | None] = [None] * len(self.STATES)
        self._scanners: list[_Scanner | None] = [None] * len(self.LEXERS)
        self._root: _Scanner | None = None

    def get_terminal(self, name: str) -> TerminalInfo:
        kind, value = self.TERMINALS[name]  # KeyError for $END, as in Lark
        return TerminalInfo(name, kind, value)

    def _actions(self, state: int) -> dict:
        table = self._states[state]
        if table is None:
            names, actions = self.STATES[state]
            table = self._states[state] = dict(zip(names, actions))
        return table

    def _scanner(self, state: int) -> _Scanner:
        i = self.STATE_LEXER[state]
        sc = self._scanners[i]
        if sc is None:
            sc = self._scanners[i] = _Scanner(self.LEXERS[i], self.PATTERNS, self.FLAGS, self.re)
        return sc

    def parse(self, text: str) -> Tree:
        stack = [self.START]
        values: list = []
        lexer = _Lexer(text, self.IGNORE)
        token = None
        while True:
            state = stack[-1]
            scanner = self._scanner(state)
            try:
                nxt = lexer.next_token(scanner)
            except UnexpectedCharacters as e:
                raise self._retry_with_all_terminals(lexer, e) from None
            if nxt is None:
                break
            token = nxt
            self._feed(stack, values, token, False)
        if token is not None:
            end = Token(
                "$END", "", token.start_pos, token.line, token.column, token.end_line, token.end_column, token.end_pos
            )
        else:
            end = Token("$END", "", 0, 1, 1)
        return self._feed(stack, values, end, True)

    def _retry_with_all_terminals(self, lexer: _Lexer, e: UnexpectedCharacters) -> UnexpectedInput:
        """Lark's contextual lexer: a character no terminal of this state
        matches is tried against all terminals, so a known token in the wrong
        place reads as an unexpected token (with this state's terminals)."""
        if self._root is None:
            self._root = _Scanner(self.ROOT_LEXER, self.PATTERNS, self.FLAGS, self.re)
        try:
            token = lexer.next_token(self._root)
        except UnexpectedCharacters:
            return e
        return UnexpectedToken(token, e.allowed) if token is not None else e

    def _feed(self, stack: list, values: list, token: Token, is_end: bool) -> Any:
        rules, tables, kind = self.RULES, self._states, token.type
        while True:
            state = stack[-1]
            actions = tables[state] or self._actions(state)
            action = actions.get(kind)
            if action is None:
                raise UnexpectedToken(token, {s for s in actions if s.isupper()})
            if action >= 0:
                stack.append(action)
                values.append(token)
                return None
            origin, size, name, expand1, include, append_none = rules[-1 - action]
            if size:
                children = values[-size:]
                del stack[-size:]
                del values[-size:]
            else:
                children = []
            state = stack[-1]
            stack.append((tables[state] or self._actions(state))[origin])
            values.append(_build(children, name, expand1, include, append_none))
            if is_end and stack[-1] == self.END:
                return values[-1]


def _build(children: list, name: str, expand1: bool, include: tuple | None, append_none: int) -> Any:
    """One reduction's node, as Lark's parse-tree builder makes it (child
    filter, expand-single-child, then positions from the raw children)."""
    if include is None:
        kept = children
    else:
        kept = []
        for i, to_expand, add_none in include:
            if add_none:
                kept += [None] * add_none
            if to_expand:
                if kept:
                    kept += children[i].children
                else:  # Lark reuses the inlined child's list (left recursion)
                    kept = children[i].children
            else:
                kept.append(children[i])
        if append_none:
            kept += [None] * append_none
    if expand1 and len(kept) == 1:
        res = kept[0]
        if isinstance(res, Tree):
            _propagate_positions(res.meta, children)
        return res
    meta = Meta()
    _propagate_positions(meta, children)
    return Tree(name, kept, meta)


def _propagate_positions(meta: Meta, children: list) -> None:
    """Lark's PropagatePositions: a node spans its first child's container
    to its last child's (a container: what an inlined `?rule` matched); its
    own line and end stay as first set. The first and last positioned
    children: a Tree whose meta is not empty (then every container_* is set,
    by this function) or a Token (its own positions are its container)."""
    # (Any: a Token's positions are Optional to mypy; a parsed token has them all)
    line: Any
    column: Any
    start_pos: Any
    end_line: Any
    end_column: Any
    end_pos: Any
    for c in children:
        if isinstance(c, Tree):
            m = c.meta
            if not m.empty:
                line, column, start_pos = m.container_line, m.container_column, m.container_start_pos
                break
        elif isinstance(c, Token):
            line, column, start_pos = c.line, c.column, c.start_pos
            break
    else:
        return  # no child has a position (so neither end has one)
    for c in reversed(children):
        if isinstance(c, Tree):
            m = c.meta
            if not m.empty:
                end_line, end_column, end_pos = m.container_end_line, m.container_end_column, m.container_end_pos
                break
        elif isinstance(c, Token):
            end_line, end_column, end_pos = c.end_line, c.end_column, c.end_pos
            break
    if meta.empty:  # both ends or neither: empty means no line and no end yet
        meta.line, meta.column, meta.start_pos = line, column, start_pos
        meta.end_line, meta.end_column, meta.end_pos = end_line, end_column, end_pos
        meta.empty = False
    meta.container_line, meta.container_column, meta.container_start_pos = line, column, start_pos
    meta.container_end_line, meta.container_end_column, meta.container_end_pos = end_line, end_column, end_pos


class _Lexer:
    """The position in the text, counted as Lark's LineCounter does."""

    __slots__ = ("text", "ignore", "pos", "line", "line_start")

    def __init__(self, text: str, ignore: frozenset) -> None:
        self.text, self.ignore = text, ignore
        self.pos, self.line, self.line_start = 0, 1, 0

    def next_token(self, scanner: _Scanner) -> Token | None:
        """The next token that is not ignored (whitespace, comments), or None at the end."""
        text, end = self.text, len(self.text)
        while self.pos < end:
            pos = self.pos
            for mre in scanner.mres:
                m = mre.match(text, pos)
                if m:
                    break
            else:
                allowed = scanner.allowed or {"<END-OF-FILE>"}
                raise UnexpectedCharacters(text, pos, self.line, pos - self.line_start + 1, allowed)
            value, kind = m.group(0), m.lastgroup
            line, column = self.line, pos - self.line_start + 1
            if kind in scanner.newline_types:
                newlines = value.count("\n")
                if newlines:
                    self.line += newlines
                    self.line_start = pos + value.rindex("\n") + 1
            self.pos = pos + len(value)
            if kind in self.ignore:
                continue
            keywords = scanner.keywords.get(kind)
            if keywords is not None:
                kind = keywords.get(value, kind)
            return Token(kind, value, pos, line, column, self.line, self.pos - self.line_start + 1, self.pos)
        return None
