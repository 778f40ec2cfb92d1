"""lmlang's abstract syntax tree: frozen dataclasses, each with the span the
parser set. Lark's Tree/Token never appear here.

Grouped by declaration family: inputs, model expressions, adapters, routers,
queries (prompt segments, constraints, decoders), flow statements and
expressions.
"""

from __future__ import annotations

from typing import Union

from .source import Span
from .frozen import children, field, frozen, walk


@frozen
class Node:
    span: Span = field(compare=False, repr=False, kw_only=True)

    def children(self):
        """The nodes directly below this one, in source order."""
        return children(self, Node)

    def walk(self):
        """This node and every node below it, depth first, in source order."""
        return walk(self, Node)


@frozen
class Named(Node):
    """A node that introduces a name; `name_span` covers just the name, so a
    diagnostic about the name underlines the name, not the whole block."""

    name_span: Span | None = field(default=None, compare=False, repr=False, kw_only=True)

    @property
    def at(self) -> Span:
        return self.name_span or self.span


# ------------------------------------------------------------------ types


@frozen
class TypeRef(Node):
    """`str`, `int`, `float`, `bool`, `json`, `list[str]`."""

    name: str
    arg: "TypeRef | None" = None

    def describe(self) -> str:
        return f"{self.name}[{self.arg.describe()}]" if self.arg else self.name


# ------------------------------------------------------------------ values (blocks, options)


@frozen
class Literal(Node):
    value: Union[str, int, float, bool]


@frozen
class ListValue(Node):
    items: tuple["Value", ...]


@frozen
class Entry(Node):
    key: "ModelExpr | Literal"  # an option name reads as ModelRef(name)
    value: "Value"


@frozen
class Block(Node):
    entries: tuple[Entry, ...]


@frozen
class MatchesValue(Node):
    pattern: str


@frozen
class ContainsValue(Node):
    words: ListValue


@frozen
class KwArg(Named):
    name: str
    value: "Value"


# ------------------------------------------------------------------ model expressions


@frozen
class DefaultModel(Node):
    pass


@frozen
class PathModel(Node):
    """A hub id, a local folder or a .gguf file (decided at resolution)."""

    path: str


@frozen
class ModelRef(Node):
    name: str


@frozen
class RouterCall(Node):
    """`pick(text)`: a router applied to arguments; only valid after `using`."""

    router: str
    args: tuple["Expr", ...]


@frozen
class ScaledAdapter(Node):
    adapter: str
    scale: float = 1.0


@frozen
class Adapted(Node):
    """`base + polite * 0.8 + math`: adapters applied (not merged) in order."""

    base: "ModelExpr"
    adapters: tuple[ScaledAdapter, ...]


@frozen
class MergeExpr(Node):
    method: str
    options: Block


@frozen
class FuseExpr(Node):
    mode: str  # "linear" | "contrastive" | "dynamic"
    options: tuple[KwArg, ...]
    members: Block
    # `fuse dynamic { a, b }`: members listed without weights (each entry's
    # value is then its key: no weight was written)
    listed: bool = False


@frozen
class ServerModel(Node):
    """`server "URL" { model: "...", ... }`: a model behind an OpenAI-compatible
    server. Only a declaration starts with it (like a source string)."""

    url: str
    options: Block


@frozen
class VllmModel(Node):
    """`vllm "SPEC" { ... }` or `vllm default`: a local model that lmlang serves
    with vLLM (started, health-checked, reused and stopped by lmlang)."""

    source: str  # "default", a hub id, a folder or a .gguf
    options: Block


ModelExpr = Union[DefaultModel, PathModel, ModelRef, RouterCall, Adapted, MergeExpr, FuseExpr, ServerModel, VllmModel]
Value = Union[Literal, ListValue, Block, MatchesValue, ContainsValue, ModelExpr]


# ------------------------------------------------------------------ declarations


@frozen
class UseDecl(Node):
    path: str


@frozen
class InputDecl(Named):
    name: str
    type: TypeRef
    default: "Value | None" = None


@frozen
class ModelDecl(Named):
    name: str
    expr: ModelExpr


@frozen
class LoraSource(Node):
    path: str


@frozen
class TrainSource(Node):
    data: "DataRef"  # a file or a declared data set's name
    options: Block
    method: str = "lora"  # a name of models.options.TRAIN_METHODS (the checker says if it is not)


@frozen
class AdapterMerge(Node):
    method: str
    options: Block


@frozen
class AdapterCompress(Node):
    """`compress ADAPTER { density, quantize, alpha }` (ComPEFT, issue #17)."""

    adapter: str
    options: Block
    adapter_span: Span | None = field(default=None, compare=False, repr=False, kw_only=True)


@frozen
class AdapterDecl(Named):
    name: str
    source: Union[LoraSource, TrainSource, AdapterMerge, AdapterCompress]


@frozen
class RouterDecl(Named):
    name: str
    kind: str  # embedding | classify | rules | pool
    options: tuple[KwArg, ...]
    using: "ModelExpr | None"
    experts: Block  # a pool's block holds its options instead
    source: "Literal | None" = None  # `route pool "adapters/*"`: the glob of adapter folders


# ------------------------------------------------------------------ lifecycle: data, eval, export


@frozen
class DataRef(Node):
    """A data argument: a file (`"rows.jsonl"`) or a declared data set's name."""

    path: str | None = None
    name: str | None = None

    def describe(self) -> str:
        return self.name if self.name is not None else repr(self.path)


@frozen
class DataFile(Node):
    """`data NAME = "rows.jsonl"` (or .csv)."""

    path: str


@frozen
class DataSelect(Node):
    """`data NAME = select K from POOL like TARGET by gzip|embedding` (ZIP-FIT)."""

    k: int
    pool: DataRef
    target: DataRef
    method: str
    method_span: Span | None = field(default=None, compare=False, repr=False, kw_only=True)


@frozen
class DataGenerate(Node):
    """`data NAME = generate using MODEL from DATA { task, instruction, n, seed, where ... }`
    (Bonito, SELF-GUIDE): the model writes each unlabeled row's `output`
    under the where clauses, through an internal query (lifecycle/generate.py)."""

    model: "ModelExpr"
    source: DataRef
    options: Block
    wheres: tuple["Where", ...]


@frozen
class DataDecl(Named):
    """A data set. `source` is one of the data-source nodes (a file, a
    selection; a generation where the grammar writes one): every reader of a
    data set dispatches on the source's type, never on the declaration."""

    name: str
    source: Node


@frozen
class EvalDecl(Named):
    """`eval NAME = METRIC(QUERY, DATA, expected: FIELD)`."""

    name: str
    metric: str
    query: str
    data: DataRef
    keyword: str  # `expected` (any other word is a check error)
    expected: str
    metric_span: Span | None = field(default=None, compare=False, repr=False, kw_only=True)
    query_span: Span | None = field(default=None, compare=False, repr=False, kw_only=True)
    keyword_span: Span | None = field(default=None, compare=False, repr=False, kw_only=True)
    expected_span: Span | None = field(default=None, compare=False, repr=False, kw_only=True)


@frozen
class ExportDecl(Node):
    """`export NAME to "dir"`: an adapter as a PEFT folder, a model as an HF folder."""

    target: str
    path: str
    target_span: Span | None = field(default=None, compare=False, repr=False, kw_only=True)


# ------------------------------------------------------------------ queries


@frozen
class Text(Node):
    text: str


@frozen
class Interp(Node):
    """`{name}` or `{name.field}`: a lookup, never Python formatting."""

    path: tuple[str, ...]


@frozen
class Hole(Node):
    name: str


@frozen
class ToolCall(Node):
    """`{call("name", args...)}` in a segment: the tool's result, as prompt
    text, when decoding reaches it (lmlang/tools.py). `{obs = call(...)}`
    also names the result (`bind`) for the prompt's later conditions."""

    name: str
    args: tuple["Expr", ...]
    bind: str | None = None
    name_span: Span | None = field(default=None, compare=False, repr=False, kw_only=True)


@frozen
class Segment(Node):
    role: str | None  # system | user | assistant | None (plain text)
    parts: tuple[Union[Text, Interp, Hole, ToolCall], ...]


# grown prompts (issue 15): control flow around segments ------------


@frozen
class PromptFor(Named):
    """`for NAME in EXPR { ... }` around segments; a hole inside is a list in the result."""

    var: str
    iter: "Expr"
    body: tuple["PromptStmt", ...]


@frozen
class PromptIf(Node):
    cond: "Expr"
    then: tuple["PromptStmt", ...]
    orelse: tuple["PromptStmt", ...] = ()


@frozen
class PromptBreak(Node):
    """`break`: leaves the innermost prompt loop."""


PromptStmt = Union[Segment, PromptFor, PromptIf, PromptBreak]


@frozen
class PromptBlock(Segment):
    """`assistant { ... }` (or, in a plain prompt, a bare `for`/`if`): one
    message whose text grows as decoding runs. A Segment with no parts of its
    own, so code that reads a query's static segments passes it by."""

    body: tuple[PromptStmt, ...] = ()

    def segments(self):
        """Every segment inside, at any depth, in source order."""
        return [n for n in walk(self, Node) if isinstance(n, Segment) and not isinstance(n, PromptBlock)]


@frozen
class Param(Named):
    name: str
    type: TypeRef | None


@frozen
class Decoder(Node):
    name: str  # argmax | sample | beam | best_of | vote
    options: tuple[KwArg, ...] = ()


# constraints ------------------------------------------------------


@frozen
class CIn(Node):
    hole: str
    options: ListValue


@frozen
class CMatches(Node):
    hole: str
    pattern: str


@frozen
class CIs(Node):
    hole: str
    type: str  # int | float | bool
    range: "JRange | None" = None  # `is int(0..10)`: inclusive bounds


@frozen
class CJson(Node):
    hole: str
    inline: "JsonType | None" = None
    file: str | None = None
    options: tuple["KwArg", ...] = ()  # `json(formats: "annotate")`


@frozen
class CGrammar(Node):
    hole: str
    file: str


@frozen
class CStop(Node):
    hole: str
    text: str
    include: bool  # stops at (True) / stops before (False)


@frozen
class CLen(Node):
    fn: str  # tokens | len
    hole: str
    op: str  # <= < == >= > (checker accepts <= and <)
    n: int


# ---- second wave (issue #15): `or`, parentheses, `not in`, `in NAME` ---------


@frozen
class CNotIn(Node):
    hole: str
    options: ListValue


@frozen
class CInName(Node):
    """`x in labels`: the options are a `list[str]` parameter's value."""

    hole: str
    param: str


@frozen
class COr(Node):
    """`a or b or (c and d)`: each branch a conjunction of one hole's
    constraints. `hole` is the first branch's (the checker compares the rest)."""

    hole: str
    branches: tuple[tuple["Cond", ...], ...]


Cond = Union[CIn, CMatches, CIs, CJson, CGrammar, CStop, CLen, CNotIn, CInName, COr]


@frozen
class Where(Node):
    conds: tuple[Cond, ...]


@frozen
class Distribution(Node):
    hole: str
    options: ListValue


# inline JSON types -------------------------------------------------


@frozen
class JRange(Node):
    lo: float | None
    hi: float | None


@frozen
class JScalar(Node):
    name: str  # str int float bool null any
    range: JRange | None = None


@frozen
class JArray(Node):
    item: "JsonType"
    range: JRange | None = None


@frozen
class JEnum(Node):
    options: tuple[str, ...]


@frozen
class JField(Node):
    name: str
    optional: bool
    type: "JsonType"


@frozen
class JObject(Node):
    fields: tuple[JField, ...]


JsonType = Union[JScalar, JArray, JEnum, JObject]


@frozen
class QueryDecl(Named):
    name: str
    params: tuple[Param, ...]
    using: ModelExpr | None
    decoder: Decoder | None
    segments: tuple[Segment, ...]
    wheres: tuple[Where, ...]
    distribution: Distribution | None
    guard: "Guard | None" = None  # second wave: `guard leak(...)`


@frozen
class Guard(Node):
    """`guard leak(max_overlap: 0.3, ngram: 4)` on a query (guards.py has the table)."""

    name: str
    options: tuple["KwArg", ...] = ()


# ------------------------------------------------------------------ flow


@frozen
class Lit(Node):
    value: Union[str, int, float, bool]


@frozen
class Var(Node):
    name: str


@frozen
class Attr(Node):
    obj: "Expr"
    name: str


@frozen
class Index(Node):
    obj: "Expr"
    index: "Expr"


@frozen
class ListExpr(Node):
    items: tuple["Expr", ...]


@frozen
class Call(Node):
    func: str
    args: tuple["Expr", ...]
    kwargs: tuple[tuple[str, "Expr"], ...] = ()


@frozen
class BinOp(Node):
    op: str  # + - * / % == != < <= > >= and or in
    left: "Expr"
    right: "Expr"


@frozen
class UnaryOp(Node):
    op: str  # not | -
    operand: "Expr"


Expr = Union[Lit, Var, Attr, Index, ListExpr, Call, BinOp, UnaryOp]


@frozen
class Assign(Named):
    name: str
    value: Expr


@frozen
class If(Node):
    cond: Expr
    then: tuple["Stmt", ...]
    orelse: tuple["Stmt", ...] = ()


@frozen
class For(Named):
    var: str
    iter: Expr
    body: tuple["Stmt", ...]


@frozen
class EmitItem(Named):
    name: str
    value: Expr


@frozen
class Emit(Node):
    items: tuple[EmitItem, ...]


@frozen
class While(Node):
    """`while COND max N { ... }`: at most N iterations (the bound is required)."""

    cond: Expr
    max: int
    body: tuple["Stmt", ...]


@frozen
class Return(Node):
    value: Expr


Stmt = Union[Assign, If, For, Emit, While, Return]


@frozen
class DefDecl(Named):
    """`def NAME(params) { ... return EXPR }`: a flow function (no recursion)."""

    name: str
    params: tuple[str, ...]
    body: tuple[Stmt, ...]


@frozen
class FlowDecl(Node):
    body: tuple[Stmt, ...]


Decl = Union[
    UseDecl, InputDecl, ModelDecl, AdapterDecl, RouterDecl, QueryDecl, FlowDecl, DefDecl, DataDecl, EvalDecl, ExportDecl
]


@frozen
class Program(Node):
    decls: tuple[Decl, ...]
    filename: str = "<string>"
