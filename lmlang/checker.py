"""AST -> checked program. Collects every diagnostic (up to MAX_DIAGNOSTICS)
before stopping, so one `lmlang check` shows all that is wrong; diagnostics
are sorted by position.

What it owns: one namespace for declarations (imports merged in), reference
resolution and kinds, cycles, query shape (roles, holes, interpolations),
constraint lowering to lmlang.constraints.spec with contradiction checks,
decoder and merge option validation, flow scoping and light typing, file
references resolved relative to the script's folder. It never loads weights
and never imports torch.

The rules it enforces that are choices, not facts:

* Holes. Every hole is written by the model, so it sits in an assistant
  message or a plain prompt, and a query has at least one. A hole needs
  something that says where it ends (a shape, a stop string or a length
  bound) unless it is the last thing in an assistant message or in a plain
  prompt: there the model's end-of-turn token ends it. A where-constraint or
  distribution on a name that is not a hole of the prompt is an error.
* Interpolation. `{name}` and `{name.field}` look up the query's parameters
  only (a query is a function, also callable from the API without the flow):
  program inputs reach it as arguments. Fields starting with `_` are refused.
* `using` omitted: the first declared model, else the bundled default.
* Imports. `use "file.lm"` joins the file's declarations (and its imports')
  into one namespace; its flow does not run; a file reached along two paths
  counts once; paths inside it stay relative to its own folder.
* Anything a constraint backend cannot enforce while decoding is an error
  here (lmlang.constraints.check), never a silent post-hoc check.
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from .frozen import frozen
from pathlib import Path

from . import ast as A
from . import decoders as D
from . import types as T
from .builtins import BUILTINS
from .constraints import spec as C
from .errors import CheckError, Diagnostic, LmlangError
from .jsontypes import JsonTypeError, to_schema
from .source import NO_SPAN, Source, Span

MAX_DIAGNOSTICS = 50
MAX_CHECKED_DATA_BYTES = 16 * 1024 * 1024
ROLES = ("system", "user", "assistant")
ROUTER_KINDS = ("embedding", "classify", "rules")
FUSE_MODES = {"linear": {}, "contrastive": {"plausibility": (0.0, 1.0, 0.1)}}
EMBED_ENCODERS = ("minilm", "base")
TRAIN_OPTIONS = {
    "base": "model", "rank": int, "alpha": (int, float), "epochs": int, "lr": float, "target_modules": list,
    "seed": int, "batch_size": int, "max_length": int, "dropout": float,
}
RESERVED_FIELDS = ("distribution", "expert")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


class _Stop(Exception):
    """Raised when the diagnostic cap is reached."""


@frozen
class QueryInfo:
    decl: A.QueryDecl
    holes: tuple[str, ...]
    constraints: dict                     # hole -> Constraint | None
    decoder: tuple[str, tuple]            # (name, sorted (key, value) pairs with defaults)
    using: A.ModelExpr
    chat: bool
    distribution: tuple[str, tuple[str, ...]] | None
    result_type: T.T

    @property
    def name(self) -> str:
        return self.decl.name


@dataclass
class CheckedProgram:
    source: Source
    base_dir: Path
    program: A.Program
    inputs: dict = field(default_factory=dict)      # name -> InputDecl
    models: dict = field(default_factory=dict)      # name -> ModelDecl
    adapters: dict = field(default_factory=dict)    # name -> AdapterDecl
    routers: dict = field(default_factory=dict)     # name -> RouterDecl
    queries: dict = field(default_factory=dict)     # name -> QueryInfo
    flow: A.FlowDecl | None = None
    warnings: list = field(default_factory=list)
    sources: dict = field(default_factory=dict)     # filename -> Source (imports)
    functions: frozenset = frozenset()
    query_decls: dict = field(default_factory=dict)  # name -> QueryDecl (before checking)

    def path_for(self, text: str, node) -> Path:
        """A file reference resolved relative to the folder of the script
        that wrote it (imports keep their own folder)."""
        return resolve_path(text, node, self.base_dir, self.source.filename)


def resolve_path(text: str, node, base_dir: Path, main_file: str | None = None) -> Path:
    """The main script's references resolve against base_dir (its folder, or
    the base_dir given to compile()); an imported file's against its own folder."""
    p = Path(text).expanduser()
    if p.is_absolute():
        return p
    filename = getattr(getattr(node, "span", None), "filename", "")
    if filename and not filename.startswith("<") and filename != main_file:
        return (Path(filename).resolve().parent / p).resolve()
    return (base_dir / p).resolve()


class Checker:
    def __init__(self, source: Source, base_dir: Path, functions: frozenset = frozenset(), import_stack: tuple = (),
                 schemas: dict | None = None):
        self.schemas = dict(schemas or {})     # `is json "NAME"` -> a schema given through the API (pydantic)
        self.source = source
        self.base_dir = base_dir
        self.functions = functions
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []
        self.import_stack = import_stack
        self.out: CheckedProgram | None = None

    # ------------------------------------------------------------ reporting
    def error(self, message: str, node_or_span, hint: str = "", code: str = "") -> None:
        span = node_or_span if isinstance(node_or_span, Span) else getattr(node_or_span, "span", NO_SPAN)
        self.errors.append(Diagnostic(message, span, hint, "error", code))
        if len(self.errors) >= MAX_DIAGNOSTICS:
            raise _Stop()

    def warn(self, message: str, node_or_span, hint: str = "", code: str = "") -> None:
        span = node_or_span if isinstance(node_or_span, Span) else getattr(node_or_span, "span", NO_SPAN)
        self.warnings.append(Diagnostic(message, span, hint, "warning", code))

    def reported_hole(self, node) -> bool:
        return any(d.span == node.span for d in self.errors)

    def did_you_mean(self, name: str, candidates) -> str:
        close = difflib.get_close_matches(name, list(candidates), n=1)
        return f"did you mean '{close[0]}'?" if close else ""

    # ------------------------------------------------------------ entry
    def check(self, program: A.Program) -> CheckedProgram:
        out = CheckedProgram(self.source, self.base_dir, program, functions=self.functions)
        out.sources[self.source.filename] = self.source
        self.out = out
        try:
            decls = self.collect(program, out)
            self.check_inputs(out)
            self.check_models_and_adapters(out)
            self.check_routers(out)
            for q in [d for d in decls if isinstance(d, A.QueryDecl)]:
                info = self.check_query(q, out)
                if info is not None and out.query_decls.get(q.name) is q:
                    out.queries[q.name] = info
            if out.flow is not None:
                self.check_flow(out.flow, out)
            self.check_unused(out)
        except _Stop:
            pass
        main = self.source.filename
        order = lambda d: (d.span.filename != main, d.span.filename, d.span.line, d.span.col)  # noqa: E731
        self.errors.sort(key=order)
        self.warnings.sort(key=order)
        out.warnings = self.warnings
        if self.errors:
            if len(self.errors) >= MAX_DIAGNOSTICS:
                self.errors.append(Diagnostic(f"stopped after {MAX_DIAGNOSTICS} errors", NO_SPAN,
                                              "fix these and check again", "error", "too-many-errors"))
            err = CheckError(self.errors, self.warnings)
            err.source = self.source
            err.sources = dict(out.sources)
            raise err
        return out

    # ------------------------------------------------------------ declarations
    def collect(self, program: A.Program, out: CheckedProgram) -> list:
        decls: list = []
        for d in program.decls:
            if isinstance(d, A.UseDecl):
                decls.extend(self.load_import(d, out))
            else:
                decls.append(d)
        seen: dict[str, A.Node] = {}
        for d in decls:
            if isinstance(d, A.FlowDecl):
                if out.flow is not None:
                    self.error("a program has one flow", d, "merge the two flow blocks")
                elif getattr(d.span, "filename", None) == self.source.filename:
                    out.flow = d
                continue
            name = d.name
            if name in seen and seen[name].span == d.span:
                continue      # one file imported along two paths
            if name in seen:
                prev = seen[name].span
                self.error(f"'{name}' is already defined at line {prev.line}" + ("" if prev.filename == d.span.filename else f" of {prev.filename}"),
                           _name_span(d), "pick another name")
                continue
            seen[name] = d
            table = {A.InputDecl: out.inputs, A.ModelDecl: out.models, A.AdapterDecl: out.adapters,
                     A.RouterDecl: out.routers, A.QueryDecl: out.query_decls}[type(d)]
            table[name] = d
        return decls

    def load_import(self, use: A.UseDecl, out: CheckedProgram) -> list:
        from .parser import parse

        try:
            path = resolve_path(use.path, use, self.base_dir, self.source.filename)
        except (OSError, ValueError, RuntimeError):
            self.error(f"invalid path {use.path!r}", use)
            return []
        here = Path(self.source.filename).resolve()
        if path in self.import_stack or path == here:
            chain = " -> ".join(p.name for p in (*self.import_stack, here, path))
            self.error(f"import cycle: {chain}", use, "remove one of the `use` lines")
            return []
        if not _probe(path, "file"):
            self.error(f"imported file not found: {use.path}", use, f"looked for {path}")
            return []
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            self.error(f"cannot read {use.path}: {getattr(e, 'strerror', None) or e}", use)
            return []
        try:
            sub = parse(text, str(path))
            sub_checker = Checker(Source(text, str(path)), path.parent, self.functions,
                                  (*self.import_stack, here), self.schemas)
            sub_out = sub_checker.check(sub)
        except CheckError as e:
            for d in e.diagnostics:
                self.errors.append(d)
            out.sources.update(e.sources)
            if len(self.errors) >= MAX_DIAGNOSTICS:
                raise _Stop()
            return []
        except LmlangError as e:
            out.sources[str(path)] = Source(text, str(path))
            self.error(e.message, e.span, e.hint)
            return []
        out.sources.update(sub_out.sources)
        # Imported declarations (its own imports included) join this namespace;
        # an imported flow does not run. They are checked again here, with
        # file references still relative to their own file.
        return _imported_decls(sub_out)

    def check_inputs(self, out: CheckedProgram) -> None:
        for d in out.inputs.values():
            t = self.type_of_ref(d.type)
            if t is None:
                continue
            if d.default is not None:
                dv = _plain_value(d.default)
                if dv is _NOT_PLAIN or not T.assignable(T.of_python(dv), t):
                    self.error(f"default for input '{d.name}' is not {_a(t)}", d.default)

    def type_of_ref(self, ref: A.TypeRef | None) -> T.T | None:
        if ref is None:
            return T.ANY
        if ref.name == "list":
            inner = self.type_of_ref(ref.arg) if ref.arg else T.ANY
            return T.list_of(inner or T.ANY)
        if ref.name in T.SCALARS and ref.arg is None:
            return T.T(ref.name)
        self.error(f"unknown type '{ref.describe()}'", ref, self.did_you_mean(ref.name, (*T.SCALARS, "list")) or "types: str, int, float, bool, json, any, list[T]")
        return None

    # ------------------------------------------------------------ models, adapters
    def file_ref(self, kind: str, text: str, node, must: str = "file") -> Path | None:
        try:
            path = self.out.path_for(text, node)
        except (OSError, ValueError, RuntimeError):
            self.error(f"invalid {kind} path {text!r}", node)
            return None
        if not _probe(path, must):
            self.error(f"{kind} not found: {text}", node, f"paths resolve relative to the script's folder (looked for {path})")
            return None
        return path

    def check_models_and_adapters(self, out: CheckedProgram) -> None:
        for d in out.models.values():
            self.check_model_expr(d.expr, out, allow_router=False)
        for d in out.adapters.values():
            src = d.source
            if isinstance(src, A.LoraSource):
                path = self.file_ref("adapter", src.path, src, must="dir")
                if path is not None and not _probe(path / "adapter_config.json", "file"):
                    self.error(f"'{src.path}' is not a PEFT LoRA folder (no adapter_config.json)", src)
            elif isinstance(src, A.TrainSource):
                data = self.file_ref("training data", src.data, src)
                if data is not None:
                    self.check_train_data(data, src)
                self.check_train_options(src.options, out)
            elif isinstance(src, A.AdapterMerge):
                self.check_merge(src.method, src.options, out, over_adapters=True)
        self.check_cycles(out)

    def check_train_data(self, path: Path, src: A.TrainSource) -> None:
        """The rows' shape, with the same reader training uses (torch-free),
        so a bad row is a check error naming its line, before any training."""
        from .models import training

        try:
            if path.stat().st_size > MAX_CHECKED_DATA_BYTES:
                return                   # big data: checked row by row when training starts
            training.read_rows(path)
        except LmlangError as e:
            self.error(f"bad training data: {e.message}", src, e.hint or f"see the data format in {training.__name__}")
        except OSError as e:
            self.error(f"cannot read training data {src.data}: {e.strerror}", src)

    def check_train_options(self, block: A.Block, out: CheckedProgram) -> None:
        seen = set()
        for e in block.entries:
            key = _key_name(e.key)
            if key is None or key not in TRAIN_OPTIONS:
                self.error(f"unknown training option '{_key_text(e.key)}'", e.key,
                           self.did_you_mean(_key_text(e.key), TRAIN_OPTIONS) or "options: " + ", ".join(TRAIN_OPTIONS))
                continue
            if key in seen:
                self.error(f"option '{key}' given twice", e.key)
            seen.add(key)
            want = TRAIN_OPTIONS[key]
            if want == "model":
                self.check_model_expr(e.value, out, allow_router=False)
                continue
            v = _plain_value(e.value)
            types = want if isinstance(want, tuple) else (want,)
            if float in types and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if v is _NOT_PLAIN or isinstance(v, bool) or not isinstance(v, types):
                self.error(f"training option '{key}' must be {_type_words(types)}", e.value)
            elif isinstance(v, (int, float)) and v <= 0 and key not in ("seed", "dropout"):
                self.error(f"training option '{key}' must be positive", e.value)
            elif key == "dropout" and not (0 <= v < 1):
                self.error("dropout must be in [0, 1)", e.value)
            elif key == "lr" and not (0 < v < 1):
                self.error("training option 'lr' must be in (0, 1)", e.value, "a typical LoRA learning rate is 1e-4 to 1e-3")
            elif key == "max_length" and v < 8:
                self.error("training option 'max_length' must be at least 8", e.value)
            elif key == "target_modules" and (not v or not all(isinstance(m, str) and m for m in v)):
                self.error("target_modules takes a non-empty list of module names", e.value, 'for example ["q_proj", "v_proj"]')

    def check_merge(self, method: str, block: A.Block, out: CheckedProgram, over_adapters: bool = False) -> None:
        from .merge import options as merge_options

        if method not in merge_options.method_names():
            self.error(f"unknown merge method '{method}'", block, self.did_you_mean(method, merge_options.method_names())
                       or "methods: " + ", ".join(merge_options.method_names()))
            return
        global_opts: dict = {}
        per_model: list[tuple[object, dict]] = []
        has_models = False
        has_base = False
        n_models = 0
        seen: set[str] = set()
        for e in block.entries:
            key = _key_name(e.key)
            text = _key_text(e.key)
            if text in seen:
                self.error(f"merge option '{text}' given twice", e.key)
                continue
            seen.add(text)
            if key == "base":
                if over_adapters:
                    self.error("an adapter merge takes no base (adapters are deltas of one base)", e.key,
                               "list the adapters under models: { ... }")
                else:
                    has_base = True
                    self.check_model_expr(e.value, out, allow_router=False)
                continue
            if key == "models":
                has_models = True
                members = merge_members(e.value)
                if not members:
                    self.error("models: expects a map { model: weight, ... } or a list [model, ...]", e.value)
                    continue
                for key_node, value in members:
                    n_models += 1
                    if over_adapters:
                        name = _key_name(key_node)
                        if name not in out.adapters:
                            kind = _kind_of(name, out) if name else ""
                            self.error(f"'{_key_text(key_node)}' is {kind or 'not an adapter'}" + (", not an adapter" if kind else ""),
                                       key_node, self.did_you_mean(_key_text(key_node), out.adapters))
                    else:
                        self.check_model_expr(key_node, out, allow_router=False)
                    params = self.merge_model_params(value) if value is not None else {}
                    if params is not None:
                        per_model.append((key_node, params))
                continue
            v = _plain_value(e.value)
            if v is _NOT_PLAIN:
                if isinstance(e.value, A.ModelRef):
                    v = e.value.name       # bare words such as `compat: mergekit`
                else:
                    self.error(f"merge option '{text}' must be a number, string, bool or list", e.value)
                    continue
            global_opts[text] = (v, e)
        if not has_models:
            self.error(f"merge {method} needs models: {{ ... }}", block, "list the models with their weights")
            return
        compat = "lmlang"
        if "compat" in global_opts:
            v, e = global_opts.pop("compat")
            if v not in merge_options.MERGE_COMPAT:
                self.error(f"unknown merge compat {v!r}", e.value,
                           self.did_you_mean(str(v), merge_options.MERGE_COMPAT) or "compat: lmlang or mergekit")
            else:
                compat = v
        if "dtype" in global_opts:
            v, e = global_opts.pop("dtype")
            if v not in merge_options.OUTPUT_DTYPES:
                self.error(f"unknown merge dtype {v!r}", e.value, self.did_you_mean(str(v), merge_options.OUTPUT_DTYPES)
                           or "dtype: " + ", ".join(merge_options.OUTPUT_DTYPES))
        if "rank" in global_opts:
            v, e = global_opts.pop("rank")
            if not over_adapters:
                self.error("rank applies to adapter merges (the rank of the merged LoRA)", e.key,
                           "a model merge writes full weights; drop `rank`")
            elif not isinstance(v, int) or isinstance(v, bool) or v < 1:
                self.error(f"rank must be a positive integer, got {v!r}", e.value)
        plain_global = {k: v for k, (v, _e) in global_opts.items()}
        info = merge_options.METHODS[method]
        models_params = [p for _, p in per_model]
        offset = 0
        if over_adapters:
            # As lmlang.merge.lora does: adapters are deltas of one shared
            # base; for two-model methods (slerp) the first adapter plays the base.
            pseudo_base = info.base == "required" and info.max_models == 2
            offset = int(pseudo_base)
            problems = merge_options.validate_options(
                method, plain_global, models_params[1:] if pseudo_base else models_params, compat=compat,
                n_models=n_models - (1 if pseudo_base else 0), has_base=info.base != "ignored")
        else:
            problems = merge_options.validate_options(method, plain_global, models_params, compat=compat,
                                                      n_models=n_models, has_base=has_base)
        for problem in problems:
            message, _, suggestion = problem.partition("; did you mean ")
            hint = f"did you mean {suggestion}" if suggestion else ""
            node = block
            m = re.match(r"model (\d+): ", message)
            if m and 0 < int(m.group(1)) + offset <= len(per_model):
                node = per_model[int(m.group(1)) - 1 + offset][0]
                message = message[m.end():]
            else:
                for k, (_v, e) in global_opts.items():
                    if f"'{k}'" in message:
                        node = e.key if "unknown option" in message else e
                        break
            if "unknown option 'weight'" in message:
                hint = f"{method} takes no per-model weight: write models: [a, b]"
            elif "unknown option" in message and not hint:
                names = ", ".join(info.options) or "none"
                hint = f"{method} takes: {names}"
            self.error(message if message.startswith("merge") else f"merge {method}: {message}", node, hint)

    def merge_model_params(self, value) -> dict | None:
        if isinstance(value, A.Block):
            params = {}
            for e in value.entries:
                v = _plain_value(e.value)
                if v is _NOT_PLAIN:
                    self.error("per-model merge parameters must be numbers", e.value)
                    return None
                params[_key_text(e.key)] = v
            return params
        v = _plain_value(value)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return {"weight": float(v)}
        self.error("a model's merge weight must be a number or { weight: w, density: d }", value)
        return None

    def check_model_expr(self, e, out: CheckedProgram, allow_router: bool) -> None:
        if isinstance(e, A.DefaultModel):
            return
        if isinstance(e, A.PathModel):
            # A hub id is resolved from the local cache when the model is
            # built; a string that can only be a path must exist now.
            if not e.path.strip():
                self.error("empty model source", e, 'write a hub id ("org/name"), a folder or a .gguf file')
            elif e.path.startswith((".", "/", "~")) or e.path.endswith(".gguf"):
                try:
                    path = self.out.path_for(e.path, e)
                except (OSError, ValueError, RuntimeError):
                    path = None
                if path is None or not _probe(path, "any"):
                    self.error(f"model not found: {e.path}", e, f"paths resolve relative to the script's folder (looked for {path})")
            elif not HUB_ID.fullmatch(e.path):
                try:
                    local = _probe(self.out.path_for(e.path, e), "any")
                except (OSError, ValueError, RuntimeError):
                    local = False
                if not local:
                    self.error(f"{e.path!r} is not a hub id, a folder or a .gguf file", e,
                               'hub ids look like "org/name"; write folders as "./path"')
            return
        if isinstance(e, A.ModelRef):
            if e.name in out.models:
                return
            if e.name in out.routers and allow_router:
                self.error(f"router '{e.name}' needs its input", e, f"write {e.name}(text)")
                return
            kind = _kind_of(e.name, out)
            if kind:
                self.error(f"'{e.name}' is {kind}, not a model", e)
            else:
                self.error(f"undefined model '{e.name}'", e, self.did_you_mean(e.name, out.models) or "declare it with `model NAME = ...`")
            return
        if isinstance(e, A.RouterCall):
            if not allow_router:
                self.error("a router can only be used after `using` in a query", e)
            elif e.router not in out.routers:
                self.error(f"undefined router '{e.router}'", e, self.did_you_mean(e.router, out.routers))
            elif len(e.args) != 1:
                self.error(f"router '{e.router}' takes 1 argument, got {len(e.args)}", e)
            return
        if isinstance(e, A.Adapted):
            self.check_model_expr(e.base, out, allow_router=False)
            for a in e.adapters:
                if a.adapter not in out.adapters:
                    kind = _kind_of(a.adapter, out)
                    self.error(f"'{a.adapter}' is {kind}, not an adapter" if kind else f"undefined adapter '{a.adapter}'",
                               a, "" if kind else self.did_you_mean(a.adapter, out.adapters))
            return
        if isinstance(e, A.MergeExpr):
            self.check_merge(e.method, e.options, out)
            return
        if isinstance(e, A.FuseExpr):
            if e.mode not in FUSE_MODES:
                self.error(f"unknown fuse mode '{e.mode}'", e, self.did_you_mean(e.mode, FUSE_MODES) or "modes: linear, contrastive")
                return
            allowed = FUSE_MODES[e.mode]
            for kw in e.options:
                if kw.name not in allowed:
                    self.error(f"unknown option '{kw.name}' for fuse {e.mode}", kw, self.did_you_mean(kw.name, allowed))
                    continue
                v = _plain_value(kw.value)
                lo, hi, _ = allowed[kw.name]
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not (lo < v <= hi):
                    self.error(f"fuse {kw.name} must be a number in ({lo}, {hi}]", kw.value)
            if len(e.members.entries) < 2:
                self.error("fuse needs at least two models", e.members)
            for m in e.members.entries:
                self.check_model_expr(m.key, out, allow_router=False)
                v = _plain_value(m.value)
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    self.error("a fuse weight must be a number", m.value)
            if e.mode == "contrastive":
                weights = [_plain_value(m.value) for m in e.members.entries]
                if not any(isinstance(w, (int, float)) and w > 0 for w in weights) or not any(isinstance(w, (int, float)) and w < 0 for w in weights):
                    self.error("contrastive fusion needs an expert (positive weight) and an amateur (negative weight)", e.members)
            return
        if isinstance(e, A.Literal) and isinstance(e.value, str):
            self.error("a model source string can only start a declaration", e,
                       f'declare it first: model NAME = "{e.value}", then use NAME here')
            return
        self.error("expected a model", e)

    def check_cycles(self, out: CheckedProgram) -> None:
        graph: dict[str, list[tuple[str, A.Node]]] = {}
        for name, d in out.models.items():
            graph[name] = list(_model_refs(d.expr))
        for name, d in out.adapters.items():
            refs = []
            if isinstance(d.source, A.TrainSource):
                for e in d.source.options.entries:
                    if _key_name(e.key) == "base":
                        refs.extend(_model_refs(e.value))
            elif isinstance(d.source, A.AdapterMerge):
                for e in d.source.options.entries:
                    if _key_name(e.key) == "models":
                        refs.extend((_key_name(k), k) for k, _v in merge_members(e.value) if _key_name(k))
            graph[name] = refs
        state: dict[str, int] = {}
        reported = set()

        def visit(n: str, path: list[str]) -> None:
            state[n] = 1
            for ref, node in graph.get(n, ()):
                if ref not in graph:
                    continue
                if state.get(ref) == 1:
                    cycle = path[path.index(ref):] + [ref] if ref in path else [n, ref]
                    key = frozenset(cycle)
                    if key not in reported:
                        reported.add(key)
                        self.error("cycle: " + " -> ".join(cycle), node, "a model cannot be built from itself")
                elif state.get(ref) is None:
                    visit(ref, path + [ref])
            state[n] = 2

        for n in graph:
            if state.get(n) is None:
                visit(n, [n])

    # ------------------------------------------------------------ routers
    def check_routers(self, out: CheckedProgram) -> None:
        for r in out.routers.values():
            if r.kind not in ROUTER_KINDS:
                self.error(f"unknown router kind '{r.kind}'", _name_span(r), self.did_you_mean(r.kind, ROUTER_KINDS) or "kinds: " + ", ".join(ROUTER_KINDS))
                continue
            for kw in r.options:
                if r.kind == "embedding" and kw.name == "encoder":
                    v = _plain_value(kw.value)
                    if isinstance(kw.value, A.ModelRef):
                        v = kw.value.name
                    if v not in EMBED_ENCODERS:
                        self.error(f"unknown encoder {v!r}", kw.value, "encoders: minilm (sentence model), base (the expert's base model hidden states)")
                else:
                    self.error(f"unknown option '{kw.name}' for route {r.kind}", kw, "route embedding takes encoder: minilm|base" if r.kind == "embedding" else f"route {r.kind} takes no options")
            if r.kind == "classify":
                if r.using is None:
                    self.error("route classify needs `using MODEL` to classify with", _name_span(r), "for example: route classify using base { ... }")
                else:
                    self.check_model_expr(r.using, out, allow_router=False)
            elif r.using is not None:
                self.error(f"route {r.kind} takes no `using`", r.using)
            if len(r.experts.entries) < (2 if r.kind != "rules" else 1):
                self.error("a router needs at least two experts", r.experts)
            defaults = 0
            seen_experts: dict = {}
            for e in r.experts.entries:
                if e.key in seen_experts:       # AST equality ignores spans: same expression
                    self.error("this expert is listed twice", e.key, f"first at line {seen_experts[e.key].span.line}")
                    continue
                seen_experts[e.key] = e.key
                if r.kind == "rules" and _key_name(e.key) == "default":
                    defaults += 1
                    self.check_model_expr(e.value, out, allow_router=False)
                    continue
                self.check_model_expr(e.key, out, allow_router=False)
                v = e.value
                if r.kind == "embedding":
                    pv = _plain_value(v)
                    ok = isinstance(pv, str) or (isinstance(pv, list) and pv and all(isinstance(x, str) for x in pv))
                    if not ok:
                        self.error("an embedding expert takes example texts [\"...\", ...] or a description \"...\"", v)
                elif r.kind == "classify":
                    if not isinstance(_plain_value(v), str):
                        self.error("a classify expert takes a description string", v)
                else:
                    if isinstance(v, A.MatchesValue):
                        problems = _regex_problems(v.pattern)
                        for p in problems:
                            self.error(f"invalid regex: {p}", v)
                    elif isinstance(v, A.ContainsValue):
                        words = _plain_value(v.words)
                        if not words or not all(isinstance(w, str) for w in words):
                            self.error("contains [...] takes a list of strings", v)
                    else:
                        self.error("a rule is `matches r\"...\"` or `contains [\"...\"]`", v)
            if r.kind == "rules" and defaults != 1:
                self.error("route rules needs exactly one `default: MODEL`", r.experts, "the default catches inputs no rule matches")

    # ------------------------------------------------------------ queries
    def check_query(self, q: A.QueryDecl, out: CheckedProgram) -> QueryInfo | None:
        n_errors = len(self.errors)
        params: dict[str, T.T] = {}
        for p in q.params:
            if p.name in params:
                self.error(f"duplicate parameter '{p.name}'", _name_span(p), "name each parameter once")
            params[p.name] = self.type_of_ref(p.type) or T.ANY
        # model
        using = q.using
        if using is None:
            using = A.ModelRef(next(iter(out.models)), span=q.span) if out.models else A.DefaultModel(span=q.span)
        else:
            self.check_model_expr(using, out, allow_router=True)
            if isinstance(using, A.RouterCall):
                for a in using.args:
                    t = self.check_expr(a, {k: v for k, v in params.items()}, out, in_query=True)
                    if t.name not in ("str", "any", "json"):
                        self.error(f"a router routes on text, got {_a(t)}", a, "pass a str parameter of the query")
        # decoder
        decoder = q.decoder or A.Decoder("argmax", (), span=q.span)
        given = {}
        for kw in decoder.options:
            v = _plain_value(kw.value)
            if kw.name in given:
                self.error(f"option '{kw.name}' given twice", kw)
            given[kw.name] = v
        for p in D.validate(decoder.name, given):
            node = next((kw for kw in decoder.options if kw.name == p.option), decoder)
            self.error(p.message, node, p.hint)
        # segments
        roles = [s.role for s in q.segments]
        chat = any(r is not None for r in roles)
        if chat and any(r is None for r in roles):
            seg = next(s for s in q.segments if s.role is None)
            self.error("mix of plain text and chat roles in one prompt", seg, "give every line a role (system, user, assistant) or none")
        if not q.segments:
            self.error(f"query '{q.name}' has no prompt", q, 'add a line such as user "..."')
        holes: list[str] = []
        hole_nodes: dict[str, A.Hole] = {}
        for s in q.segments:
            for part in s.parts:
                if isinstance(part, A.Hole):
                    if part.name in hole_nodes:
                        self.error(f"hole [{part.name}] appears twice", part, "name each hole once")
                        continue
                    if part.name in RESERVED_FIELDS:
                        self.error(f"'{part.name}' is reserved", part, "rename the hole")
                    if s.role in ("system", "user"):
                        self.error(f"hole [{part.name}] in a {s.role} message", part, "holes are written by the model: put them in an assistant message")
                    if part.name in params:
                        self.error(f"hole [{part.name}] has the name of a parameter", part, "rename the hole")
                    holes.append(part.name)
                    hole_nodes[part.name] = part
                elif isinstance(part, A.Interp):
                    self.check_interp(part, params, out)
        if q.segments and not holes:
            self.error(f"query '{q.name}' has no hole, so there is nothing to decode", _name_span(q),
                       'add a hole for the model to fill, such as assistant "[answer]"')
        # constraints
        conds: dict[str, list] = {h: [] for h in holes}
        for w in q.wheres:
            for c in w.conds:
                if c.hole not in conds:
                    self.error(f"constraint on [{c.hole}], which is not a hole of this prompt", c,
                               self.did_you_mean(c.hole, holes) or f"holes: {', '.join(holes) or 'none'}")
                    continue
                conds[c.hole].append(c)
        distribution = None
        if q.distribution is not None:
            dist = q.distribution
            opts = _plain_value(dist.options)
            if dist.hole not in conds:
                self.error(f"distribution over [{dist.hole}], which is not a hole of this prompt", dist, self.did_you_mean(dist.hole, holes))
            elif holes and dist.hole != holes[-1]:
                self.error("distribution must be over the last hole", dist, f"the last hole is [{holes[-1]}]")
            elif conds[dist.hole]:
                self.error(f"[{dist.hole}] has both a distribution and where-constraints", dist, "the distribution's options are its constraint")
            elif not isinstance(opts, list) or len(opts) < 2 or not all(isinstance(o, str) for o in opts):
                self.error("distribution takes a list of at least two strings", dist.options)
            elif len(set(opts)) != len(opts):
                self.error("distribution options repeat", dist.options)
            else:
                distribution = (dist.hole, tuple(opts))
                if decoder.name != "argmax":
                    self.error("a distribution query scores options exactly; it takes no decoder", decoder)
        lowered: dict = {}
        for h in holes:
            if distribution and h == distribution[0]:
                lowered[h] = C.Choice(distribution[1])
                continue
            lowered[h] = self.lower_constraints(h, conds[h], hole_nodes[h], q, out)
        if decoder.name == "vote" and not holes:
            self.error("vote needs a hole to vote on", decoder)
        if len(self.errors) > n_errors:
            return None
        result_fields = {h: _hole_type(lowered[h]) for h in holes}
        if distribution:
            result_fields["distribution"] = T.JSON
        if isinstance(using, A.RouterCall):
            result_fields["expert"] = T.STR
        return QueryInfo(q, tuple(holes), lowered, (decoder.name, tuple(sorted(D.resolve(decoder.name, given).items()))),
                         using, chat, distribution, T.record(**result_fields))

    def check_interp(self, part: A.Interp, params: dict, out: CheckedProgram) -> None:
        head, *rest = part.path
        if head in params:
            t = params[head]
        elif head in out.inputs:
            # A query is a function of its parameters (it is also callable
            # from the API without running the flow), so inputs reach it as
            # arguments.
            self.error(f"'{head}' is a program input, not a parameter of this query", part,
                       f"add a parameter ({head}: {out.inputs[head].type.describe()}) and pass {head} in the flow")
            return
        else:
            self.error(f"'{head}' is not in scope in this prompt", part,
                       self.did_you_mean(head, params) or
                       ("the query's parameters: " + ", ".join(params) if params else "declare it as a parameter of the query"))
            return
        for f in rest:
            if f.startswith("_"):
                self.error(f"field '{f}' is not allowed", part, "fields starting with '_' are never looked up")
                return
            if t.name not in ("json", "any", "record"):
                self.error(f"'{head}' is {_a(t)} and has no field '{f}'", part)
                return
            if t.name == "record":
                ft = t.field(f)
                if ft is None:
                    self.error(f"no field '{f}'", part)
                    return
                t = ft

    def lower_constraints(self, hole: str, conds: list, node: A.Hole, q: A.QueryDecl, out: CheckedProgram):
        shapes: list[tuple[C.Constraint, A.Node]] = []
        stops: list[C.Constraint] = []
        max_tokens: int | None = None
        max_chars: int | None = None
        for c in conds:
            if isinstance(c, A.CIn):
                opts = _plain_value(c.options)
                if not isinstance(opts, list) or not opts or not all(isinstance(o, str) for o in opts):
                    self.error(f"`{hole} in [...]` takes a non-empty list of strings", c.options)
                    continue
                shapes.append((C.Choice(tuple(dict.fromkeys(opts))), c))
            elif isinstance(c, A.CMatches):
                shapes.append((C.Regex(c.pattern), c))
            elif isinstance(c, A.CIs):
                kinds = {"int": C.IntType(), "float": C.FloatType(), "bool": C.BoolType()}
                if c.type not in kinds:
                    hint = self.did_you_mean(c.type, kinds) or "write `is int`, `is float`, `is bool`, `is json {...}` or `is grammar \"file.lark\"`"
                    self.error(f"unknown type '{c.type}' in constraint", c, hint)
                    continue
                shape = kinds[c.type]
                if c.range is not None:
                    lo, hi = c.range.lo, c.range.hi
                    if c.type != "int":
                        self.error(f"`is {c.type}` takes no range", c.range, f"write `{hole} is int(lo..hi)`, or a JSON type")
                        continue
                    if any(v is not None and float(v) != int(v) for v in (lo, hi)):
                        self.error("an int range takes integers", c.range)
                        continue
                    if lo is not None and hi is not None and lo > hi:
                        self.error(f"empty range {lo:g}..{hi:g}", c.range, "write the lower bound first")
                        continue
                    shape = C.IntType(int(lo) if lo is not None else None, int(hi) if hi is not None else None)
                shapes.append((shape, c))
            elif isinstance(c, A.CJson):
                if c.inline is not None:
                    try:
                        schema = to_schema(c.inline)
                    except JsonTypeError as e:
                        self.error(str(e), e.node, e.hint)
                        continue
                elif c.file in self.schemas:
                    schema = self.schemas[c.file]
                else:
                    path = self.file_ref("JSON schema", c.file, c)
                    if path is None:
                        continue
                    try:
                        schema = json.loads(path.read_text(encoding="utf-8"))
                    except (OSError, ValueError) as e:
                        self.error(f"cannot read JSON schema {c.file}: {e}", c)
                        continue
                # Declared property order is kept: the decoder writes keys in
                # schema order, so `{name, age}` comes out name first.
                shapes.append((C.JsonSchema(json.dumps(schema)), c))
            elif isinstance(c, A.CGrammar):
                path = self.file_ref("grammar", c.file, c)
                if path is None:
                    continue
                try:
                    shapes.append((C.Grammar(path.read_text(encoding="utf-8")), c))
                except (OSError, UnicodeDecodeError) as e:
                    self.error(f"cannot read grammar {c.file}: {getattr(e, 'strerror', None) or e}", c)
            elif isinstance(c, A.CStop):
                if not c.text:
                    self.error("a stop string cannot be empty", c)
                    continue
                stops.append(C.Stop(c.text, c.include))
            elif isinstance(c, A.CLen):
                if c.op not in ("<=", "<"):
                    self.error(f"{c.fn}({hole}) takes an upper bound (<= or <)", c, f"write {c.fn}({hole}) <= {c.n}")
                    continue
                n = c.n if c.op == "<=" else c.n - 1
                if n < 1:
                    self.error(f"{c.fn}({hole}) {c.op} {c.n} leaves no room for a value", c)
                    continue
                if c.fn == "tokens":
                    max_tokens = n if max_tokens is None else min(max_tokens, n)
                else:
                    max_chars = n if max_chars is None else min(max_chars, n)
        shape = None
        if len(shapes) > 1:
            (a, an), (b, bn) = shapes[0], shapes[1]
            merged = _merge_shapes(a, b)
            if merged is None:
                self.error(f"constraints on [{hole}] contradict: {_shape_words(a)} and {_shape_words(b)}", bn,
                           "keep one of them")
                return None
            shape = merged
            if len(shapes) > 2:
                self.error(f"too many shape constraints on [{hole}]", shapes[2][1], "keep one of in/matches/is")
                return None
        elif shapes:
            shape = shapes[0][0]
        parts: list = [shape] if shape is not None else []
        parts.extend(stops)
        if max_tokens is not None:
            parts.append(C.MaxTokens(max_tokens))
        if max_chars is not None:
            parts.append(C.MaxChars(max_chars))
        if not parts:
            if conds or self.reported_hole(node):
                return None          # its constraints (or the hole) already have errors
            if not _hole_ends_turn(q, hole):
                self.error(f"hole [{hole}] has no constraint, so nothing says where it ends", node,
                           f"add `where {hole} stops at \"...\"`, `tokens({hole}) <= N` or a shape")
            return None
        constraint = parts[0] if len(parts) == 1 else C.All(tuple(parts))
        at = _span_over(conds) if conds else node.span
        for problem in _constraint_problems(constraint):
            message = f"[{hole}]: " + problem.message.replace("(x)", f"({hole})")
            if getattr(problem, "severity", "error") == "warning":
                self.warn(message, at, problem.hint, code=getattr(problem, "code", ""))
            else:
                self.error(message, at, problem.hint, code=getattr(problem, "code", ""))
        return constraint

    # ------------------------------------------------------------ flow
    def check_flow(self, flow: A.FlowDecl, out: CheckedProgram) -> None:
        scope: dict[str, T.T] = {name: (self.type_of_ref(d.type) or T.ANY) for name, d in out.inputs.items()}
        self.emitted: set[str] = set()
        self.check_block(flow.body, scope, out)
        if not self.emitted:
            self.warn("the flow emits nothing", flow, "add `emit name = value`")

    def check_block(self, stmts, scope: dict, out: CheckedProgram) -> dict:
        for s in stmts:
            if isinstance(s, A.Assign):
                t = self.check_expr(s.value, scope, out)
                kind = _kind_of(s.name, out)
                if kind and kind != "an input":
                    self.error(f"'{s.name}' is {kind} and cannot be assigned", _name_span(s), "pick another variable name")
                scope[s.name] = t
            elif isinstance(s, A.If):
                self.check_expr(s.cond, scope, out)
                a = self.check_block(s.then, dict(scope), out)
                b = self.check_block(s.orelse, dict(scope), out)
                for k in set(a) & set(b):
                    if k not in scope:
                        scope[k] = a[k] if a[k] == b[k] else T.ANY
            elif isinstance(s, A.For):
                it = self.check_expr(s.iter, scope, out)
                if it.name not in ("list", "any", "json"):
                    self.error(f"cannot loop over {_a(it)}", s.iter, "for loops over lists")
                inner = dict(scope)
                inner[s.var] = it.item or T.ANY if it.name == "list" else T.ANY
                self.check_block(s.body, inner, out)
            elif isinstance(s, A.Emit):
                names = set()
                for item in s.items:
                    if item.name in names:
                        self.error(f"'{item.name}' emitted twice", item)
                    names.add(item.name)
                    self.emitted.add(item.name)
                    self.check_expr(item.value, scope, out)
        return scope

    def check_expr(self, e, scope: dict, out: CheckedProgram, in_query: bool = False) -> T.T:
        if isinstance(e, A.Lit):
            return T.of_python(e.value)
        if isinstance(e, A.Var):
            if e.name in scope:
                return scope[e.name]
            kind = _kind_of(e.name, out)
            if kind:
                self.error(f"'{e.name}' is {kind}, not a value", e, f"call it: {e.name}(...)" if kind == "a query" else "")
            else:
                self.error(f"undefined name '{e.name}'", e, self.did_you_mean(e.name, scope) or "assign it first, or declare an input")
            return T.ANY
        if isinstance(e, A.Attr):
            t = self.check_expr(e.obj, scope, out)
            if e.name.startswith("_"):
                self.error(f"field '{e.name}' is not allowed", e, "fields starting with '_' are never looked up")
                return T.ANY
            if t.name == "record":
                ft = t.field(e.name)
                if ft is None:
                    self.error(f"no field '{e.name}'", e, self.did_you_mean(e.name, [k for k, _ in t.fields]) or "fields: " + ", ".join(k for k, _ in t.fields))
                    return T.ANY
                return ft
            if t.name in ("json", "any"):
                return T.ANY
            self.error(f"{_a(t).capitalize()} has no field '{e.name}'", e)
            return T.ANY
        if isinstance(e, A.Index):
            t = self.check_expr(e.obj, scope, out)
            it = self.check_expr(e.index, scope, out)
            if t.name == "list":
                if it.name not in ("int", "any", "json"):
                    self.error("a list index must be an int", e.index)
                return t.item or T.ANY
            if t.name == "str":
                return T.STR
            if t.name not in ("json", "any", "record"):
                self.error(f"cannot index {_a(t)}", e)
            return T.ANY
        if isinstance(e, A.ListExpr):
            items = {self.check_expr(x, scope, out) for x in e.items}
            return T.list_of(items.pop() if len(items) == 1 else T.ANY)
        if isinstance(e, A.UnaryOp):
            t = self.check_expr(e.operand, scope, out)
            if e.op == "not":
                return T.BOOL
            if t.name not in ("int", "float", "any", "json"):
                self.error(f"cannot negate {_a(t)}", e)
            return t
        if isinstance(e, A.BinOp):
            lt = self.check_expr(e.left, scope, out)
            rt = self.check_expr(e.right, scope, out)
            if e.op in ("and", "or", "==", "!=", "<", "<=", ">", ">=", "in"):
                return T.BOOL
            nums = ("int", "float", "bool")
            if e.op == "+" and lt.name == "str" and rt.name == "str":
                return T.STR
            if e.op == "+" and lt.name == "list" and rt.name == "list":
                return lt
            if lt.name in ("any", "json") or rt.name in ("any", "json"):
                return T.ANY
            if lt.name in nums and rt.name in nums:
                return T.FLOAT if "float" in (lt.name, rt.name) or e.op == "/" else T.INT
            self.error(f"cannot apply '{e.op}' to {lt} and {rt}", e, "use str(x) to join text and numbers" if "str" in (lt.name, rt.name) else "")
            return T.ANY
        if isinstance(e, A.Call):
            return self.check_call(e, scope, out)
        self.error("unsupported expression", e)
        return T.ANY

    def check_call(self, e: A.Call, scope: dict, out: CheckedProgram) -> T.T:
        arg_types = [self.check_expr(a, scope, out) for a in e.args]
        kw_types = {k: self.check_expr(v, scope, out) for k, v in e.kwargs}
        if e.func in out.query_decls:
            info = out.queries.get(e.func)
            decl = out.query_decls[e.func]
            params = [p.name for p in decl.params]
            if len(e.args) > len(params):
                self.error(f"{e.func}() takes {len(params)} argument{'s' * (len(params) != 1)}, got {len(e.args)}", e)
                return info.result_type if info else T.ANY
            bound = dict(zip(params, arg_types))
            for k, t in kw_types.items():
                if k not in params:
                    self.error(f"{e.func}() has no parameter '{k}'", e, self.did_you_mean(k, params))
                elif k in bound:
                    self.error(f"{e.func}() got '{k}' twice", e)
                bound[k] = t
            missing = [p for p in params if p not in bound]
            if missing:
                self.error(f"{e.func}() is missing {', '.join(missing)}", e, f"{e.func} takes ({', '.join(params)})")
            for p in decl.params:
                if p.name in bound:
                    want = self.type_of_ref(p.type) if p.type else T.ANY
                    if want is not None and not T.assignable(bound[p.name], want):
                        self.error(f"{e.func}() argument '{p.name}' expects {want}, got {bound[p.name]}", e)
            return info.result_type if info else T.ANY
        if e.func in self.functions:
            return T.ANY
        if e.func in BUILTINS:
            b = BUILTINS[e.func]
            result = b.result
            if e.kwargs:
                self.error(f"{e.func}() takes no named arguments", e)
            if not (b.min_args <= len(e.args) <= b.max_args):
                self.error(f"{e.func}() takes {b.arity_text()} argument{'s' * (b.max_args != 1)}, got {len(e.args)}", e)
                return result
            for i, (arg, t) in enumerate(zip(e.args, arg_types)):
                wants = b.args[i:i + 1]
                if wants and t.name not in ("any", "json") and t.name not in wants[0]:
                    self.error(f"{e.func}() argument {i + 1} must be {' or '.join(wants[0])}, got {t}", arg)
            return result
        kind = _kind_of(e.func, out)
        if kind:
            self.error(f"'{e.func}' is {kind} and cannot be called in the flow", e)
        else:
            self.error(f"undefined function '{e.func}'", e,
                       self.did_you_mean(e.func, [*out.query_decls, *BUILTINS, *self.functions])
                       or "call a query, a builtin, or a Python function registered with program.register()")
        return T.ANY

    def check_unused(self, out: CheckedProgram) -> None:
        if out.flow is None:
            return
        called = {c.func for c in _walk_calls(out.flow.body)}
        for name, d in out.queries.items():
            if name not in called and d.decl.span.filename == self.source.filename:
                self.warn(f"query '{name}' is never called", _name_span(d.decl), "call it in the flow or remove it", code="unused-query")


# ---------------------------------------------------------------- helpers

_NOT_PLAIN = object()


def _plain_value(v):
    """A block value as a plain Python value, or _NOT_PLAIN (models, blocks)."""
    if isinstance(v, A.Literal):
        return v.value
    if isinstance(v, A.ListValue):
        items = [_plain_value(x) for x in v.items]
        return _NOT_PLAIN if any(x is _NOT_PLAIN for x in items) else items
    return _NOT_PLAIN


def merge_members(value) -> list:
    """A merge's `models:` as (model expression, weight value or None):
    a map `{ m: 1.0, n: { weight: 0.5 } }`, or a list `[m, n]` for methods
    that take no per-model weight (slerp, model_stock). [] if neither."""
    if isinstance(value, A.Block):
        return [(e.key, e.value) for e in value.entries]
    if isinstance(value, A.ListValue):
        return [(item, None) for item in value.items]
    return []


def _key_name(key) -> str | None:
    if isinstance(key, A.DefaultModel):
        return "default"          # `default:` reads as a key in option blocks
    return key.name if isinstance(key, A.ModelRef) else None


def _key_text(key) -> str:
    if isinstance(key, A.ModelRef):
        return key.name
    if isinstance(key, A.Literal):
        return str(key.value)
    if isinstance(key, A.DefaultModel):
        return "default"
    return "<expression>"


def _a(t) -> str:
    text = str(t)
    return ("an " if text[:1] in "aeiou" else "a ") + text


def _type_words(types) -> str:
    words = {int: "an integer", float: "a number", list: "a list", str: "a string"}
    return " or ".join(words.get(t, t.__name__) for t in types)


def _name_span(d) -> Span:
    return getattr(d, "name_span", None) or d.span


def _kind_of(name: str, out: CheckedProgram) -> str:
    if name in out.models:
        return "a model"
    if name in out.adapters:
        return "an adapter"
    if name in out.routers:
        return "a router"
    if name in out.inputs:
        return "an input"
    if name in out.query_decls:
        return "a query"
    return ""


def _imported_decls(sub_out: CheckedProgram) -> list:
    return [*sub_out.models.values(), *sub_out.adapters.values(), *sub_out.routers.values(),
            *sub_out.inputs.values(), *[q.decl for q in sub_out.queries.values()]]


def _model_refs(e):
    """(name, node) of declared models/adapters a model expression refers to."""
    if isinstance(e, A.ModelRef):
        yield e.name, e
    elif isinstance(e, A.Adapted):
        yield from _model_refs(e.base)
        for a in e.adapters:
            yield a.adapter, a
    elif isinstance(e, A.MergeExpr):
        for entry in e.options.entries:
            if _key_name(entry.key) == "base":
                yield from _model_refs(entry.value)
            elif _key_name(entry.key) == "models":
                for key_node, _v in merge_members(entry.value):
                    yield from _model_refs(key_node)
    elif isinstance(e, A.FuseExpr):
        for m in e.members.entries:
            yield from _model_refs(m.key)


def _walk_calls(stmts):
    for s in stmts:
        exprs = []
        if isinstance(s, A.Assign):
            exprs = [s.value]
        elif isinstance(s, A.If):
            exprs = [s.cond]
            yield from _walk_calls(s.then)
            yield from _walk_calls(s.orelse)
        elif isinstance(s, A.For):
            exprs = [s.iter]
            yield from _walk_calls(s.body)
        elif isinstance(s, A.Emit):
            exprs = [i.value for i in s.items]
        stack = list(exprs)
        while stack:
            e = stack.pop()
            if isinstance(e, A.Call):
                yield e
                stack.extend(e.args)
                stack.extend(v for _, v in e.kwargs)
            elif isinstance(e, A.BinOp):
                stack += [e.left, e.right]
            elif isinstance(e, A.UnaryOp):
                stack.append(e.operand)
            elif isinstance(e, A.Attr):
                stack.append(e.obj)
            elif isinstance(e, A.Index):
                stack += [e.obj, e.index]
            elif isinstance(e, A.ListExpr):
                stack.extend(e.items)


def _hole_ends_turn(q: A.QueryDecl, hole: str) -> bool:
    """True when the hole is the last part of an assistant message or of the
    whole plain prompt: the model's end-of-turn token can end it."""
    for i, s in enumerate(q.segments):
        parts = [p for p in s.parts if not (isinstance(p, A.Text) and not p.text.strip())]
        if parts and isinstance(parts[-1], A.Hole) and parts[-1].name == hole:
            return s.role == "assistant" or (s.role is None and i == len(q.segments) - 1)
    return False


def _merge_shapes(a: C.Constraint, b: C.Constraint):
    """Two shape constraints on one hole: their intersection when it is
    expressible, else None (a contradiction)."""
    import re

    if isinstance(b, C.Choice) and not isinstance(a, C.Choice):
        a, b = b, a
    if isinstance(a, C.Choice):
        if isinstance(b, C.Choice):
            keep = tuple(o for o in a.options if o in b.options)
            return C.Choice(keep) if keep else None
        tests = {C.IntType: r"-?(0|[1-9][0-9]*)", C.FloatType: r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?",
                 C.BoolType: r"true|false"}
        if type(b) in tests:
            keep = tuple(o for o in a.options if re.fullmatch(tests[type(b)], o)
                         and (not isinstance(b, C.IntType) or _in_bounds(int(o), b)))
        elif isinstance(b, C.Regex):
            try:
                keep = tuple(o for o in a.options if re.fullmatch(b.pattern, o))
            except re.error:
                return None
        else:
            return None
        # Every option must fit the other shape: a partial fit is a
        # contradiction the author should see, not a silent narrowing.
        return C.Choice(keep) if len(keep) == len(a.options) else None
    if type(a) is type(b) and a == b:
        return a
    return None


def _in_bounds(n: int, c) -> bool:
    lo, hi = getattr(c, "lo", None), getattr(c, "hi", None)
    return (lo is None or n >= lo) and (hi is None or n <= hi)


def _shape_words(c: C.Constraint) -> str:
    if isinstance(c, C.Choice):
        return "in [" + ", ".join(repr(o) for o in c.options[:3]) + (", ..." if len(c.options) > 3 else "") + "]"
    if isinstance(c, C.Regex):
        return f"matches {c.pattern!r}"
    if isinstance(c, C.IntType) and (getattr(c, "lo", None) is not None or getattr(c, "hi", None) is not None):
        return f"is int({'' if c.lo is None else c.lo}..{'' if c.hi is None else c.hi})"
    if isinstance(c, (C.IntType, C.FloatType, C.BoolType)):
        return "is " + {C.IntType: "int", C.FloatType: "float", C.BoolType: "bool"}[type(c)]
    if isinstance(c, C.JsonSchema):
        return "is json"
    if isinstance(c, C.Grammar):
        return "is grammar"
    return type(c).__name__


def _hole_type(c) -> T.T:
    for part in C.flatten(c):
        if isinstance(part, C.IntType):
            return T.INT
        if isinstance(part, C.FloatType):
            return T.FLOAT
        if isinstance(part, C.BoolType):
            return T.BOOL
        if isinstance(part, C.JsonSchema):
            return T.JSON
    return T.STR


def _probe(path: Path, must: str) -> bool:
    """Does a file (or folder, or anything) exist there? Never raises: odd
    names (NUL bytes, too long) simply do not exist."""
    try:
        if must == "file":
            return path.is_file()
        if must == "dir":
            return path.is_dir()
        return path.exists()
    except (OSError, ValueError):
        return False


def _span_over(nodes) -> Span:
    """The span from the first node's start to the last node's end (one file)."""
    a, b = nodes[0].span, nodes[-1].span
    if a.filename != b.filename or (b.end_line, b.end_col) < (a.line, a.col):
        return a
    return Span(a.line, a.col, b.end_line, b.end_col, a.filename)


def _regex_problems(pattern: str) -> list[str]:
    import re

    try:
        re.compile(pattern)
    except re.error as e:
        return [str(e)]
    return []


def _constraint_problems(constraint) -> list:
    from .constraints import check as constraint_check

    return constraint_check.check_constraint_cached(constraint)


def check_program(program: A.Program, source: Source, base_dir: Path, functions=frozenset(),
                  schemas: dict | None = None) -> CheckedProgram:
    return Checker(source, base_dir, frozenset(functions), schemas=schemas).check(program)
