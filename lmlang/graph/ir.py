"""The IR between compiler and runtime: flow statements, expressions and
router payloads as frozen, hashable, JSON-able nodes.

The compiler lowers the checked AST into these (no spans, no checker
types); the runtime interprets them and nothing else, so `lmlang.runtime`
never needs the front end. Every node has a `tag`: its name in labels and in
the compact form that node ids hash (`ir_form`). The runtime's only use of a
source location is a failing call, so `Call` carries one (`file:line:col`).

Reads, writes and calls of a statement come from the generic `walk` over
these nodes (`effects`), not from a hand-written recursion.
"""

from __future__ import annotations

from typing import Union

from ..frozen import children, field_names, fields, frozen, walk


@frozen
class IRNode:
    """A node of the IR (a @frozen class: lmlang.frozen, no dataclasses on the
    check path)."""

    tag = "node"


# ---------------------------------------------------------------- expressions


@frozen
class Expr(IRNode):
    """An expression: evaluates to a plain value."""


@frozen
class Lit(Expr):
    """`"text"`, `3`, `2.5`, `true`."""

    tag = "lit"
    value: Union[str, int, float, bool, None]


@frozen
class Var(Expr):
    """A variable of the flow or a program input."""

    tag = "var"
    name: str


@frozen
class Attr(Expr):
    """`obj.name`: a field of a dict value (never a Python attribute)."""

    tag = "attr"
    obj: Expr
    name: str


@frozen
class Index(Expr):
    """`obj[index]`: a list item or a dict entry."""

    tag = "index"
    obj: Expr
    index: Expr


@frozen
class ListExpr(Expr):
    """`[a, b, ...]`."""

    tag = "list"
    items: tuple[Expr, ...]


@frozen
class Call(Expr):
    """A call of a query, a builtin or a registered Python function; `loc`
    names the call in runtime errors."""

    tag = "call"
    func: str
    args: tuple[Expr, ...]
    kwargs: tuple[tuple[str, Expr], ...]
    loc: str


@frozen
class BinOp(Expr):
    """`left op right`; `and`/`or` short-circuit."""

    tag = "bin"
    op: str  # + - * / % == != < <= > >= and or in
    left: Expr
    right: Expr


@frozen
class UnaryOp(Expr):
    """`not x`, `-x`."""

    tag = "un"
    op: str  # not | -
    operand: Expr


# ---------------------------------------------------------------- statements


@frozen
class Stmt(IRNode):
    """A flow statement."""


@frozen
class Assign(Stmt):
    """`name = value`."""

    tag = "assign"
    name: str
    value: Expr


@frozen
class If(Stmt):
    """`if cond { then } else { orelse }`."""

    tag = "if"
    cond: Expr
    then: tuple[Stmt, ...]
    orelse: tuple[Stmt, ...]


@frozen
class For(Stmt):
    """`for var in iter { body }`."""

    tag = "for"
    var: str
    iter: Expr
    body: tuple[Stmt, ...]


@frozen
class Emit(Stmt):
    """`emit name = value, ...`: the flow's outputs."""

    tag = "emit"
    items: tuple[tuple[str, Expr], ...]  # (name, value), in source order


@frozen
class While(Stmt):
    """`while cond max n { body }`: at most n iterations."""

    tag = "while"
    cond: Expr
    max: int
    body: tuple[Stmt, ...]


@frozen
class Return(Stmt):
    """`return value`: ends a flow function (`def`)."""

    tag = "return"
    value: Expr


# ---------------------------------------------------------------- grown prompts (issue 15)
# A message whose text grows while it decodes: segments with control flow
# around them. A segment's parts are the query's usual ("text", s),
# ("interp", path), ("hole", name), plus ("call", Call) for a tool call and
# ("call_as", (Call, name)) for one whose result is named (`{obs = call(...)}`).


@frozen
class PSeg(IRNode):
    """A literal segment inside a grown prompt."""

    tag = "pseg"
    parts: tuple


@frozen
class PFor(IRNode):
    """`for var in iter { body }` around segments."""

    tag = "pfor"
    var: str
    iter: Expr
    body: tuple


@frozen
class PIf(IRNode):
    """`if cond { then } else { orelse }` around segments."""

    tag = "pif"
    cond: Expr
    then: tuple
    orelse: tuple


@frozen
class PBreak(IRNode):
    """`break`: leaves the innermost prompt loop."""

    tag = "pbreak"


# ---------------------------------------------------------------- router payloads
# What a router knows about each expert: a rule (rules routers), example
# texts or a description (embedding routers; classify routers use descriptions).


@frozen
class Payload(IRNode):
    """What routes an input to one expert."""


@frozen
class Matches(Payload):
    """`matches r"..."` (rules)."""

    tag = "matches"
    pattern: str  # a Python regex, searched in the input


@frozen
class Contains(Payload):
    """`contains ["...", ...]` (rules)."""

    tag = "contains"
    words: tuple[str, ...]  # any of them, case-insensitive


@frozen
class Description(Payload):
    """A description of the expert (embedding, classify)."""

    tag = "description"
    text: str


@frozen
class Examples(Payload):
    """Example inputs of the expert (embedding)."""

    tag = "examples"
    texts: tuple[str, ...]


IR_TYPES = {
    cls.__name__: cls
    for cls in (
        Lit,
        Var,
        Attr,
        Index,
        ListExpr,
        Call,
        BinOp,
        UnaryOp,
        Assign,
        If,
        For,
        Emit,
        While,
        Return,
        PSeg,
        PFor,
        PIf,
        PBreak,
        Matches,
        Contains,
        Description,
        Examples,
    )
}


def ir_form(node: IRNode) -> tuple:
    """The compact positional form `(tag, field, ...)`, nested. Node ids hash
    it: it is the form graph format 1 stored, so ids did not change when the
    IR became classes."""
    return (node.tag, *(_form(getattr(node, name)) for name in field_names(type(node))))


def _form(v):
    if isinstance(v, IRNode):
        return ir_form(v)
    if isinstance(v, (tuple, list)):
        return tuple(_form(x) for x in v)
    return v


# ---------------------------------------------------------------- effects


@frozen
class Effects:
    """What a top-level statement does to the flow's variables (graph edges)."""

    reads: frozenset  # variables read before this statement assigns them
    writes: frozenset  # variables it assigns (anywhere inside)
    calls: frozenset  # names it calls (queries, builtins, functions)


def effects(stmt: Stmt) -> Effects:
    nodes = list(walk(stmt, IRNode))
    writes = frozenset(n.name for n in nodes if isinstance(n, Assign))
    calls = frozenset(n.func for n in nodes if isinstance(n, Call))
    reads: set = set()
    _free_reads((stmt,), frozenset(), reads)
    return Effects(frozenset(reads), writes, calls)


def _free_reads(block: tuple, bound: frozenset, out: set) -> None:
    """Variables a block reads that no earlier statement of it (or an
    enclosing `for`) bound. Expressions bind nothing, so within one the
    generic walk finds the reads; only statements need scopes: an
    assignment binds for the statements after it, a loop variable inside its
    body, and a branch's bindings stay in the branch."""
    for s in block:
        for e in children(s, Expr):
            out.update(v.name for v in walk(e, Expr) if isinstance(v, Var) and v.name not in bound)
        inner = (bound | {s.var}) if isinstance(s, For) else bound
        for body in _blocks(s):
            _free_reads(body, inner, out)
        if isinstance(s, Assign):
            bound = bound | {s.name}


def _blocks(s: Stmt) -> list[tuple]:
    """The statement blocks directly inside `s` (a branch, a loop body)."""
    out = []
    for f in fields(s):
        v = getattr(s, f.name)
        if isinstance(v, tuple) and v and all(isinstance(x, Stmt) for x in v):
            out.append(v)
    return out
