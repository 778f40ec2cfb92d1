"""Models and adapters: model expressions (sources, references, adapters
applied, merges, fusion), served models (`server`, `vllm`), adapter sources
(LoRA folders, training, adapter merges) and cycles between declarations.

Every option block is judged by the table that the runtime executes from
(lmlang.merge.options, lmlang.models.options, lmlang.models.sources); this
module only maps their structured problems onto the script's spans. What a
model expression can do (fuse, merge, train on, take adapters) is read from
the features of its source kind (sources.SOURCE_KINDS), so a served model
asked for something its engine cannot do is a check error that names the
model and the feature. `using` omitted in a query means the first declared
model, else the bundled default.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import ast as A
from ..errors import LmlangError
from ..models import sources
from ..values import NOT_PLAIN, key_name, key_text, merge_members, model_refs, plain_value, source_refs
from .context import Context, probe
from .compat import check_compatible
from .program import PathRefused

MAX_CHECKED_DATA_BYTES = 16 * 1024 * 1024
COMPOSE_MERGES = ("twin", "atlas")  # merge/compose_options.py MERGES, checked by checker/compose.py


def check_models_and_adapters(cx: Context) -> None:
    for d in cx.out.models.values():
        check_model_expr(cx, d.expr, allow_router=False)
    for d in cx.out.adapters.values():
        src = d.source
        if isinstance(src, A.LoraSource):
            path = cx.file_ref("adapter", src.path, src, must="dir")
            if path is not None and not probe(path / "adapter_config.json", "file"):
                cx.error(f"'{src.path}' is not a PEFT LoRA folder (no adapter_config.json)", src)
        elif isinstance(src, A.TrainSource):
            _check_train_source_data(cx, src)
            _check_train_options(cx, src)
        elif isinstance(src, A.AdapterMerge):
            check_merge(cx, src.method, src.options, over_adapters=True)
        elif isinstance(src, A.AdapterCompress):
            from .compose import check_compress

            check_compress(cx, src)
    check_cycles(cx)


def check_model_expr(cx: Context, e, allow_router: bool) -> None:
    """Errors in a model expression; a router call is allowed only where a
    query's `using` may route."""
    if isinstance(e, A.DefaultModel):
        return
    if isinstance(e, A.PathModel):
        _check_model_source(cx, e.path, e)
    elif isinstance(e, A.ServerModel):
        _check_server(cx, e)
    elif isinstance(e, A.VllmModel):
        _check_vllm(cx, e)
    elif isinstance(e, A.ModelRef):
        _check_model_ref(cx, e, allow_router)
    elif isinstance(e, A.RouterCall):
        if not allow_router:
            cx.error("a router can only be used after `using` in a query", e)
        elif e.router not in cx.out.routers:
            cx.error(f"undefined router '{e.router}'", e, cx.did_you_mean(e.router, cx.out.routers))
        elif len(e.args) != 1:
            cx.error(f"router '{e.router}' takes 1 argument, got {len(e.args)}", e)
    elif isinstance(e, A.Adapted):
        check_model_expr(cx, e.base, allow_router=False)
        _refuse(cx, e.base, "adapters", "take adapters")
        for a in e.adapters:
            if a.adapter not in cx.out.adapters:
                kind = cx.out.kind_of(a.adapter)
                cx.error(
                    f"'{a.adapter}' is {kind}, not an adapter" if kind else f"undefined adapter '{a.adapter}'",
                    a,
                    "" if kind else cx.did_you_mean(a.adapter, cx.out.adapters),
                )
    elif isinstance(e, A.MergeExpr) and e.method in COMPOSE_MERGES:
        from .compose import check_compose_merge

        check_compose_merge(cx, e)
    elif isinstance(e, A.MergeExpr):
        check_merge(cx, e.method, e.options)
    elif isinstance(e, A.FuseExpr):
        _check_fuse(cx, e)
    elif isinstance(e, A.Literal) and isinstance(e.value, str):
        cx.error(
            "a model source string can only start a declaration",
            e,
            f'declare it first: model NAME = "{e.value}", then use NAME here',
        )
    else:
        cx.error("expected a model", e)


def _check_model_source(cx: Context, text: str, e: A.Node) -> None:
    # A hub id is resolved from the local cache when the model is built; a
    # string that can only be a path must exist now.
    kind = sources.classify(text)
    if not text.strip():
        cx.error("empty model source", e, 'write a hub id ("org/name"), a folder or a .gguf file')
    elif kind in ("folder", "gguf"):
        try:
            path = cx.out.confined_path(text, e)
        except PathRefused as refused:
            cx.refuse("model", text, e, refused)
            return
        except (OSError, ValueError, RuntimeError):
            path = None
        if path is None or not probe(path, "any"):
            cx.error(
                f"model not found: {text}", e, f"paths resolve relative to the script's folder (looked for {path})"
            )
    else:
        # A hub id is not a path, unless a folder of that name sits next to
        # the script (the compiler then loads the folder): confined too.
        try:
            local = probe(cx.out.confined_path(text, e), "any")
        except PathRefused as refused:
            local = False
            if probe(refused.path, "any"):
                cx.refuse("model", text, e, refused)
                return
        except (OSError, ValueError, RuntimeError):
            local = False
        if not local and kind not in ("hub", "default"):
            cx.error(
                f"{text!r} is not a hub id, a folder or a .gguf file",
                e,
                'hub ids look like "org/name"; write folders as "./path"',
            )
        elif not local and kind == "hub":
            from ..models.facts import hub_snapshot  # the loader's own cache lookup, now rather than at run

            # A warning, not an error: scripts may be checked on a machine
            # other than the one that runs them (and fixtures name hub ids).
            _folder, message, hint = hub_snapshot(text)
            if message:
                cx.warn(f"{message}: a run here fails when it loads the model", e, hint, code="hub-not-cached")


# ---------------------------------------------------------------- served models


def _check_server(cx: Context, e: A.ServerModel) -> None:
    problem = sources.url_problem(e.url)
    if problem is not None:
        cx.error(problem.message, e, problem.hint, code=problem.code)
    opts = _check_source_options(cx, "server", e.options)
    if isinstance(opts.get("tokenizer"), str):
        node = next(x.value for x in e.options.entries if key_name(x.key) == "tokenizer")
        _check_model_source(cx, opts["tokenizer"], node)


def _check_vllm(cx: Context, e: A.VllmModel) -> None:
    _check_model_source(cx, e.source, e)
    _check_source_options(cx, "vllm", e.options)


def source_option_value(v):
    """A source option's value: a literal, a list of literals, or a bare word
    (`dtype: bfloat16`, `api: chat`, `tokenizer: default`); NOT_PLAIN otherwise."""
    if isinstance(v, A.ModelRef):
        return v.name
    if isinstance(v, A.DefaultModel):
        return "default"
    return plain_value(v)


def source_options(block: A.Block) -> dict:
    """The plain options of a `server` / `vllm` block (what the compiler records)."""
    out = {}
    for e in block.entries:
        key = key_name(e.key) or key_text(e.key)
        value = source_option_value(e.value)
        if value is not NOT_PLAIN:
            out[key] = value
    return out


def _check_source_options(cx: Context, kind: str, block: A.Block) -> dict:
    """Each option judged by the registry's table; returns the good ones."""
    good: dict = {}
    seen: set = set()
    for e in block.entries:
        key = key_name(e.key) or key_text(e.key)
        if key in seen:
            cx.error(f"option '{key}' given twice", e.key)
            continue
        seen.add(key)
        value = source_option_value(e.value)
        problem = sources.check_source_option(kind, key, None if value is NOT_PLAIN else value)
        if problem is not None:
            on_key = problem.code == "unknown-option" or (problem.code == "secret-in-script" and key != "api_key_env")
            at = e.key if on_key else e.value
            cx.error(problem.message, at, problem.hint, code=problem.code)
        else:
            good[key] = value
    return good


def model_source(cx: Context, e, _depth: int = 0) -> sources.SourceKind | None:
    """The source kind a model expression runs on, with the features of its
    declaration (a merge or a fusion runs in process: a local kind); None for
    a router call, an undefined name or a cycle."""
    if _depth > 64:
        return None
    if isinstance(e, A.DefaultModel):
        return sources.SOURCE_KINDS["default"]
    if isinstance(e, A.PathModel):
        return sources.SOURCE_KINDS[sources.classify(e.path) or "folder"]
    if isinstance(e, A.ServerModel):
        return sources.SOURCE_KINDS["server"].with_options(source_options(e.options))
    if isinstance(e, A.VllmModel):
        return sources.SOURCE_KINDS["vllm"]
    if isinstance(e, A.ModelRef):
        d = cx.out.models.get(e.name)
        return model_source(cx, d.expr, _depth + 1) if d is not None else None
    if isinstance(e, A.Adapted):
        return model_source(cx, e.base, _depth + 1)
    if isinstance(e, (A.MergeExpr, A.FuseExpr)):
        return sources.SOURCE_KINDS["folder"]
    return None


WHY_NOT = {
    "logits": "fusion mixes next-token logits in this process, and a server only returns text",
    "merge": "a merge reads weights tensor by tensor in this process, and the result would run locally",
    "weights": "training needs the model's weights in this process",
    "adapters": "lmlang can only load LoRA modules into a vLLM it starts itself",
}


def _refuse(cx: Context, e, feature: str, action: str) -> None:
    """A check error when the model `e` runs on a source that lacks `feature`."""
    kind = model_source(cx, e)
    if kind is None or kind.engine != "served":
        return
    have = getattr(kind, feature)
    if have:
        return
    name = e.name if isinstance(e, A.ModelRef) else "this model"
    why = WHY_NOT[feature]
    if feature == "adapters":
        hint = (
            "serve the adapter as a LoRA module on that server and name it: server \"...\" { model: \"MODULE\" }"
            ", or serve the model with `vllm`"
        )
    elif feature == "weights":
        hint = (
            "train on the local model (e.g. `default`) or serve the model with `vllm \"...\"`, whose weights are local"
        )
    else:
        hint = "use local models here (default, a folder, a hub id)"
    cx.error(f"served model '{name}' ({kind.name}) cannot {action}: {why}", e, hint, code="served-unsupported")


def _check_model_ref(cx: Context, e: A.ModelRef, allow_router: bool) -> None:
    out = cx.out
    if e.name in out.models:
        return
    if e.name in out.routers and allow_router:
        cx.error(f"router '{e.name}' needs its input", e, f"write {e.name}(text)")
        return
    kind = out.kind_of(e.name)
    if kind:
        cx.error(f"'{e.name}' is {kind}, not a model", e)
    else:
        cx.error(
            f"undefined model '{e.name}'",
            e,
            cx.did_you_mean(e.name, [*out.models, "default"]) or "declare it with `model NAME = ...`",
        )


def _check_fuse(cx: Context, e: A.FuseExpr) -> None:
    from ..models import options as model_options  # only scripts that fuse pay for the table

    if e.mode not in model_options.FUSE_MODES:
        cx.error(f"unknown fuse mode '{e.mode}'", e, cx.did_you_mean(e.mode, model_options.FUSE_MODES, known="modes"))
        return
    roles = []  # models given as options (fuse dynamic's anchor and target)
    for kw in e.options:
        if (e.mode, kw.name) in model_options.FUSE_MODEL_OPTIONS:
            check_model_expr(cx, kw.value, allow_router=False)
            _refuse(cx, kw.value, "logits", "fuse")
            roles.append(kw)
            continue
        problem = model_options.check_fuse_option(e.mode, kw.name, plain_value(kw.value))
        if problem is not None:
            cx.error(problem.message, kw if problem.code == "unknown-option" else kw.value, problem.hint)
    if e.mode == "dynamic":
        _check_dynamic_members(cx, e, roles)
        return
    if e.listed:
        cx.error(
            f"fuse {e.mode} takes a weight per model",
            e.members,
            "write { MODEL: WEIGHT, ... }; only `fuse dynamic { a, b }` picks its weights itself",
        )
        return
    if len(e.members.entries) < 2:
        cx.error("fuse needs at least two models", e.members)
    else:
        check_compatible(cx, [m.key for m in e.members.entries], "fuse")
    weights = [plain_value(m.value) for m in e.members.entries]
    for m, w in zip(e.members.entries, weights):
        check_model_expr(cx, m.key, allow_router=False)
        _refuse(cx, m.key, "logits", "fuse")
        if not isinstance(w, (int, float)) or isinstance(w, bool):
            cx.error("a fuse weight must be a number", m.value)
    numbers = [w for w in weights if isinstance(w, (int, float))]
    if e.mode == "contrastive" and not (any(w > 0 for w in numbers) and any(w < 0 for w in numbers)):
        cx.error("contrastive fusion needs an expert (positive weight) and an amateur (negative weight)", e.members)


def _check_dynamic_members(cx: Context, e: A.FuseExpr, roles: list) -> None:
    """`fuse dynamic[(anchor: A, target: T)] { a, b }`: models without weights
    (each step chooses them), sharing a vocabulary with the anchor and target."""
    if not e.listed:
        cx.error(
            "fuse dynamic picks its weights at every step",
            e.members,
            "list the models without weights: fuse dynamic { base + a, base + b }",
        )
        return
    names = {kw.name: kw for kw in roles}
    if "target" in names and "anchor" not in names:
        cx.error(
            "fuse dynamic: a target needs an anchor (the model the experts were tuned from)",
            names["target"],
            "add anchor: MODEL, e.g. fuse dynamic(anchor: base, target: big) { ... }",
        )
    least = 1 if "anchor" in names else 2
    if len(e.members.entries) < least:
        cx.error(
            "fuse dynamic needs at least two models" if least == 2 else "fuse dynamic needs at least one model",
            e.members,
            "" if least == 1 else "or give an anchor: fuse dynamic(anchor: base) { base + a }",
        )
    for m in e.members.entries:
        check_model_expr(cx, m.key, allow_router=False)
        _refuse(cx, m.key, "logits", "fuse")
    members = [m.key for m in e.members.entries] + [kw.value for kw in roles]
    if len(members) >= 2:
        check_compatible(cx, members, "fuse")


# ---------------------------------------------------------------- training


def _check_train_source_data(cx: Context, src: A.TrainSource) -> None:
    """A file is read here with the trainer's reader; a data set's columns
    must hold a training row (prompt and completion, or messages), and a
    data set read straight from a file has its rows checked like a file."""
    ref = src.data
    if ref.path is not None:
        data = cx.file_ref("training data", ref.path, src)
        if data is not None:
            _check_train_data(cx, data, src)
        return
    from .lifecycle import data_ref_columns

    cols = data_ref_columns(cx, ref)
    if cols is None:
        return  # unknown until it runs (generated rows), or an error already reported
    problem = train_columns_problem(cols)
    if problem is not None:
        cx.error(
            f"data set '{ref.name}' {problem}",
            ref,
            f"its columns: {', '.join(cols) or 'none'}; training reads prompt and completion, or messages",
        )
        return
    decl = cx.out.datasets[ref.name]
    if isinstance(decl.source, A.DataFile):
        try:
            path = cx.out.path_for(decl.source.path, decl.source)
        except (PathRefused, OSError, ValueError, RuntimeError):
            return  # the data set's own check reports it
        _check_train_data(cx, path, src)


def train_columns_problem(cols) -> str | None:
    """What keeps rows with these columns from being training rows (the
    row format models/training.py reads), or None."""
    if "messages" in cols:
        if "prompt" in cols or "completion" in cols:
            return "has both messages and prompt/completion columns"
        return None
    missing = [c for c in ("prompt", "completion") if c not in cols]
    if missing:
        return f"has no column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}"
    return None


def _check_train_data(cx: Context, path: Path, src: A.TrainSource) -> None:
    """The rows' shape, with the same reader training uses (torch-free),
    so a bad row is a check error naming its line, before any training."""
    from ..models.train_rows import read_rows

    try:
        if path.stat().st_size > MAX_CHECKED_DATA_BYTES:
            return  # big data: checked row by row when training starts
        read_rows(path)
    except LmlangError as e:
        cx.error(f"bad training data: {e.message}", src, e.hint or "see the data format in lmlang.models.training")
    except OSError as e:
        cx.error(f"cannot read training data {src.data.describe()}: {e.strerror}", src)


def _check_train_options(cx: Context, src: A.TrainSource) -> None:
    from ..models import options as model_options  # only scripts that train pay for the table

    problem = model_options.check_train_method(src.method)
    if problem is not None:
        cx.error(problem.message, src, problem.hint)
        return
    method, block = src.method, src.options
    seen = set()
    given: dict[str, tuple] = {}  # option -> (value, entry), for the rules across options
    for e in block.entries:
        key = key_name(e.key)
        if key is None or key not in model_options.train_option_names(method):
            text = key_text(e.key)
            if key is not None and key not in model_options.TRAIN_MODEL_OPTIONS:
                p = model_options.check_train_option(key, None, method)
                hint = p.hint if p is not None else ""
            else:
                hint = cx.did_you_mean(text, model_options.train_option_names(method), known="options")
            where = f" for train {method}" if method != "lora" else ""
            cx.error(f"unknown training option '{text}'{where}", e.key, hint)
            continue
        if key in seen:
            cx.error(f"option '{key}' given twice", e.key)
        seen.add(key)
        if key in model_options.TRAIN_MODEL_OPTIONS:
            check_model_expr(cx, e.value, allow_router=False)
            _refuse(cx, e.value, "weights", "be trained on" if key == "base" else "be the old model of an update")
            continue
        value = plain_value(e.value)
        problem = model_options.check_train_option(key, None if value is NOT_PLAIN else value, method)
        if problem is not None:
            cx.error(problem.message, e.value, problem.hint)
        else:
            given[key] = (value, e)
    if "flip_weight" in given and "compatible_with" not in seen:
        cx.error(
            "flip_weight needs compatible_with",
            given["flip_weight"][1].key,
            "name the old model the update must stay compatible with: compatible_with: base + old",
        )
    given.pop("flip_weight", None)
    problem = model_options.check_train_combination(method, {k: v for k, (v, _) in given.items()})
    if problem is not None:
        node = given[problem.option][1].value if problem.option in given else src
        cx.error(problem.message, node, problem.hint)


def adapter_method(cx: Context, name: str) -> str:
    """The PEFT method of a declared adapter: its `train` method, or what a
    `lora "folder"`'s adapter_config.json says (lora, dora, ia3, adalora);
    "lora" for merges of adapters and folders that cannot be read."""
    d = cx.out.adapters.get(name)
    src = getattr(d, "source", None)
    if isinstance(src, A.TrainSource):
        return src.method
    if isinstance(src, A.LoraSource):
        try:
            path = cx.out.path_for(src.path, src) / "adapter_config.json"
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, LmlangError, AttributeError):
            return "lora"
        if not isinstance(config, dict):
            return "lora"
        kind = str(config.get("peft_type", "LORA")).lower()
        return "dora" if kind == "lora" and config.get("use_dora") else kind
    return "lora"


def _refuse_unmergeable(cx: Context, member) -> None:
    """A merge folds LoRA deltas B A into weights; a DoRA, IA3 or AdaLoRA
    adapter is not such a delta, so merging it is refused here, not at run time."""
    for name, node in model_refs(member):
        if name in cx.out.adapters:
            method = adapter_method(cx, name)
            if method != "lora":
                cx.error(
                    f"adapter '{name}' is a {method} adapter; merges combine LoRA deltas only",
                    node,
                    "apply it at query time instead (base + " + name + "), or train it with `train lora`",
                    code="merge-method",
                )


# ---------------------------------------------------------------- merges


def check_merge(cx: Context, method: str, block: A.Block, over_adapters: bool = False) -> None:
    """`merge METHOD { base: ..., models: {...}, options }` of models, or of
    adapters (`over_adapters`: no base; the members are adapters)."""
    from ..merge import options as merge_options  # only scripts that merge pay for the table

    if method in COMPOSE_MERGES:
        cx.error(
            f"merge {method} makes a model, not an adapter",
            block,
            f"declare it as a model: model NAME = merge {method} {{ base: ..., models: [base + a, ...] }}",
        )
        return
    if method not in merge_options.METHODS:
        cx.error(
            f"unknown merge method '{method}'",
            block,
            cx.did_you_mean(method, merge_options.method_names(), known="methods"),
        )
        return
    entries = _MergeEntries(cx, over_adapters)
    for e in block.entries:
        entries.read(e)
    if not entries.has_models:
        cx.error(f"merge {method} needs models: {{ ... }}", block, "list the models with their weights")
        return
    opts = entries.options
    step = {k: opts.pop(k) for k in merge_options.STEP_OPTIONS if k in opts}
    for p in merge_options.step_option_problems({k: v for k, (v, _e) in step.items()}, adapters=over_adapters):
        entry = step[p.option][1]
        cx.error(p.message, entry.key if p.code == "not-applicable" else entry.value, p.hint)
    compat = step.get("compat", ("lmlang",))[0]
    if compat not in merge_options.MERGE_COMPAT:
        compat = "lmlang"
    plain = {k: v for k, (v, _e) in opts.items()}
    params = [p for _, p in entries.members]
    if over_adapters:
        problems = merge_options.adapter_merge_problems(
            method, plain, params, compat=compat, n_adapters=entries.n_models
        )
    else:
        problems = merge_options.option_problems(
            method, plain, params, compat=compat, n_models=entries.n_models, has_base=entries.has_base
        )
    for p in problems:
        _report_merge_problem(cx, method, p, block, opts, entries.members)
    if not over_adapters:
        check_compatible(cx, [*entries.base_nodes, *(m for m, _ in entries.members)], "merge")


def _report_merge_problem(cx: Context, method: str, p, block: A.Block, opts: dict, members: list) -> None:
    from ..merge import options as merge_options

    node, message = block, p.message
    if p.model is not None:
        if p.model < len(members):
            node = members[p.model][0]
        else:
            message = f"model {p.model + 1}: {message}"
    elif p.option in opts:
        entry = opts[p.option][1]
        node = entry.key if p.code == "unknown-option" else entry
    hint = p.hint
    if p.code == "unknown-option" and p.option == "weight":
        hint = f"{method} takes no per-model weight: write models: [a, b]"
    elif p.code == "unknown-option" and not hint:
        hint = f"{method} takes: " + (", ".join(merge_options.METHODS[method].options) or "none")
    cx.error(message if message.startswith("merge") else f"merge {method}: {message}", node, hint)


class _MergeEntries:
    """A merge block read entry by entry: its base, its members with their
    parameters, and its other options as plain values."""

    def __init__(self, cx: Context, over_adapters: bool):
        self.cx, self.over_adapters = cx, over_adapters
        self.options: dict[str, tuple] = {}  # key text -> (plain value, entry)
        self.members: list[tuple] = []  # (member node, its parameters) for members that read
        self.n_models = 0
        self.has_models = self.has_base = False
        self.base_nodes: list = []
        self.seen: set[str] = set()

    def read(self, e: A.Entry) -> None:
        cx, key, text = self.cx, key_name(e.key), key_text(e.key)
        if text in self.seen:
            cx.error(f"merge option '{text}' given twice", e.key)
            return
        self.seen.add(text)
        if key == "base":
            if self.over_adapters:
                cx.error(
                    "an adapter merge takes no base (adapters are deltas of one base)",
                    e.key,
                    "list the adapters under models: { ... }",
                )
            else:
                self.has_base = True
                self.base_nodes = [e.value]
                check_model_expr(cx, e.value, allow_router=False)
                _refuse(cx, e.value, "merge", "be merged")
        elif key == "models":
            self._read_members(e)
        else:
            v = plain_value(e.value)
            if v is NOT_PLAIN and isinstance(e.value, A.ModelRef):
                v = e.value.name  # bare words such as `compat: mergekit`
            if v is NOT_PLAIN:
                cx.error(f"merge option '{text}' must be a number, string, bool or list", e.value)
            else:
                self.options[text] = (v, e)

    def _read_members(self, e: A.Entry) -> None:
        cx, out = self.cx, self.cx.out
        self.has_models = True
        members = merge_members(e.value)
        if not members:
            cx.error("models: expects a map { model: weight, ... } or a list [model, ...]", e.value)
            return
        for member, weight in members:
            self.n_models += 1
            _refuse_unmergeable(cx, member)
            if not self.over_adapters:
                check_model_expr(cx, member, allow_router=False)
                _refuse(cx, member, "merge", "be merged")
            elif key_name(member) not in out.adapters:
                name, text = key_name(member), key_text(member)
                kind = out.kind_of(name) if name else ""
                cx.error(
                    f"'{text}' is {kind or 'not an adapter'}" + (", not an adapter" if kind else ""),
                    member,
                    cx.did_you_mean(text, out.adapters),
                )
            params = _member_params(cx, weight) if weight is not None else {}
            if params is not None:
                self.members.append((member, params))


def _member_params(cx: Context, value) -> dict | None:
    """A member's merge parameters: `{ weight: w, density: d }` or a weight."""
    if isinstance(value, A.Block):
        params = {}
        for e in value.entries:
            v = plain_value(e.value)
            if v is NOT_PLAIN:
                cx.error("per-model merge parameters must be numbers", e.value)
                return None
            params[key_text(e.key)] = v
        return params
    v = plain_value(value)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return {"weight": float(v)}
    cx.error("a model's merge weight must be a number or { weight: w, density: d }", value)
    return None


# ---------------------------------------------------------------- cycles


def check_cycles(cx: Context) -> None:
    """A model or adapter built, through other declarations, from itself."""
    graph: dict[str, list[tuple[str, A.Node]]] = {}
    for name, d in cx.out.models.items():
        graph[name] = list(model_refs(d.expr))
    for name, d in cx.out.adapters.items():
        graph[name] = list(source_refs(d.source))
    state: dict[str, int] = {}
    reported = set()

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for ref, node in graph.get(n, ()):
            if ref not in graph:
                continue
            if state.get(ref) == 1:
                cycle = path[path.index(ref) :] + [ref] if ref in path else [n, ref]
                key = frozenset(cycle)
                if key not in reported:
                    reported.add(key)
                    cx.error("cycle: " + " -> ".join(cycle), node, "a model cannot be built from itself")
            elif state.get(ref) is None:
                visit(ref, path + [ref])
        state[n] = 2

    for n in graph:
        if state.get(n) is None:
            visit(n, [n])
