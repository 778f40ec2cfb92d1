"""Graph node specs: immutable, hashable, serialisable.

Each spec declares its inputs (`deps()`), so the graph's edges follow from the
nodes and equal sub-expressions (the same merge used twice) collapse into one
node with one deterministic id. Torch-free.
"""

from __future__ import annotations

import hashlib
import json

from ..constraints.kinds import CONSTRAINT_KINDS
from ..frozen import field, fields, frozen, is_dataclass
from .ir import IR_TYPES, Assign, Emit, IRNode, Payload, Stmt, ir_form


@frozen
class Spec:
    """A graph node (a @frozen class: lmlang.frozen, no dataclasses on the
    check path)."""

    kind = "spec"

    def deps(self) -> tuple[str, ...]:
        return ()

    def label(self) -> str:
        return self.kind


@frozen
class InputSpec(Spec):
    """A program input (`input name: type = default`)."""

    kind = "input"
    name: str
    type: str
    default: object = None  # JSON-able default or None
    has_default: bool = False

    def label(self) -> str:
        return f"input {self.name}: {self.type}"


@frozen
class ModelSpec(Spec):
    """A base model source: the bundled default, a hub id, a folder or a .gguf."""

    kind = "model"
    source: str  # "default" | hub id | absolute path
    loc: str = ""

    def label(self) -> str:
        # A local path shows its last two parts: labels must not depend on
        # where the checkout lives.
        src = self.source
        if src.startswith("/"):
            src = "/".join(src.rstrip("/").split("/")[-2:])
        return f"model {src if len(src) < 40 else '...' + src[-37:]}"


@frozen
class ServerSpec(Spec):
    """A model behind an OpenAI-compatible server (`server "URL" { ... }`)."""

    kind = "server"
    url: str
    options: tuple  # sorted (key, value): model, api_key_env (a NAME), concurrency, ...
    loc: str = ""

    def label(self) -> str:
        model = dict(self.options).get("model")
        return f"server {self.url}" + (f" ({model})" if model else "")


@frozen
class VllmSpec(Spec):
    """A local model served by a vLLM that lmlang starts (`vllm "SPEC" { ... }`)."""

    kind = "vllm"
    source: str  # as ModelSpec.source: "default" | hub id | absolute path
    options: tuple  # sorted (key, value): tensor_parallel, dtype, args, concurrency, ...
    loc: str = ""

    def label(self) -> str:
        src = self.source
        if src.startswith("/"):
            src = "/".join(src.rstrip("/").split("/")[-2:])
        return f"vllm {src if len(src) < 40 else '...' + src[-37:]}"


@frozen
class LoraSpec(Spec):
    """A LoRA adapter read from a PEFT folder."""

    kind = "lora"
    path: str
    loc: str = ""

    def label(self) -> str:
        return f"lora {self.path.rsplit('/', 1)[-1]}"


@frozen
class TrainSpec(Spec):
    """An adapter trained on a data file (cached by content); its method
    (dora, ia3, adalora) is the option `method`, absent for plain lora."""

    kind = "train"
    base: str  # node id
    data: str  # absolute path ("" when the rows are a data set's)
    options: tuple  # sorted (key, value)
    loc: str = ""
    # a data set's name (the runtime makes its rows: selected, generated) and how
    # it is made, files as absolute paths (lifecycle.data.recipe); unset for a file
    dataset: str = field(default="", metadata={"omit_unset": True})
    recipe: tuple = field(default=(), metadata={"omit_unset": True})

    def deps(self):
        old = dict(self.options).get("compatible_with")  # MUSCLE: the old model, a node id
        return (self.base,) if old is None else (self.base, old)

    def label(self) -> str:
        method = dict(self.options).get("method", "lora")
        return f"train {method} on {self.dataset or self.data.rsplit('/', 1)[-1]}"


@frozen
class AdapterMergeSpec(Spec):
    """Adapters merged into one adapter."""

    kind = "adapter_merge"
    method: str
    adapters: tuple  # ((node id, params tuple), ...)
    options: tuple
    loc: str = ""

    def deps(self):
        return tuple(a for a, _ in self.adapters)

    def label(self) -> str:
        return f"merge {self.method} (adapters)"


@frozen
class ApplySpec(Spec):
    """Adapters applied to a base at scales, not merged (switchable per query)."""

    kind = "apply"
    base: str
    adapters: tuple  # ((adapter node id, scale), ...)

    def deps(self):
        return (self.base, *(a for a, _ in self.adapters))

    def label(self) -> str:
        return "apply " + " + ".join(f"{a.split(':')[1] if a.count(':') == 2 else a}*{s:g}" for a, s in self.adapters)


@frozen
class MergeSpec(Spec):
    """Full models merged into one (streamed tensor by tensor)."""

    kind = "merge"
    method: str
    base: str | None
    models: tuple  # ((node id, params tuple), ...)
    options: tuple
    loc: str = ""

    def deps(self):
        return ((self.base,) if self.base else ()) + tuple(m for m, _ in self.models)

    def label(self) -> str:
        return f"merge {self.method}"


@frozen
class FuseSpec(Spec):
    """Models combined at decoding time (their next-token distributions)."""

    kind = "fuse"
    mode: str
    members: tuple  # ((node id, weight), ...); fuse dynamic: weight 1.0 (each step picks them)
    options: tuple
    loc: str = ""
    # fuse dynamic's anchor and target model node ids; left out of the JSON
    # and the id while unset, so other fusions keep both
    anchor: str | None = field(default=None, metadata={"omit_unset": True})
    target: str | None = field(default=None, metadata={"omit_unset": True})

    def deps(self):
        return tuple(dict.fromkeys([*(m for m, _ in self.members), *(x for x in (self.anchor, self.target) if x)]))

    def label(self) -> str:
        return f"fuse {self.mode}"


@frozen
class CompressSpec(Spec):
    """An adapter compressed (ComPEFT: sparse factors, one scale per module):
    a PEFT folder like any adapter's (merge/compress.py)."""

    kind = "compress"
    adapter: str  # node id of the adapter compressed
    options: tuple  # sorted (key, value): density, quantize, alpha
    loc: str = ""

    def deps(self):
        return (self.adapter,)

    def label(self) -> str:
        opts = dict(self.options)
        return f"compress {opts.get('quantize', 'ternary')} density {opts.get('density', 0.1):g}"


@frozen
class TwinSpec(Spec):
    """Twin-Merging: a core merged once plus each expert's exclusive part,
    mixed per row by a router's weights (merge/twin.py)."""

    kind = "twin"
    base: str  # node id
    models: tuple  # node ids of the `base + adapter` experts, in order
    router: str  # "by_example" (the experts' training prompts) or a declared router's name
    examples: tuple  # per expert, the router's examples ((text, ...), ...); () for by_example
    options: tuple  # sorted (key, value): core, density, rank, examples, top_k, temperature, encoder
    loc: str = ""

    def deps(self):
        return (self.base, *self.models)

    def label(self) -> str:
        return f"merge twin (router {self.router})"


@frozen
class AtlasSpec(Spec):
    """aTLAS: coefficients per block and expert learned on labelled rows,
    the merged model folder cached by content (merge/atlas.py)."""

    kind = "atlas"
    base: str  # node id
    models: tuple  # node ids of the `base + adapter` experts, in order
    data: str  # absolute path of the rows ("" when they are a data set's)
    options: tuple  # sorted (key, value): granularity, steps, lr, ...
    loc: str = ""
    dataset: str = ""  # a data set's name, its rows made at run time
    recipe: tuple = ()  # how that data set is made (lifecycle.data.recipe)

    def deps(self):
        return (self.base, *self.models)

    def label(self) -> str:
        return f"merge atlas ({dict(self.options).get('granularity', 'block')})"


@frozen
class RouterSpec(Spec):
    """Picks an expert model per input row."""

    kind = "router"
    name: str
    mode: str  # embedding | classify | rules | pool
    experts: tuple[tuple[str, Payload], ...]  # ((expert node id, what routes to it), ...)
    default: str | None
    using: str | None
    options: tuple
    loc: str = ""
    # route pool: the glob of adapter folders (absolute) and the base model's
    # node id; left out of the JSON and the id while unset (other routers)
    pool: str | None = field(default=None, metadata={"omit_unset": True})
    base: str | None = field(default=None, metadata={"omit_unset": True})

    def deps(self):
        ids = [e for e, _ in self.experts]
        if self.default:
            ids.append(self.default)
        if self.using:
            ids.append(self.using)
        if self.base:
            ids.append(self.base)
        return tuple(dict.fromkeys(ids))

    def label(self) -> str:
        return f"router {self.name} ({self.mode})"


@frozen
class QuerySpec(Spec):
    """A prompt with holes, their constraints and a decoder, on a model or a router."""

    kind = "query"
    name: str
    params: tuple  # ((name, type), ...)
    model: str  # node id of a model-like node or a router
    router_args: tuple  # the router's arguments (ir.Expr), evaluated per row
    chat: bool
    segments: tuple  # ((role|None, ((part kind, value), ...)), ...)
    holes: tuple
    constraints: tuple  # ((hole, Constraint|None), ...)
    decoder: tuple  # (name, ((key, value), ...))
    distribution: tuple | None  # (hole, options) | None
    loc: str = ""
    # second wave: ("leak", ((option, value), ...)) (guards.py); left out of the
    # JSON and the id while unset, so queries without a guard keep both
    guard: tuple | None = field(default=None, metadata={"omit_unset": True})

    def deps(self):
        return (self.model,)

    def label(self) -> str:
        return f"query {self.name}"


@frozen
class StepSpec(Spec):
    """One top-level flow statement (`ir.Stmt`); steps run in `index` order."""

    kind = "step"
    index: int
    stmt: Stmt
    reads: tuple  # variable names it reads
    writes: tuple  # variable names it assigns
    calls: tuple  # query node ids it may call
    loc: str = ""

    def deps(self):
        return self.calls

    def label(self) -> str:
        if isinstance(self.stmt, Assign):
            return f"{self.stmt.name} = ..."
        if isinstance(self.stmt, Emit):
            return "emit " + ", ".join(n for n, _ in self.stmt.items)
        return self.stmt.tag


@frozen
class DefSpec(Spec):
    """A flow function (`def NAME(params) { ... }`, issue 15): its body as
    statement IR, run by the flow interpreter when a step calls it."""

    kind = "def"
    name: str
    params: tuple  # parameter names
    body: tuple  # ir.Stmt, ...
    calls: tuple  # node ids of the queries and functions it may call
    loc: str = ""

    def deps(self):
        return self.calls

    def label(self) -> str:
        return f"def {self.name}({', '.join(self.params)})"


SPEC_TYPES = {
    cls.__name__: cls
    for cls in (
        InputSpec,
        ModelSpec,
        ServerSpec,
        VllmSpec,
        LoraSpec,
        TrainSpec,
        AdapterMergeSpec,
        ApplySpec,
        MergeSpec,
        FuseSpec,
        CompressSpec,
        TwinSpec,
        AtlasSpec,
        RouterSpec,
        QuerySpec,
        StepSpec,
        DefSpec,
    )
}
CONSTRAINT_TYPES = {k.cls.__name__: k.cls for k in CONSTRAINT_KINDS.values()}


# ---------------------------------------------------------------- ids and JSON

_JSON_TYPES = {**SPEC_TYPES, **CONSTRAINT_TYPES, **IR_TYPES}
assert len(_JSON_TYPES) == len(SPEC_TYPES) + len(CONSTRAINT_TYPES) + len(IR_TYPES), "a $type name is used twice"


def _set_fields(v) -> list[str]:
    """A node's field names, less those marked `omit_unset` that hold their
    default (fields added later, so older graphs keep their JSON and their ids)."""
    return [name for name, omit, default in _fields_of(type(v)) if not (omit and getattr(v, name) == default)]


_FIELDS_OF: dict[type, tuple] = {}


def _fields_of(cls: type) -> tuple:
    """(name, omit_unset, default) of each field of a node class, read from
    its field table once per class (node ids hash every node of every spec)."""
    table = _FIELDS_OF.get(cls)
    if table is None:
        table = tuple((f.name, bool(f.metadata.get("omit_unset")), f.default) for f in fields(cls))
        _FIELDS_OF[cls] = table
    return table


def to_jsonable(v):
    """Specs, constraints and IR nodes as `{"$type": class name, field: ...}`."""
    if is_dataclass(v):
        return {"$type": type(v).__name__, **{name: to_jsonable(getattr(v, name)) for name in _set_fields(v)}}
    if isinstance(v, (tuple, list)):
        return [to_jsonable(x) for x in v]
    return v


def from_jsonable(v):
    if isinstance(v, dict) and "$type" in v:
        cls = _JSON_TYPES.get(v["$type"])
        if cls is None:
            raise ValueError(f"unknown node type {v['$type']!r}")
        return cls(**{k: from_jsonable(x) for k, x in v.items() if k != "$type"})
    if isinstance(v, list):
        return tuple(from_jsonable(x) for x in v)
    return v


def _hash_form(v):
    """What a node id hashes: the JSON form, with IR nodes in their compact
    positional form (`ir.ir_form`)."""
    if v.__class__ in _PLAIN:  # most values: the leaves
        return v
    if isinstance(v, IRNode):
        return _hash_form(ir_form(v))
    if is_dataclass(v):
        return {"$type": type(v).__name__, **{name: _hash_form(getattr(v, name)) for name in _set_fields(v)}}
    if isinstance(v, (tuple, list)):
        return [_hash_form(x) for x in v]
    return v


_PLAIN = frozenset((str, int, float, bool, type(None)))


def content_digest(spec: Spec, root: str | None = None) -> str:
    """A hash of the spec's content, locations excluded, so the same
    expression written twice is one node. Paths under `root` (the script's
    folder) hash relative to it, so ids do not depend on where a checkout lives."""
    content = {k: v for k, v in _hash_form(spec).items() if k != "loc"}
    text = json.dumps(content, sort_keys=True, default=str)
    if root:
        text = text.replace(root.rstrip("/") + "/", "$ROOT/")
    return hashlib.sha256(text.encode()).hexdigest()[:10]
