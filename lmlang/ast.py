"""lmlang's abstract syntax tree: frozen dataclasses, each with the span the
parser set. Lark's Tree/Token never appear here.

Grouped by declaration family: inputs, model expressions, adapters, routers,
queries (prompt segments, constraints, decoders), flow statements and
expressions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from .source import Span


@dataclass(frozen=True)
class Node:
    span: Span = field(compare=False, repr=False, kw_only=True)


@dataclass(frozen=True)
class Named(Node):
    """A node that introduces a name; `name_span` covers just the name, so a
    diagnostic about the name underlines the name, not the whole block."""
    name_span: Span | None = field(default=None, compare=False, repr=False, kw_only=True)

    @property
    def at(self) -> Span:
        return self.name_span or self.span


# ------------------------------------------------------------------ types

@dataclass(frozen=True)
class TypeRef(Node):
    """`str`, `int`, `float`, `bool`, `json`, `list[str]`."""
    name: str
    arg: "TypeRef | None" = None

    def describe(self) -> str:
        return f"{self.name}[{self.arg.describe()}]" if self.arg else self.name


# ------------------------------------------------------------------ values (blocks, options)

@dataclass(frozen=True)
class Literal(Node):
    value: Union[str, int, float, bool]


@dataclass(frozen=True)
class ListValue(Node):
    items: tuple["Value", ...]


@dataclass(frozen=True)
class Entry(Node):
    key: "ModelExpr | Literal"   # an option name reads as ModelRef(name)
    value: "Value"


@dataclass(frozen=True)
class Block(Node):
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class MatchesValue(Node):
    pattern: str


@dataclass(frozen=True)
class ContainsValue(Node):
    words: ListValue


@dataclass(frozen=True)
class KwArg(Named):
    name: str
    value: "Value"


# ------------------------------------------------------------------ model expressions

@dataclass(frozen=True)
class DefaultModel(Node):
    pass


@dataclass(frozen=True)
class PathModel(Node):
    """A hub id, a local folder or a .gguf file (decided at resolution)."""
    path: str


@dataclass(frozen=True)
class ModelRef(Node):
    name: str


@dataclass(frozen=True)
class RouterCall(Node):
    """`pick(text)`: a router applied to arguments; only valid after `using`."""
    router: str
    args: tuple["Expr", ...]


@dataclass(frozen=True)
class ScaledAdapter(Node):
    adapter: str
    scale: float = 1.0


@dataclass(frozen=True)
class Adapted(Node):
    """`base + polite * 0.8 + math`: adapters applied (not merged) in order."""
    base: "ModelExpr"
    adapters: tuple[ScaledAdapter, ...]


@dataclass(frozen=True)
class MergeExpr(Node):
    method: str
    options: Block


@dataclass(frozen=True)
class FuseExpr(Node):
    mode: str                      # "linear" | "contrastive"
    options: tuple[KwArg, ...]
    members: Block


ModelExpr = Union[DefaultModel, PathModel, ModelRef, RouterCall, Adapted, MergeExpr, FuseExpr]
Value = Union[Literal, ListValue, Block, MatchesValue, ContainsValue, ModelExpr]


# ------------------------------------------------------------------ declarations

@dataclass(frozen=True)
class UseDecl(Node):
    path: str


@dataclass(frozen=True)
class InputDecl(Named):
    name: str
    type: TypeRef
    default: "Value | None" = None


@dataclass(frozen=True)
class ModelDecl(Named):
    name: str
    expr: ModelExpr


@dataclass(frozen=True)
class LoraSource(Node):
    path: str


@dataclass(frozen=True)
class TrainSource(Node):
    data: str
    options: Block


@dataclass(frozen=True)
class AdapterMerge(Node):
    method: str
    options: Block


@dataclass(frozen=True)
class AdapterDecl(Named):
    name: str
    source: Union[LoraSource, TrainSource, AdapterMerge]


@dataclass(frozen=True)
class RouterDecl(Named):
    name: str
    kind: str                           # embedding | classify | rules
    options: tuple[KwArg, ...]
    using: "ModelExpr | None"
    experts: Block


# ------------------------------------------------------------------ queries

@dataclass(frozen=True)
class Text(Node):
    text: str


@dataclass(frozen=True)
class Interp(Node):
    """`{name}` or `{name.field}`: a lookup, never Python formatting."""
    path: tuple[str, ...]


@dataclass(frozen=True)
class Hole(Node):
    name: str


@dataclass(frozen=True)
class Segment(Node):
    role: str | None                    # system | user | assistant | None (plain text)
    parts: tuple[Union[Text, Interp, Hole], ...]


@dataclass(frozen=True)
class Param(Named):
    name: str
    type: TypeRef | None


@dataclass(frozen=True)
class Decoder(Node):
    name: str                           # argmax | sample | beam | best_of | vote
    options: tuple[KwArg, ...] = ()


# constraints ------------------------------------------------------

@dataclass(frozen=True)
class CIn(Node):
    hole: str
    options: ListValue


@dataclass(frozen=True)
class CMatches(Node):
    hole: str
    pattern: str


@dataclass(frozen=True)
class CIs(Node):
    hole: str
    type: str                           # int | float | bool
    range: "JRange | None" = None       # `is int(0..10)`: inclusive bounds


@dataclass(frozen=True)
class CJson(Node):
    hole: str
    inline: "JsonType | None" = None
    file: str | None = None


@dataclass(frozen=True)
class CGrammar(Node):
    hole: str
    file: str


@dataclass(frozen=True)
class CStop(Node):
    hole: str
    text: str
    include: bool                       # stops at (True) / stops before (False)


@dataclass(frozen=True)
class CLen(Node):
    fn: str                             # tokens | len
    hole: str
    op: str                             # <= < == >= > (checker accepts <= and <)
    n: int


Cond = Union[CIn, CMatches, CIs, CJson, CGrammar, CStop, CLen]


@dataclass(frozen=True)
class Where(Node):
    conds: tuple[Cond, ...]


@dataclass(frozen=True)
class Distribution(Node):
    hole: str
    options: ListValue


# inline JSON types -------------------------------------------------

@dataclass(frozen=True)
class JRange(Node):
    lo: float | None
    hi: float | None


@dataclass(frozen=True)
class JScalar(Node):
    name: str                           # str int float bool null any
    range: JRange | None = None


@dataclass(frozen=True)
class JArray(Node):
    item: "JsonType"
    range: JRange | None = None


@dataclass(frozen=True)
class JEnum(Node):
    options: tuple[str, ...]


@dataclass(frozen=True)
class JField(Node):
    name: str
    optional: bool
    type: "JsonType"


@dataclass(frozen=True)
class JObject(Node):
    fields: tuple[JField, ...]


JsonType = Union[JScalar, JArray, JEnum, JObject]


@dataclass(frozen=True)
class QueryDecl(Named):
    name: str
    params: tuple[Param, ...]
    using: ModelExpr | None
    decoder: Decoder | None
    segments: tuple[Segment, ...]
    wheres: tuple[Where, ...]
    distribution: Distribution | None


# ------------------------------------------------------------------ flow

@dataclass(frozen=True)
class Lit(Node):
    value: Union[str, int, float, bool]


@dataclass(frozen=True)
class Var(Node):
    name: str


@dataclass(frozen=True)
class Attr(Node):
    obj: "Expr"
    name: str


@dataclass(frozen=True)
class Index(Node):
    obj: "Expr"
    index: "Expr"


@dataclass(frozen=True)
class ListExpr(Node):
    items: tuple["Expr", ...]


@dataclass(frozen=True)
class Call(Node):
    func: str
    args: tuple["Expr", ...]
    kwargs: tuple[tuple[str, "Expr"], ...] = ()


@dataclass(frozen=True)
class BinOp(Node):
    op: str                             # + - * / % == != < <= > >= and or in
    left: "Expr"
    right: "Expr"


@dataclass(frozen=True)
class UnaryOp(Node):
    op: str                             # not | -
    operand: "Expr"


Expr = Union[Lit, Var, Attr, Index, ListExpr, Call, BinOp, UnaryOp]


@dataclass(frozen=True)
class Assign(Named):
    name: str
    value: Expr


@dataclass(frozen=True)
class If(Node):
    cond: Expr
    then: tuple["Stmt", ...]
    orelse: tuple["Stmt", ...] = ()


@dataclass(frozen=True)
class For(Named):
    var: str
    iter: Expr
    body: tuple["Stmt", ...]


@dataclass(frozen=True)
class EmitItem(Named):
    name: str
    value: Expr


@dataclass(frozen=True)
class Emit(Node):
    items: tuple[EmitItem, ...]


Stmt = Union[Assign, If, For, Emit]


@dataclass(frozen=True)
class FlowDecl(Node):
    body: tuple[Stmt, ...]


Decl = Union[UseDecl, InputDecl, ModelDecl, AdapterDecl, RouterDecl, QueryDecl, FlowDecl]


@dataclass(frozen=True)
class Program(Node):
    decls: tuple[Decl, ...]
    filename: str = "<string>"
