"""Checked program -> networkx.DiGraph of immutable node specs.

Names are aliases, not nodes: `model tuned = base + polite` and an inline
`base + polite` in a router become one ApplySpec node. A node's id is its kind,
a readable hint and a hash of its content (source locations excluded), so equal
sub-expressions collapse into one node and ids are stable across runs. Flow
statements are lowered to a small expression IR (tuples) so the graph alone is
enough to run the program and round-trips through JSON. Torch-free.

The graph is held as plain dicts and turned into a `networkx.DiGraph` on first
use of `Compiled.graph`: `lmlang check` compiles every script without paying
for the networkx import.
"""
from __future__ import annotations

import json

from . import ast as A
from .checker import CheckedProgram, QueryInfo
from .values import key_name as _key_name, key_text as _key_text, merge_members, plain_value as _plain_value
from .graph import (AdapterMergeSpec, ApplySpec, FuseSpec, InputSpec, LoraSpec, MergeSpec, ModelSpec, QuerySpec,
                    RouterSpec, Spec, StepSpec, TrainSpec, content_digest, from_jsonable, to_jsonable)

GRAPH_FORMAT_VERSION = 1


class Compiled:
    """The compiled program: node specs by id, their declared names, edges,
    the declared-name -> node table and the flow steps in order."""

    def __init__(self, nodes: dict, node_names: dict, edges, names: dict, steps: list):
        self.nodes: dict[str, Spec] = dict(nodes)
        self.node_names: dict[str, list[str]] = {n: list(node_names.get(n, ())) for n in self.nodes}
        self.edges: list[tuple[str, str]] = sorted(set(map(tuple, edges)))
        self.names: dict[str, str] = dict(names)
        self.steps: list[str] = list(steps)
        self._graph = None

    def spec(self, nid: str) -> Spec:
        return self.nodes[nid]

    @property
    def graph(self):
        """The networkx view (built once; each node has `spec` and `names`)."""
        if self._graph is None:
            import networkx as nx

            g = nx.DiGraph()
            for nid in sorted(self.nodes):
                g.add_node(nid, spec=self.nodes[nid], names=self.node_names[nid])
            g.add_edges_from(self.edges)
            self._graph = g
        return self._graph

    def display_name(self, nid: str) -> str:
        """How a node reads in labels: its first declared name, else its label."""
        names = self.node_names.get(nid)
        return names[0] if names else node_label(self, nid)

    def __eq__(self, other) -> bool:
        return (isinstance(other, Compiled) and self.nodes == other.nodes and self.node_names == other.node_names
                and self.edges == other.edges and self.names == other.names and self.steps == other.steps)

    __hash__ = None


class Compiler:
    def __init__(self, checked: CheckedProgram):
        self.c = checked
        self.nodes: dict[str, Spec] = {}
        self.node_names: dict[str, list[str]] = {}
        self.edges: set[tuple[str, str]] = set()
        self.by_content: dict[str, str] = {}
        self.names: dict[str, str] = {}

    def add(self, spec: Spec, hint: str = "", name: str | None = None) -> str:
        digest = content_digest(spec, str(self.c.base_dir.resolve()))
        nid = self.by_content.get(digest)
        if nid is None:
            nid = f"{spec.kind}:{_clean_hint(hint) + ':' if hint else ''}{digest}"
            self.by_content[digest] = nid
            self.nodes[nid] = spec
            self.node_names[nid] = []
            for dep in spec.deps():
                self.edges.add((dep, nid))
        if name:
            self.name(nid, name)
        return nid

    def name(self, nid: str, name: str) -> None:
        if name not in self.node_names[nid]:
            self.node_names[nid].append(name)

    def loc(self, node) -> str:
        return node.span.location() if getattr(node, "span", None) else ""

    # ------------------------------------------------------------ models
    def model(self, e) -> str:
        if isinstance(e, A.DefaultModel):
            return self.add(ModelSpec("default", self.loc(e)), "default")
        if isinstance(e, A.PathModel):
            p = e.path
            local = self.c.path_for(p, e)
            src = str(local) if (_exists(local) or p.endswith(".gguf") or p.startswith((".", "/", "~"))) else p
            return self.add(ModelSpec(src, self.loc(e)), _short(p))
        if isinstance(e, A.ModelRef):
            return self.named_model(e.name)
        if isinstance(e, A.Adapted):
            base = self.model(e.base)
            adapters = tuple((self.adapter(a.adapter), float(a.scale)) for a in e.adapters)
            return self.add(ApplySpec(base, adapters), "+".join(a.adapter for a in e.adapters))
        if isinstance(e, A.MergeExpr):
            base, models, options = None, [], []
            for entry in e.options.entries:
                key = _key_name(entry.key)
                if key == "base":
                    base = self.model(entry.value)
                elif key == "models":
                    for key_node, value in merge_members(entry.value):
                        models.append((self.model(key_node), _params(value)))
                else:
                    options.append((_key_text(entry.key), _option_value(entry.value)))   # `density:` or `"density":`
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
        self.name(nid, name)
        return nid

    def adapter(self, name: str) -> str:
        if name in self.names:
            return self.names[name]
        d = self.c.adapters[name]
        src = d.source
        if isinstance(src, A.LoraSource):
            nid = self.add(LoraSpec(str(self.c.path_for(src.path, src)), self.loc(src)), name)
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
            data = str(self.c.path_for(src.data, src))
            nid = self.add(TrainSpec(base, data, tuple(sorted((k, _freeze(v)) for k, v in opts)), self.loc(src)), name)
        else:
            adapters, opts = [], []
            for e in src.options.entries:
                key = _key_name(e.key)
                if key == "models":
                    for key_node, value in merge_members(e.value):
                        adapters.append((self.adapter(_key_name(key_node)), _params(value)))
                else:
                    opts.append((_key_text(e.key), _option_value(e.value)))
            nid = self.add(AdapterMergeSpec(src.method, tuple(adapters), tuple(sorted(opts)), self.loc(src)), name)
        self.names[name] = nid
        self.name(nid, name)
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
                        self.edges.add((defined[r], nid))
                    elif r in self.c.inputs:
                        self.edges.add((self.names[r], nid))
                for w in writes:
                    defined[w] = nid
                steps.append(nid)
        return Compiled(self.nodes, self.node_names, self.edges, self.names, steps)


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
    if value is None:
        return ()
    if isinstance(value, A.Block):
        return tuple(sorted((_key_text(e.key), _freeze(_plain_value(e.value))) for e in value.entries))
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


def _exists(path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _short(p: str) -> str:
    return p.rstrip("/").rsplit("/", 1)[-1][:24]


# ---------------------------------------------------------------- labels

def node_label(compiled: Compiled, nid: str) -> str:
    """A one-line description of a node, naming its inputs by their
    declared names (`apply base + polite*0.8`, `merge ties(base; tuned, math)`)."""
    spec = compiled.spec(nid)

    def name(ref: str) -> str:
        text = compiled.display_name(ref)
        return f"({text})" if " " in text and not compiled.node_names.get(ref) else text

    if isinstance(spec, ApplySpec):
        return f"{name(spec.base)} + " + " + ".join(f"{name(a)}{'' if s == 1 else f'*{s:g}'}" for a, s in spec.adapters)
    if isinstance(spec, MergeSpec):
        models = ", ".join(f"{name(m)}{_weight_text(p)}" for m, p in spec.models)
        base = f"base: {name(spec.base)}; " if spec.base else ""
        return f"merge {spec.method}({base}{models})"
    if isinstance(spec, AdapterMergeSpec):
        return f"merge {spec.method}(" + ", ".join(f"{name(a)}{_weight_text(p)}" for a, p in spec.adapters) + ")"
    if isinstance(spec, FuseSpec):
        text = ""
        for i, (m, w) in enumerate(spec.members):
            sign = (" - " if i else "-") if w < 0 else (" + " if i else "")
            text += f"{sign}{'' if abs(w) == 1 else f'{abs(w):g}*'}{name(m)}"
        return f"fuse {spec.mode}: {text}"
    if isinstance(spec, TrainSpec):
        return f"train lora on {spec.data.rsplit('/', 1)[-1]} (base: {name(spec.base)})"
    if isinstance(spec, RouterSpec):
        return f"router {spec.name} ({spec.mode}: " + ", ".join(name(e) for e, _ in spec.experts) + \
            (f"; default {name(spec.default)}" if spec.default else "") + ")"
    if isinstance(spec, QuerySpec):
        params = ", ".join(p for p, _ in spec.params)
        holes = ", ".join(spec.holes)
        return f"query {spec.name}({params}) -> [{holes}] using {name(spec.model)}"
    if isinstance(spec, StepSpec):
        return stmt_text(spec.stmt)
    return spec.label()


def _weight_text(params: tuple) -> str:
    d = dict(params)
    if not d:
        return ""
    if set(d) == {"weight"}:
        return f":{d['weight']:g}" if isinstance(d["weight"], (int, float)) else ""
    return ":{" + ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else str(k) for k, v in d.items()) + "}"


def expr_text(e) -> str:
    """Expression IR back to short source text (for labels)."""
    tag = e[0]
    if tag == "lit":
        return json.dumps(e[1], ensure_ascii=False) if isinstance(e[1], str) else ("true" if e[1] is True else "false" if e[1] is False else str(e[1]))
    if tag == "var":
        return e[1]
    if tag == "attr":
        return f"{expr_text(e[1])}.{e[2]}"
    if tag == "index":
        return f"{expr_text(e[1])}[{expr_text(e[2])}]"
    if tag == "list":
        return "[" + ", ".join(expr_text(x) for x in e[1]) + "]"
    if tag == "call":
        args = [expr_text(a) for a in e[2]] + [f"{k}={expr_text(v)}" for k, v in e[3]]
        return f"{e[1]}({', '.join(args)})"
    if tag == "bin":
        return f"{expr_text(e[2])} {e[1]} {expr_text(e[3])}"
    if tag == "un":
        return f"{e[1]} {expr_text(e[2])}" if e[1] == "not" else f"-{expr_text(e[2])}"
    return "?"


def stmt_text(s, limit: int = 60) -> str:
    tag = s[0]
    if tag == "assign":
        text = f"{s[1]} = {expr_text(s[2])}"
    elif tag == "if":
        text = f"if {expr_text(s[1])}" + (" / else" if s[3] else "")
    elif tag == "for":
        text = f"for {s[1]} in {expr_text(s[2])}"
    elif tag == "emit":
        text = "emit " + ", ".join(n for n, _ in s[1])
    else:
        text = tag
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---------------------------------------------------------------- export

def graph_to_json(compiled: Compiled) -> dict:
    return {
        "version": GRAPH_FORMAT_VERSION,
        "nodes": [{"id": n, "names": list(compiled.node_names[n]), "label": node_label(compiled, n),
                   "spec": to_jsonable(compiled.nodes[n])} for n in sorted(compiled.nodes)],
        "edges": [list(e) for e in compiled.edges],
        "names": dict(sorted(compiled.names.items())),
        "steps": list(compiled.steps),
    }


def graph_from_json(data: dict | str) -> Compiled:
    """The inverse of graph_to_json (labels are derived, so not read back)."""
    if isinstance(data, str):
        data = json.loads(data)
    if not isinstance(data, dict) or data.get("version") != GRAPH_FORMAT_VERSION:
        raise ValueError(f"unsupported graph version {data.get('version') if isinstance(data, dict) else None!r}")
    nodes = {n["id"]: from_jsonable(n["spec"]) for n in data["nodes"]}
    names = {n["id"]: list(n["names"]) for n in data["nodes"]}
    return Compiled(nodes, names, [tuple(e) for e in data["edges"]], dict(data["names"]), list(data["steps"]))


_DOT_SHAPES = {"model": "cylinder", "query": "note", "step": "ellipse", "router": "diamond", "input": "invhouse",
               "lora": "folder", "train": "folder", "adapter_merge": "folder"}


def _display_label(compiled: Compiled, nid: str) -> str:
    spec = compiled.spec(nid)
    label = node_label(compiled, nid)
    names = compiled.node_names[nid]
    if names and spec.kind not in ("query", "input", "router"):
        label = f"{', '.join(names)} = {label}"
    return label


def graph_to_dot(compiled: Compiled) -> str:
    lines = ["digraph lmlang {", "  rankdir=LR;", '  node [shape=box, fontname="Helvetica"];']
    for n in sorted(compiled.nodes):
        spec = compiled.spec(n)
        label = _display_label(compiled, n).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        lines.append(f'  "{n}" [label="{label}", shape={_DOT_SHAPES.get(spec.kind, "box")}];')
    for a, b in compiled.edges:
        lines.append(f'  "{a}" -> "{b}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def graph_to_mermaid(compiled: Compiled) -> str:
    ids = {n: f"n{i}" for i, n in enumerate(sorted(compiled.nodes))}
    lines = ["flowchart LR"]
    for n in sorted(compiled.nodes):
        label = _display_label(compiled, n).replace('"', "#quot;").replace("\n", " ")
        lines.append(f'  {ids[n]}["{label}"]')
    for a, b in compiled.edges:
        lines.append(f"  {ids[a]} --> {ids[b]}")
    return "\n".join(lines) + "\n"


def compile_checked(checked: CheckedProgram) -> Compiled:
    return Compiler(checked).compile()


def _clean_hint(hint: str) -> str:
    """Hints go into node ids: keep them short and free of ':' (the separator)."""
    return "".join(ch if ch.isalnum() or ch in "_-.+" else "_" for ch in hint)[:32]
