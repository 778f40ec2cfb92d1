"""Checked program -> the graph of immutable node specs (`lmlang.graph`).

This module is the lowering only; the specs, the IR, the `Compiled`
container and its exports live in `lmlang.graph`, which the runtime reads
without importing the front end.

Names are aliases, not nodes: `model tuned = base + polite` and an inline
`base + polite` in a router become one ApplySpec node. A node's id is its kind,
a readable hint and a hash of its content (source locations excluded), so equal
sub-expressions collapse into one node and ids are stable across runs. Flow
statements are lowered to the flow IR (`lmlang.graph.ir`) so the graph alone
is enough to run the program and round-trips through JSON. Torch-free.
"""

from __future__ import annotations

from . import ast as A
from .models import sources
from .router_kinds import ROUTER_KINDS
from .checker import CheckedProgram, QueryInfo
from .values import key_name as _key_name, key_text as _key_text, merge_members, plain_value as _plain_value
from .graph import (
    AdapterMergeSpec,
    ApplySpec,
    Compiled,
    FuseSpec,
    InputSpec,
    LoraSpec,
    MergeSpec,
    ModelSpec,
    QuerySpec,
    RouterSpec,
    Spec,
    StepSpec,
    TrainSpec,
    content_digest,
)
from .graph import ir as I
from .frozen import walk
from .graph.specs import AtlasSpec, CompressSpec, DefSpec, ServerSpec, TwinSpec, VllmSpec


class Compiler:
    def __init__(self, checked: CheckedProgram):
        self.c = checked
        self.nodes: dict[str, Spec] = {}
        self.node_names: dict[str, list[str]] = {}
        self.edges: set[tuple[str, str]] = set()
        self.by_content: dict[str, str] = {}
        self.names: dict[str, str] = {}
        self.root = str(checked.base_dir.resolve())  # paths under it hash relative to it (once: a realpath is syscalls)

    def add(self, spec: Spec, hint: str = "", name: str | None = None) -> str:
        digest = content_digest(spec, self.root)
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
            return self.add(ModelSpec(self.source_path(e.path, e), self.loc(e)), _short(e.path))
        if isinstance(e, A.ServerModel):
            opts = dict(_source_options(e.options))
            if "tokenizer" in opts:
                opts["tokenizer"] = self.source_path(opts["tokenizer"], e)
            return self.add(
                ServerSpec(e.url, tuple(sorted(opts.items())), self.loc(e)), opts.get("model") or _host(e.url)
            )
        if isinstance(e, A.VllmModel):
            return self.add(
                VllmSpec(self.source_path(e.source, e), _source_options(e.options), self.loc(e)), _short(e.source)
            )
        if isinstance(e, A.ModelRef):
            return self.named_model(e.name)
        base: str | None  # a merge's base may be absent
        if isinstance(e, A.Adapted):
            base = self.model(e.base)
            adapters = tuple((self.adapter(a.adapter), float(a.scale)) for a in e.adapters)
            return self.add(ApplySpec(base, adapters), "+".join(a.adapter for a in e.adapters))
        if isinstance(e, A.MergeExpr) and e.method in ("twin", "atlas"):
            return self._compose_merge(e)
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
                    options.append((_key_text(entry.key), _option_value(entry.value)))  # `density:` or `"density":`
            return self.add(MergeSpec(e.method, base, tuple(models), tuple(sorted(options)), self.loc(e)), e.method)
        if isinstance(e, A.FuseExpr):
            return self.fuse(e)
        raise TypeError(f"not a model expression: {e!r}")  # the checker rejects these

    def fuse(self, e: A.FuseExpr) -> str:
        if e.listed:  # fuse dynamic { a, b }: no weights written (each step picks them)
            members = tuple((self.model(m.key), 1.0) for m in e.members.entries)
        else:
            members = tuple((self.model(m.key), float(_plain_value(m.value))) for m in e.members.entries)
        roles = {kw.name: self.model(kw.value) for kw in e.options if kw.name in ("anchor", "target")}
        fuse_opts = tuple(sorted((kw.name, _plain_value(kw.value)) for kw in e.options if kw.name not in roles))
        spec = FuseSpec(e.mode, members, fuse_opts, self.loc(e), roles.get("anchor"), roles.get("target"))
        return self.add(spec, e.mode)

    def source_path(self, p: str, node) -> str:
        """A model source as the loader reads it: "default", a hub id, or an
        absolute path (relative paths resolve against the script's folder)."""
        if p == "default":
            return p
        local = self.c.path_for(p, node)
        return str(local) if (_exists(local) or sources.classify(p) in ("gguf", "folder")) else p

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
            base = None
            opts: list[tuple] = []
            for e in src.options.entries:
                key = _key_name(e.key)
                if key == "base":
                    base = self.model(e.value)
                elif key == "compatible_with":  # the old model: a node the trainer builds first
                    opts.append((key, self.model(e.value)))
                else:
                    opts.append((key, _plain_value(e.value)))
            if base is None:
                base = self.model(A.DefaultModel(span=src.span))
            if src.method != "lora":  # plain lora keeps the node ids it always had
                opts.append(("method", src.method))
            frozen_opts = tuple(sorted((k, _freeze(v)) for k, v in opts))
            nid = self.add(self._train_spec(src, base, frozen_opts), name)
        elif isinstance(src, A.AdapterCompress):
            options = tuple(sorted((_key_text(e.key), _option_value(e.value)) for e in src.options.entries))
            nid = self.add(CompressSpec(self.adapter(src.adapter), options, self.loc(src)), name)
        else:
            adapters, opts = [], []
            for e in src.options.entries:
                key = _key_name(e.key)
                if key == "models":
                    for key_node, value in merge_members(e.value):
                        member = _key_name(key_node)
                        assert member is not None  # the checker: an adapter merge's members are names
                        adapters.append((self.adapter(member), _params(value)))
                else:
                    opts.append((_key_text(e.key), _option_value(e.value)))
            nid = self.add(AdapterMergeSpec(src.method, tuple(adapters), tuple(sorted(opts)), self.loc(src)), name)
        self.names[name] = nid
        self.name(nid, name)
        return nid

    def _compose_merge(self, e: A.MergeExpr) -> str:
        """`merge twin` / `merge atlas`: the base, the `base + adapter`
        experts as nodes, the router's examples or the fitting data."""
        entries = {_key_name(x.key): x.value for x in e.options.entries}
        base = self.model(entries["base"])
        models = tuple(self.model(m) for m, _ in merge_members(entries["models"]))
        skip = ("base", "models", "router", "fit_on")
        options = tuple(
            sorted(
                (_key_text(x.key), _option_value(x.value)) for x in e.options.entries if _key_name(x.key) not in skip
            )
        )
        if e.method == "twin":
            router, examples = _twin_router(self.c, entries.get("router"), entries["models"])
            if router != "by_example" and "encoder" not in dict(options):
                # the declared router's encoder, unless the twin names one
                enc = next((kw.value for kw in self.c.routers[router].options if kw.name == "encoder"), None)
                if enc is not None:
                    options = tuple(sorted((*options, ("encoder", _option_value(enc)))))
            spec: Spec = TwinSpec(base, models, router, examples, options, self.loc(e))
        else:
            fit_on = entries["fit_on"]
            if isinstance(fit_on, A.ModelRef):  # a data set: a file's own path, else made at run time
                from .lifecycle.data import recipe

                rec = recipe(self.c, fit_on.name, lambda q: self.query(self.c.queries[q]))
                data, dataset, rec = (rec[1], "", ()) if rec[0] == "file" else ("", fit_on.name, rec)
            else:
                data, dataset, rec = str(self.c.path_for(_plain_value(fit_on), fit_on)), "", ()
            spec = AtlasSpec(base, models, data, options, self.loc(e), dataset=dataset, recipe=rec)
        return self.add(spec, e.method)

    def _train_spec(self, src: A.TrainSource, base: str, opts: tuple) -> TrainSpec:
        """A file, or a data set read straight from one, trains on that file
        (one node either way); any other data set's rows are made when the
        adapter is built, and its recipe keys the node."""
        from .lifecycle.data import recipe

        ref = src.data
        if ref.path is not None:
            return TrainSpec(base, str(self.c.path_for(ref.path, ref)), opts, self.loc(src))
        name = ref.name or ""
        rec = recipe(self.c, name, lambda q: self.query(self.c.queries[q]), model_node=self.named_model)
        if rec[0] == "file":
            return TrainSpec(base, rec[1], opts, self.loc(src))
        return TrainSpec(base, "", opts, self.loc(src), dataset=name, recipe=rec)

    def router(self, name: str) -> str:
        if name in self.names:
            return self.names[name]
        r = self.c.routers[name]
        if ROUTER_KINDS[r.kind].takes_source:
            return self.pool_router(name, r)
        experts, default = [], None
        for e in r.experts.entries:
            if ROUTER_KINDS[r.kind].has_default and _key_name(e.key) == "default":
                default = self.model(e.value)
                continue
            experts.append((self.model(e.key), _router_payload(e.value)))
        using = self.model(r.using) if r.using is not None else None
        opts = tuple(
            sorted(
                (kw.name, kw.value.name if isinstance(kw.value, A.ModelRef) else _plain_value(kw.value))
                for kw in r.options
            )
        )
        nid = self.add(RouterSpec(name, r.kind, tuple(experts), default, using, opts, self.loc(r)), name, name)
        self.names[name] = nid
        return nid

    def pool_router(self, name: str, r: A.RouterDecl) -> str:
        """`route pool "GLOB" { base: MODEL, option: value }`: the glob resolved
        against the script's folder (matched again when the program runs)."""
        assert r.source is not None  # the checker requires the glob
        base: str | None = None
        opts: list[tuple[str, object]] = []
        for e in r.experts.entries:
            key = _key_name(e.key) or ""
            if key == "base":
                base = self.model(e.value)
            elif key == "examples":
                examples = tuple(
                    sorted((_key_text(x.key), tuple(_plain_value(x.value))) for x in e.value.entries)  # type: ignore[union-attr]
                )
                opts.append((key, examples))
            else:
                opts.append((key, _option_value(e.value)))
        pattern = str(self.c.path_for(str(r.source.value), r.source))
        spec = RouterSpec(name, r.kind, (), None, None, tuple(sorted(opts)), self.loc(r), pattern, base)
        nid = self.add(spec, name, name)
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
        segments = tuple(
            (s.role, (_part(s),) if isinstance(s, A.PromptBlock) else tuple(_part(p) for p in s.parts))
            for s in q.segments
        )
        params = tuple((p.name, p.type.describe() if p.type else "any") for p in q.params)
        nid = self.add(
            QuerySpec(
                q.name,
                params,
                model,
                router_args,
                info.chat,
                segments,
                info.holes,
                tuple((h, info.constraints[h]) for h in info.holes),
                info.decoder,
                info.distribution,
                self.loc(q),
                info.guard,
            ),
            q.name,
            q.name,
        )
        self.names[q.name] = nid
        return nid

    def defs(self) -> None:
        """Flow functions as nodes, callees first (the checker refused cycles),
        each depending on the queries and functions it calls."""
        done: set = set()

        def add(name: str) -> None:
            if name in done:
                return
            done.add(name)
            d = self.c.defs[name]
            body = _block(d.body)
            called = sorted({n.func for s in body for n in walk(s, I.IRNode) if isinstance(n, I.Call)})
            for c in called:
                if c in self.c.defs:
                    add(c)
            calls = tuple(self.names[c] for c in called if c in self.c.queries or c in self.c.defs)
            self.names[name] = self.add(DefSpec(name, d.params, body, calls, self.loc(d)), name, name)

        for name in self.c.defs:
            add(name)

    def compile(self) -> Compiled:
        for name, d in self.c.inputs.items():
            default = _plain_value(d.default) if d.default is not None else None
            self.names[name] = self.add(
                InputSpec(name, d.type.describe(), _freeze(default), d.default is not None), name, name
            )
        for name in self.c.models:
            self.named_model(name)
        for name in self.c.adapters:
            self.adapter(name)
        for name in self.c.routers:
            self.router(name)
        for info in self.c.queries.values():
            self.query(info)
        self.defs()
        steps = []
        if self.c.flow is not None:
            defined: dict[str, str] = {}
            for i, stmt in enumerate(self.c.flow.body):
                ir = stmt_ir(stmt)
                fx = I.effects(ir)
                call_ids = tuple(self.names[c] for c in sorted(fx.calls) if c in self.c.queries or c in self.c.defs)
                spec = StepSpec(i, ir, tuple(sorted(fx.reads)), tuple(sorted(fx.writes)), call_ids, self.loc(stmt))
                nid = self.add(spec, str(i))
                for r in fx.reads:
                    if r in defined:
                        self.edges.add((defined[r], nid))
                    elif r in self.c.inputs:
                        self.edges.add((self.names[r], nid))
                for w in fx.writes:
                    defined[w] = nid
                steps.append(nid)
        return Compiled(self.nodes, self.node_names, self.edges, self.names, steps)


# ---------------------------------------------------------------- flow IR


def expr_ir(e: A.Expr) -> I.Expr:
    match e:
        case A.Lit(value):
            return I.Lit(value)
        case A.Var(name):
            return I.Var(name)
        case A.Attr(obj, name):
            return I.Attr(expr_ir(obj), name)
        case A.Index(obj, index):
            return I.Index(expr_ir(obj), expr_ir(index))
        case A.ListExpr(items):
            return I.ListExpr(tuple(expr_ir(x) for x in items))
        case A.Call(func, args, kwargs):
            return I.Call(
                func, tuple(expr_ir(a) for a in args), tuple((k, expr_ir(v)) for k, v in kwargs), e.span.location()
            )
        case A.BinOp(op, left, right):
            return I.BinOp(op, expr_ir(left), expr_ir(right))
        case A.UnaryOp(op, operand):
            return I.UnaryOp(op, expr_ir(operand))
    raise TypeError(f"not an expression: {e!r}")


def stmt_ir(s: A.Stmt) -> I.Stmt:
    match s:
        case A.Assign(name, value):
            return I.Assign(name, expr_ir(value))
        case A.If(cond, then, orelse):
            return I.If(expr_ir(cond), _block(then), _block(orelse))
        case A.For(var, it, body):
            return I.For(var, expr_ir(it), _block(body))
        case A.Emit(items):
            return I.Emit(tuple((i.name, expr_ir(i.value)) for i in items))
        case A.While(cond, bound, body):
            return I.While(expr_ir(cond), bound, _block(body))
        case A.Return(value):
            return I.Return(expr_ir(value))
    raise TypeError(f"not a statement: {s!r}")


def prompt_ir(body) -> tuple:
    """A grown prompt's statements (issue 15) as IR."""
    out: list = []
    for st in body:
        match st:
            case A.PromptFor(var, it, inner):
                out.append(I.PFor(var, expr_ir(it), prompt_ir(inner)))
            case A.PromptIf(cond, then, orelse):
                out.append(I.PIf(expr_ir(cond), prompt_ir(then), prompt_ir(orelse)))
            case A.PromptBreak():
                out.append(I.PBreak())
            case A.Segment():
                out.append(I.PSeg(tuple(_part(p) for p in st.parts)))
    return tuple(out)


def _block(stmts) -> tuple[I.Stmt, ...]:
    return tuple(stmt_ir(x) for x in stmts)


def _part(p) -> tuple:
    if isinstance(p, A.PromptBlock):
        return ("block", prompt_ir(p.body))
    if isinstance(p, A.ToolCall):
        call = I.Call(p.name, tuple(expr_ir(a) for a in p.args), (), p.span.location())
        return ("call", call) if p.bind is None else ("call_as", (call, p.bind))  # `{obs = call(...)}`
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


def _source_options(block: A.Block) -> tuple:
    """A served source's options as sorted (key, value) pairs, lists as tuples."""
    from .checker.models import source_options

    return tuple(sorted((k, _freeze(v)) for k, v in source_options(block).items()))


def _host(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def _option_value(v):
    if isinstance(v, A.ModelRef):
        return v.name
    return _freeze(_plain_value(v))


def _twin_router(c: CheckedProgram, value, members) -> tuple[str, tuple]:
    """A twin's router: ("by_example", ()) or (name, the declared embedding
    router's examples ordered as the twin's models; the checker matched them)."""
    if value is None or (value.name == "by_example" and value.name not in c.routers):
        return "by_example", ()
    router = c.routers[value.name]

    def key(e) -> str:
        if isinstance(e, A.Adapted):
            return " + ".join([key(e.base), *(a.adapter for a in e.adapters)])
        return e.name if isinstance(e, A.ModelRef) else "default"

    payloads = {key(x.key): _router_payload(x.value) for x in router.experts.entries}
    examples = []
    for m, _ in merge_members(members):
        p = payloads[key(m)]
        examples.append(tuple(p.texts) if isinstance(p, I.Examples) else (getattr(p, "text", ""),))
    return value.name, tuple(examples)


def _router_payload(v) -> I.Payload:
    if isinstance(v, A.MatchesValue):
        return I.Matches(v.pattern)
    if isinstance(v, A.ContainsValue):
        return I.Contains(_freeze(_plain_value(v.words)))
    pv = _plain_value(v)
    if isinstance(pv, str):
        return I.Description(pv)
    return I.Examples(_freeze(pv))


def _exists(path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _short(p: str) -> str:
    return p.rstrip("/").rsplit("/", 1)[-1][:24]


def compile_checked(checked: CheckedProgram) -> Compiled:
    return Compiler(checked).compile()


def _clean_hint(hint: str) -> str:
    """Hints go into node ids: keep them short and free of ':' (the separator)."""
    return "".join(ch if ch.isalnum() or ch in "_-.+" else "_" for ch in hint)[:32]
