"""Checked program -> networkx.DiGraph of immutable node specs.

Names are aliases, not nodes: `model tuned = base + polite` and an inline
`base + polite` in a router become one ApplySpec node. Flow statements are
lowered to a small expression IR (tuples) so the graph alone is enough to run
the program and round-trips through JSON. Torch-free.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import networkx as nx

from . import ast as A
from .checker import CheckedProgram, QueryInfo, _key_name, _plain_value, resolve_path
from .graph import (AdapterMergeSpec, ApplySpec, FuseSpec, InputSpec, LoraSpec, MergeSpec, ModelSpec, QuerySpec,
                    RouterSpec, Spec, StepSpec, TrainSpec, from_jsonable, node_id, to_jsonable)

GRAPH_FORMAT_VERSION = 1


@dataclass
class Compiled:
    graph: nx.DiGraph
    names: dict            # declared name -> node id (models, adapters, routers, queries, inputs)
    steps: list            # step node ids in execution order

    def spec(self, nid: str) -> Spec:
        return self.graph.nodes[nid]["spec"]


class Compiler:
    def __init__(self, checked: CheckedProgram):
        self.c = checked
        self.g = nx.DiGraph()
        self.names: dict[str, str] = {}
        self._building: set[str] = set()

    def add(self, spec: Spec, hint: str = "", name: str | None = None) -> str:
        nid = node_id(spec, hint)
        if nid not in self.g:
            self.g.add_node(nid, spec=spec, names=[])
            for dep in spec.deps():
                self.g.add_edge(dep, nid)
        if name and name not in self.g.nodes[nid]["names"]:
            self.g.nodes[nid]["names"].append(name)
        return nid

    def loc(self, node) -> str:
        return node.span.location() if getattr(node, "span", None) else ""

    # ------------------------------------------------------------ models
    def model(self, e) -> str:
        if isinstance(e, A.DefaultModel):
            return self.add(ModelSpec("default", self.loc(e)), "default")
        if isinstance(e, A.PathModel):
            p = e.path
            local = resolve_path(p, e, self.c.base_dir)
            src = str(local) if (local.exists() or p.endswith(".gguf") or p.startswith((".", "/", "~"))) else p
            return self.add(ModelSpec(src, self.loc(e)), _short(p))
        if isinstance(e, A.ModelRef):
            return self.named_model(e.name)
        if isinstance(e, A.Adapted):
            base = self.model(e.base)
            adapters = tuple((self.adapter(a.adapter), float(a.scale)) for a in e.adapters)
            return self.add(ApplySpec(base, adapters))
        if isinstance(e, A.MergeExpr):
            base, models, options = None, [], []
            for entry in e.options.entries:
                key = _key_name(entry.key)
                if key == "base":
                    base = self.model(entry.value)
                elif key == "models":
                    for me in entry.value.entries:
                        models.append((self.model(me.key), _params(me.value)))
                else:
                    options.append((key or str(getattr(entry.key, "value", "")), _option_value(entry.value)))
            return self.add(MergeSpec(e.method, base, tuple(models), tuple(sorted(options)), self.loc(e)), e.method)
        if isinstance(e, A.FuseExpr):
            members = tuple((self.model(m.key), float(_plain_value(m.value))) for m in e.members.entries)
            opts = tuple(sorted((kw.name, _plain_value(kw.value)) for kw in e.options))
            return self.add(FuseSpec(e.mode, members, opts, self.loc(e)), e.mode)
        raise TypeError(f"not a model expression: {e!r}")  # the checker rejects these

    def named_model(self, name: str) -> str:
        if name in self.names:
            return self.names[name]
        decl = self.c.models[name]
        nid = self.model(decl.expr)
        self.names[name] = nid
        self.g.nodes[nid]["names"].append(name)
        return nid

    def adapter(self, name: str) -> str:
        if name in self.names:
            return self.names[name]
        d = self.c.adapters[name]
        src = d.source
        if isinstance(src, A.LoraSource):
            nid = self.add(LoraSpec(str(resolve_path(src.path, src, self.c.base_dir)), self.loc(src)), name)
        elif isinstance(src, A.TrainSource):
            base, opts = None, []
            for e in src.options.entries:
                key = _key_name(e.key)
                if key == "base":
                    base = self.model(e.value)
                else:
                    opts.append((key, _plain_value(e.value)))
            if base is None:
                base = self.model(A.DefaultModel(span=src.span))
            data = str(resolve_path(src.data, src, self.c.base_dir))
            nid = self.add(TrainSpec(base, data, tuple(sorted((k, _freeze(v)) for k, v in opts)), self.loc(src)), name)
        else:
            adapters, opts = [], []
            for e in src.options.entries:
                key = _key_name(e.key)
                if key == "models":
                    for me in e.value.entries:
                        adapters.append((self.adapter(_key_name(me.key)), _params(me.value)))
                else:
                    opts.append((key, _option_value(e.value)))
            nid = self.add(AdapterMergeSpec(src.method, tuple(adapters), tuple(sorted(opts)), self.loc(src)), name)
        self.names[name] = nid
        if name not in self.g.nodes[nid]["names"]:
            self.g.nodes[nid]["names"].append(name)
        return nid

    def router(self, name: str) -> str:
        if name in self.names:
            return self.names[name]
        r = self.c.routers[name]
        experts, default = [], None
        for e in r.experts.entries:
            if r.kind == "rules" and _key_name(e.key) == "default":
                default = self.model(e.value)
                continue
            experts.append((self.model(e.key), _router_payload(e.value)))
        using = self.model(r.using) if r.using is not None else None
        opts = tuple(sorted((kw.name, kw.value.name if isinstance(kw.value, A.ModelRef) else _plain_value(kw.value)) for kw in r.options))
        nid = self.add(RouterSpec(name, r.kind, tuple(experts), default, using, opts, self.loc(r)), name, name)
        self.names[name] = nid
        return nid

    # ------------------------------------------------------------ queries and flow
    def query(self, info: QueryInfo) -> str:
        if info.name in self.names:
            return self.names[info.name]
        q = info.decl
        if isinstance(info.using, A.RouterCall):
            model = self.router(info.using.router)
            router_args = tuple(expr_ir(a) for a in info.using.args)
        else:
            model = self.model(info.using)
            router_args = ()
        segments = tuple((s.role, tuple(_part(p) for p in s.parts)) for s in q.segments)
        params = tuple((p.name, p.type.describe() if p.type else "any") for p in q.params)
        nid = self.add(QuerySpec(q.name, params, model, router_args, info.chat, segments, info.holes,
                                 tuple((h, info.constraints[h]) for h in info.holes), info.decoder,
                                 info.distribution, self.loc(q)), q.name, q.name)
        self.names[q.name] = nid
        return nid

    def compile(self) -> Compiled:
        for name, d in self.c.inputs.items():
            default = _plain_value(d.default) if d.default is not None else None
            self.names[name] = self.add(InputSpec(name, d.type.describe(), _freeze(default), d.default is not None), name, name)
        for name in self.c.models:
            self.named_model(name)
        for name in self.c.adapters:
            self.adapter(name)
        for name in self.c.routers:
            self.router(name)
        for info in self.c.queries.values():
            self.query(info)
        steps = []
        if self.c.flow is not None:
            defined: dict[str, str] = {}
            for i, stmt in enumerate(self.c.flow.body):
                ir = stmt_ir(stmt)
                reads, writes, calls = _effects(ir)
                call_ids = tuple(self.names[c] for c in sorted(calls) if c in self.c.queries)
                spec = StepSpec(i, ir, tuple(sorted(reads)), tuple(sorted(writes)), call_ids, self.loc(stmt))
                nid = self.add(spec, str(i))
                for r in reads:
                    if r in defined:
                        self.g.add_edge(defined[r], nid)
                    elif r in self.c.inputs:
                        self.g.add_edge(self.names[r], nid)
                for w in writes:
                    defined[w] = nid
                steps.append(nid)
        return Compiled(self.g, dict(self.names), steps)


# ---------------------------------------------------------------- expression IR

def expr_ir(e) -> tuple:
    if isinstance(e, A.Lit):
        return ("lit", e.value)
    if isinstance(e, A.Var):
        return ("var", e.name)
    if isinstance(e, A.Attr):
        return ("attr", expr_ir(e.obj), e.name)
    if isinstance(e, A.Index):
        return ("index", expr_ir(e.obj), expr_ir(e.index))
    if isinstance(e, A.ListExpr):
        return ("list", tuple(expr_ir(x) for x in e.items))
    if isinstance(e, A.Call):
        return ("call", e.func, tuple(expr_ir(a) for a in e.args), tuple((k, expr_ir(v)) for k, v in e.kwargs), e.span.location())
    if isinstance(e, A.BinOp):
        return ("bin", e.op, expr_ir(e.left), expr_ir(e.right))
    if isinstance(e, A.UnaryOp):
        return ("un", e.op, expr_ir(e.operand))
    raise TypeError(f"not an expression: {e!r}")


def stmt_ir(s) -> tuple:
    if isinstance(s, A.Assign):
        return ("assign", s.name, expr_ir(s.value))
    if isinstance(s, A.If):
        return ("if", expr_ir(s.cond), tuple(stmt_ir(x) for x in s.then), tuple(stmt_ir(x) for x in s.orelse))
    if isinstance(s, A.For):
        return ("for", s.var, expr_ir(s.iter), tuple(stmt_ir(x) for x in s.body))
    if isinstance(s, A.Emit):
        return ("emit", tuple((i.name, expr_ir(i.value)) for i in s.items))
    raise TypeError(f"not a statement: {s!r}")


def _effects(ir) -> tuple[set, set, set]:
    reads, writes, calls = set(), set(), set()

    def ex(e, bound):
        tag = e[0]
        if tag == "var":
            if e[1] not in bound:
                reads.add(e[1])
        elif tag == "attr":
            ex(e[1], bound)
        elif tag == "index":
            ex(e[1], bound); ex(e[2], bound)
        elif tag == "list":
            for x in e[1]:
                ex(x, bound)
        elif tag == "call":
            calls.add(e[1])
            for a in e[2]:
                ex(a, bound)
            for _, v in e[3]:
                ex(v, bound)
        elif tag == "bin":
            ex(e[2], bound); ex(e[3], bound)
        elif tag == "un":
            ex(e[2], bound)

    def st(s, bound):
        tag = s[0]
        if tag == "assign":
            ex(s[2], bound)
            writes.add(s[1])
            bound = bound | {s[1]}
        elif tag == "if":
            ex(s[1], bound)
            b = bound
            for x in s[2]:
                b = st(x, b)
            b2 = bound
            for x in s[3]:
                b2 = st(x, b2)
        elif tag == "for":
            ex(s[2], bound)
            b = bound | {s[1]}
            for x in s[3]:
                b = st(x, b)
        elif tag == "emit":
            for _, v in s[1]:
                ex(v, bound)
        return bound

    st(ir, frozenset())
    return reads, writes, calls


def _part(p) -> tuple:
    if isinstance(p, A.Text):
        return ("text", p.text)
    if isinstance(p, A.Interp):
        return ("interp", p.path)
    return ("hole", p.name)


def _freeze(v):
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


def _params(value) -> tuple:
    if isinstance(value, A.Block):
        return tuple(sorted((_key_name(e.key), _freeze(_plain_value(e.value))) for e in value.entries))
    return (("weight", float(_plain_value(value))),)


def _option_value(v):
    if isinstance(v, A.ModelRef):
        return v.name
    return _freeze(_plain_value(v))


def _router_payload(v) -> tuple:
    if isinstance(v, A.MatchesValue):
        return ("matches", v.pattern)
    if isinstance(v, A.ContainsValue):
        return ("contains", _freeze(_plain_value(v.words)))
    pv = _plain_value(v)
    if isinstance(pv, str):
        return ("description", pv)
    return ("examples", _freeze(pv))


def _short(p: str) -> str:
    return p.rstrip("/").rsplit("/", 1)[-1][:24]


# ---------------------------------------------------------------- export

def graph_to_json(compiled: Compiled) -> dict:
    g = compiled.graph
    return {
        "version": GRAPH_FORMAT_VERSION,
        "nodes": [{"id": n, "names": list(g.nodes[n]["names"]), "spec": to_jsonable(g.nodes[n]["spec"])} for n in sorted(g.nodes)],
        "edges": sorted([list(e) for e in g.edges]),
        "names": dict(sorted(compiled.names.items())),
        "steps": list(compiled.steps),
    }


def graph_from_json(data: dict | str) -> Compiled:
    if isinstance(data, str):
        data = json.loads(data)
    if data.get("version") != GRAPH_FORMAT_VERSION:
        raise ValueError(f"unsupported graph version {data.get('version')!r}")
    g = nx.DiGraph()
    for n in data["nodes"]:
        g.add_node(n["id"], spec=from_jsonable(n["spec"]), names=list(n["names"]))
    for a, b in data["edges"]:
        g.add_edge(a, b)
    return Compiled(g, dict(data["names"]), list(data["steps"]))


def graph_to_dot(compiled: Compiled) -> str:
    g = compiled.graph
    lines = ["digraph lmlang {", "  rankdir=LR;", "  node [shape=box, fontname=\"Helvetica\"];"]
    shapes = {"model": "cylinder", "query": "note", "step": "ellipse", "router": "diamond", "input": "invhouse"}
    for n in sorted(g.nodes):
        spec = g.nodes[n]["spec"]
        names = g.nodes[n]["names"]
        label = spec.label() + (f"\\n[{', '.join(names)}]" if names and spec.kind not in ("query", "input", "router") else "")
        label = label.replace('"', '\\"')
        lines.append(f'  "{n}" [label="{label}", shape={shapes.get(spec.kind, "box")}];')
    for a, b in sorted(g.edges):
        lines.append(f'  "{a}" -> "{b}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def graph_to_mermaid(compiled: Compiled) -> str:
    g = compiled.graph
    ids = {n: f"n{i}" for i, n in enumerate(sorted(g.nodes))}
    lines = ["flowchart LR"]
    for n in sorted(g.nodes):
        spec = g.nodes[n]["spec"]
        names = g.nodes[n]["names"]
        label = spec.label() + (f" [{', '.join(names)}]" if names and spec.kind not in ("query", "input", "router") else "")
        label = label.replace('"', "'")
        lines.append(f'  {ids[n]}["{label}"]')
    for a, b in sorted(g.edges):
        lines.append(f"  {ids[a]} --> {ids[b]}")
    return "\n".join(lines) + "\n"


def compile_checked(checked: CheckedProgram) -> Compiled:
    return Compiler(checked).compile()
