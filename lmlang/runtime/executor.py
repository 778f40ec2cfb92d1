"""Runs a compiled graph: builds model nodes on demand (once per process),
runs query calls through the result cache and the decoding loop, and runs
the flow of many rows at once.

Rows and their independent steps advance together (schedule.py,
prefetch.py); every call that waits goes to `run_calls`, which answers what
the result cache holds, routes what a router decides, and decodes the rest
in shared batches (dispatch.py). torch is imported only when something must
decode: a run answered from the cache never loads a model."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, cast

from ..errors import LmlangError, LmlangRuntimeError, ScriptError
from ..graph import ApplySpec, Compiled, FuseSpec, InputSpec, QuerySpec, RouterSpec, StepSpec
from ..graph.specs import DefSpec
from ..source import span_of
from .dispatch import SAMPLING, Job, Strategy, decode_jobs
from .flow import Interpreter
from .prompt import value_text
from .schedule import Scheduler
from .trace import QueryTrace, Trace

if TYPE_CHECKING:
    from .result_cache import CallKeys


class InputError(ScriptError):
    """A missing or ill-typed program input (exit code 2, like a script error)."""


_SURROGATE = re.compile("[\ud800-\udfff]")


def coerce_input(name: str, value, type_name: str):
    """An input value checked against its declared type, never coerced
    silently. Text (from --set or a CSV cell) is read as the type says:
    an integer literal for int, a finite number for float, true/false
    (yes/no, 1/0) for bool, JSON text for lists and json. Values already
    typed (JSONL, the Python API) must be of the type; an int is a float,
    a whole float (2.0) an int, and a number or boolean reads as its text
    for str. NaN, Infinity, a lone surrogate, null for a str or a dict
    for a list are InputErrors naming the input."""
    try:
        return _coerce(value, type_name, 0)
    except _Mismatch as m:
        where = f" (at {m.path})" if m.path else ""
        raise InputError(f"input '{name}' expects {type_name}, got {m.got}{where}", hint=m.hint) from None


class _Mismatch(Exception):
    def __init__(self, got: str, hint: str = "", path: str = ""):
        super().__init__(got)
        self.got, self.hint, self.path = got, hint, path


_INT_TEXT = re.compile(r"\s*[+-]?[0-9]+\s*")
_FLOAT_TEXT = re.compile(r"\s*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*")
_BOOL_TEXT = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _shown(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, (dict, list, tuple)):
        return f"a {'dict' if isinstance(value, dict) else 'list'}"
    if isinstance(value, (str, int, float, bool)):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return f"a Python {type(value).__name__}"


def _text(value: str) -> str:
    if _SURROGATE.search(value):
        raise _Mismatch("a string with a lone surrogate, which is not text")
    return value


def _coerce(value, t: str, depth: int):
    from ..jsonl import MAX_DEPTH

    if depth > MAX_DEPTH:
        raise _Mismatch(f"a value nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Mismatch(repr(value), "JSON has no NaN or Infinity; give a finite number")
    if t == "str":
        if isinstance(value, str):
            return _text(value)
        if isinstance(value, (bool, int, float)):
            return value_text(value)
        raise _Mismatch(
            _shown(value), "give text; encode structured values as a JSON string, or declare the input json"
        )
    if t == "int":
        if isinstance(value, bool):
            raise _Mismatch(_shown(value))
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and _INT_TEXT.fullmatch(value):
            try:
                return int(value)
            except ValueError:  # more digits than Python converts (4,300)
                raise _Mismatch("an integer with too many digits") from None
        raise _Mismatch(_shown(value))
    if t == "float":
        if isinstance(value, bool) or not (
            isinstance(value, (int, float)) or isinstance(value, str) and _FLOAT_TEXT.fullmatch(value)
        ):
            raise _Mismatch(_shown(value))
        try:
            out = float(value)
        except OverflowError:  # an int past 1.8e308
            out = math.inf
        if not math.isfinite(out):
            raise _Mismatch(_shown(value) + ", beyond a float's range")
        return out
    if t == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOL_TEXT:
            return _BOOL_TEXT[value.strip().lower()]
        raise _Mismatch(_shown(value), "give true or false")
    if t.startswith("list[") and t.endswith("]") or t == "json":
        if isinstance(value, str):
            value = _json_text(value)
        if t == "json":
            return _json_value(value, depth)
        if not isinstance(value, (list, tuple)):
            raise _Mismatch(_shown(value), "give a JSON list")
        item = t[len("list[") : -1]
        items = []
        for i, x in enumerate(value):
            try:
                items.append(_coerce(x, item, depth + 1))
            except _Mismatch as m:
                raise _Mismatch(m.got, m.hint, f"[{i}]{m.path}") from None
        return items
    return value  # any: whatever the caller gives


def _json_text(text: str):
    from ..jsonl import loads_strict

    try:
        return loads_strict(text)
    except RecursionError:
        raise _Mismatch("JSON text nested too deeply") from None
    except ValueError as e:
        raise _Mismatch(f"{_shown(text)}, which is not JSON ({e})") from None


def _json_value(value, depth: int):
    """A JSON value as plain data (tuples become lists), or a _Mismatch."""
    from ..jsonl import MAX_DEPTH

    if depth > MAX_DEPTH:
        raise _Mismatch(f"a value nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Mismatch(repr(value), "JSON has no NaN or Infinity")
        return value
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, (list, tuple)):
        out = []
        for i, x in enumerate(value):
            try:
                out.append(_json_value(x, depth + 1))
            except _Mismatch as m:
                raise _Mismatch(m.got, m.hint, f"[{i}]{m.path}") from None
        return out
    if isinstance(value, dict):
        obj = {}
        for k, x in value.items():
            if not isinstance(k, str):
                raise _Mismatch(f"a dict key {_shown(k)}, not a string")
            try:
                obj[_text(k)] = _json_value(x, depth + 1)
            except _Mismatch as m:
                raise _Mismatch(m.got, m.hint, f"[{json.dumps(k)}]{m.path}") from None
        return obj
    raise _Mismatch(_shown(value), "a json input takes dicts, lists, strings, numbers, booleans and null")


@dataclass
class RowOutcome:
    index: int
    values: dict | None = None
    error: LmlangError | None = None


class Executor:
    """Runs one Compiled graph. Its settings are fields its owner (a
    Program) sets: `batch_size` calls decode together; `seed`, when not None,
    overrides every sampling decoder's seed (lmlang run --seed); `trace`
    collects a record per query call; `cache` (a ResultCache or None) answers
    repeated calls; `parallel` makes independent calls of a row together;
    `threads` is torch's thread count (None: runtime/threads.py picks);
    `dtype` ("auto", a dtype name, or {model name: dtype}) and `device_map`
    say how weights load; `strategy` is how calls share batches (dispatch.py)."""

    def __init__(
        self,
        compiled: Compiled,
        functions: dict | None = None,
        device: str = "auto",
        trace: Trace | None = None,
        batch_size: int = 32,
        seed: int | None = None,
        *,
        cache=None,
        parallel: bool = True,
        threads: int | None = None,
        dtype="auto",
        device_map: str | None = None,
    ):
        self.c = compiled
        self.functions = dict(functions or {})
        self.device = device
        self.trace = trace if trace is not None else Trace()
        self.batch_size = batch_size
        self.seed = seed
        self.cache = cache
        self.parallel = parallel
        self.threads = threads
        self.dtype = dtype
        self.device_map = device_map
        self.strategy = Strategy()
        self._lms: dict = {}  # model node id -> its LM
        self._pool_lms: dict = {}  # (pool router node id, adapter stack) -> its LM
        self._routers: dict = {}  # router node id -> Router
        self._base_lms: dict = {}  # base folder -> the plain model (hidden-state embeddings)
        self._stacks: dict[int, tuple] = {}  # id(LM) -> (its AdapterHost, adapter stack), for mixed batches
        self._dtypes: dict | None = None  # folder -> dtype, from a per-model dtype setting
        self._keys: CallKeys | None = None  # made at the first cached call
        self._torch_ready = False
        self._engines: dict = {}  # model node id -> its engine (engine_for)
        self.flow_stream = None  # on_token(query, hole, piece) for the flow's calls (Program.run_streamed)
        from .build import Builder

        self.builder = Builder(compiled, device=device)
        self.query_ids = {s.name: n for n, s in self.c.nodes.items() if isinstance(s, QuerySpec)}

    # ------------------------------------------------------------ models
    def _prepare_torch(self) -> None:
        """Before the first model loads: torch's thread count (threads.py)."""
        if not self._torch_ready:
            from .threads import apply_threads

            apply_threads(self.threads)
            self._torch_ready = True

    def lm(self, nid: str):
        if nid not in self._lms:
            self._prepare_torch()
            name = self.c.display_name(nid)
            try:
                spec = self.c.spec(nid)
                # fuse dynamic: members named as the script names them (the trace's weights)
                members = [self.expert_name(m) for m, _ in spec.members] if isinstance(spec, FuseSpec) else None
                self._lms[nid] = self.lm_for_value(self.builder.value(nid), name, members)
            except LmlangError as e:
                raise e.at_node(span_of(getattr(self.c.spec(nid), "loc", "")), name)
        return self._lms[nid]

    def _load(self, path):
        from ..models.loader import load_model

        return load_model(path, device=self.device, dtype=self.dtype_for(path), device_map=self.device_map)

    def dtype_for(self, path) -> str:
        """The inference dtype of the model in folder `path` (the `dtype` setting)."""
        if self.dtype is None or isinstance(self.dtype, str):
            return self.dtype or "auto"
        if self._dtypes is None:
            self._dtypes = self._dtype_table()
        return self._dtypes.get(str(Path(path).resolve()), "auto")

    def _dtype_table(self) -> dict:
        """{model name: dtype} as {folder: dtype}: an adapted model runs in its base's dtype."""
        from .build import Folder, Stacked

        models = [
            n
            for n, i in self.c.names.items()
            if i in self.c.nodes and self.c.spec(i).kind in ("model", "apply", "merge")
        ]
        table = {}
        for name, dt in self.dtype.items():
            if name not in models:
                raise LmlangRuntimeError(
                    f"dtype: the script has no model named '{name}'", hint="models: " + ", ".join(models)
                )
            value = self.builder.value(self.c.names[name])
            folder = value.path if isinstance(value, Folder) else value.base if isinstance(value, Stacked) else None
            if folder is None:
                raise LmlangRuntimeError(f"dtype: '{name}' is a fusion; give its members' dtypes instead")
            table[str(Path(folder).resolve())] = dt
        return table

    def lm_for_value(self, value, name: str, member_names: list | None = None):
        from transformers.utils import logging as hf_logging

        from .build import Folder, Fused, Stacked, Twin
        from .lm import HFModel

        hf_logging.disable_progress_bar()  # lmlang prints its own progress
        if isinstance(value, Folder):
            return HFModel(self._load(value.path), name=name)
        if isinstance(value, Stacked):
            from ..models.adapters import AdapterHost

            loaded = self._load(value.base)
            host = AdapterHost.for_model(loaded)
            pairs = []
            for folder, scale in value.stack:
                key = str(folder)
                if key not in host.names:
                    host.add(key, Path(folder))
                pairs.append((key, scale))
            stack = tuple(pairs)
            base_lm = self._base_lm(loaded, value.base)
            lm = base_lm.with_hook(name, lambda: host.activate(stack))
            self._stacks[id(lm)] = (host, stack)
            return lm
        if isinstance(value, Fused) and value.mode == "dynamic":
            from .fusion_dynamic import DynamicFusedLM

            names = member_names or [f"{name}[{i}]" for i in range(len(value.members))]
            experts = [self.lm_for_value(v, names[i]) for i, (v, _) in enumerate(value.members)]
            anchor, target = (
                None if v is None else self.lm_for_value(v, f"{name}.{role}")
                for v, role in ((value.anchor, "anchor"), (value.target, "target"))
            )
            return DynamicFusedLM(experts, anchor, target, dict(value.options), name=name)
        if isinstance(value, Twin):
            from .twin_lm import twin_lm

            return twin_lm(self, value, name)
        if isinstance(value, Fused):
            from .fusion import FusedLM

            members = [(self.lm_for_value(v, f"{name}[{i}]"), float(w)) for i, (v, w) in enumerate(value.members)]
            return FusedLM(members, value.mode, dict(value.options), name=name)
        raise LmlangRuntimeError(f"cannot run {value!r}")

    def mixed_lm(self, lms: list):
        """One model whose row i runs lms[i]'s adapter stack (all over one
        base): a batch that mixes experts (dispatch.py)."""
        entries = [self._stacks.get(id(lm), (None, ())) for lm in lms]
        stacks = [stack for _, stack in entries]
        hosts = {id(h): h for h, _ in entries if h is not None}
        if not hosts or all(s == stacks[0] for s in stacks):
            return lms[0]
        (host,) = hosts.values()
        base = self._base_lm(host.loaded, host.loaded.path)
        mixed = base.with_hook("+".join(sorted({lm.name for lm in lms})), lambda: host.activate_rows(stacks))
        mixed.prefix_reuse = False  # rows hold different weights: no shared prefix, no cached one
        return mixed

    def base_lm(self, nid: str):
        """The plain model under a model node (for hidden-state embeddings)."""
        from .build import Folder, Stacked

        self._prepare_torch()
        value = self.builder.value(nid)
        if isinstance(value, Stacked):
            value = Folder(value.base)
        if not isinstance(value, Folder):
            raise LmlangRuntimeError("encoder: base needs experts built on a plain model, not fusions")
        return self._base_lm(self._load(value.path), value.path)

    def expert_name(self, nid: str) -> str:
        names = self.c.node_names.get(nid)
        if names:
            return names[0]
        spec = self.c.spec(nid)
        if isinstance(spec, ApplySpec):
            parts = [self.expert_name(spec.base)]
            for a, scale in spec.adapters:
                n = self.expert_name(a)
                parts.append(n if scale == 1.0 else f"{n} * {scale:g}")
            return " + ".join(parts)
        return spec.label()

    def router(self, nid: str):
        if nid not in self._routers:
            from .routing import PoolRouter, Router

            self._prepare_torch()
            spec = self.c.spec(nid)
            assert isinstance(spec, RouterSpec)  # router() is asked only about router nodes
            if spec.pool is not None:
                assert spec.base is not None  # the checker requires `base:`
                self._routers[nid] = PoolRouter(spec, self.base_lm(spec.base), self._pool_base(spec.base))
            else:
                names = {e: self.expert_name(e) for e, _ in spec.experts}
                self._routers[nid] = Router(spec, names, self.lm, self.base_lm)
        return self._routers[nid]

    def _pool_base(self, nid: str) -> Path:
        """The folder of a pool's base: its adapters load into that model."""
        from .build import Folder

        value = self.builder.value(nid)
        if not isinstance(value, Folder):
            raise LmlangRuntimeError(
                "route pool: the base must be a plain model (not adapted, merged or fused)",
                hint="its adapters are trained on one model: name that model as base",
            )
        return Path(value.path)

    def pool_lm(self, rid: str, stack: tuple):
        """The base of pool router `rid` with one row's adapter mixture
        ((member, weight), ...) in effect; made once per mixture, and known
        to mixed_lm, so rows of different mixtures can share one batch."""
        key = (rid, stack)
        if key not in self._pool_lms:
            from ..models.adapters import AdapterHost

            router = self.router(rid)
            path = self._pool_base(router.spec.base)
            loaded = self._load(path)
            host = AdapterHost.for_model(loaded)
            router.pool.attach(host)
            label = " + ".join(n if w == 1.0 else f"{n} * {w:.3g}" for n, w in stack)
            lm = self._base_lm(loaded, path).with_hook(f"{router.spec.name}[{label}]", lambda: host.activate(stack))
            self._stacks[id(lm)] = (host, stack)
            self._pool_lms[key] = lm
        return self._pool_lms[key]

    def _base_lm(self, loaded, path):
        from .lm import HFModel

        key = str(path)
        if key not in self._base_lms:
            self._base_lms[key] = HFModel(loaded, name=Path(path).name)
        return self._base_lms[key]

    # ------------------------------------------------------------ queries
    def bind_args(self, spec: QuerySpec, args: list, kwargs: dict) -> dict:
        params = [p for p, _ in spec.params]
        if len(args) > len(params):
            raise LmlangRuntimeError(f"{spec.name}() takes {len(params)} arguments, got {len(args)}")
        env = dict(zip(params, args))
        for k, v in kwargs.items():
            if k not in params:
                raise LmlangRuntimeError(f"{spec.name}() has no parameter '{k}'")
            if k in env:
                raise LmlangRuntimeError(
                    f"{spec.name}() got '{k}' twice, by position and by name", hint="give each parameter once"
                )
            env[k] = v
        missing = [p for p in params if p not in env]
        if missing:
            raise LmlangRuntimeError(f"{spec.name}() is missing {', '.join(missing)}")
        for p, t in spec.params:
            if t in ("int", "float", "bool", "str") and not isinstance(env[p], (dict, list)):
                env[p] = coerce_input(p, env[p], t)
        return env

    def call_query(self, name: str, args: list, kwargs: dict, on_token=None) -> dict:
        """One query on one row (the API's program.queries[name](...));
        on_token(row, hole, text) streams values as they grow."""
        stream = (lambda h, t: on_token(0, h, t)) if on_token else None
        (out,) = self.run_calls([(name, list(args), dict(kwargs), None, None, stream)])
        if isinstance(out, LmlangError):
            raise out
        return out

    def run_calls(self, calls: list[tuple]) -> list:
        """Answer many query calls at once: (name, args, kwargs, row, position,
        stream) each, where position names the call within its row's flow
        (its sampling seed derives from it). Each result is a dict of values
        or the LmlangError of that call; other calls go on."""
        results: list = [None] * len(calls)
        jobs: list[Job] = []
        for i, (name, args, kwargs, row, position, stream) in enumerate(calls):
            nid = self.query_ids.get(name)
            if nid is None:
                results[i] = LmlangRuntimeError(f"undefined function '{name}'")
                continue
            spec = self.c.spec(nid)
            assert isinstance(spec, QuerySpec)  # query_ids maps names to query nodes
            try:
                env = self.bind_args(spec, args, kwargs)
            except LmlangError as e:
                results[i] = e
                continue
            jobs.append(Job(i, spec, env, spec.model, row, self.call_seed(spec, row, position), stream=stream))
        texts = self._router_texts(jobs, results)
        jobs = [j for j in jobs if results[j.index] is None]
        todo = self._from_cache(jobs, texts, results) if self.cache is not None else jobs
        self._route(todo, texts)
        try:
            decode_jobs(self, [j for j in todo if j.result is None], self.strategy)
        except LmlangError as e:  # nothing of it decoded (e.g. a model that cannot load)
            for j in todo:
                if j.result is None:
                    j.result = e
        for job in todo:
            results[job.index] = job.result
            if self.cache is not None and job.key is not None and isinstance(job.result, dict):
                self.cache.put(
                    job.key,
                    query=job.spec.name,
                    model=getattr(job.lm, "name", ""),
                    result=job.result,
                    texts=job.texts,
                    prompt=job.prompt,
                )
        return results

    def call_seed(self, spec: QuerySpec, row, position) -> int | None:
        """This call's sampling seed: the decoder's (or --seed's) seed, mixed
        with the row and the call's position in the flow, so each call of a
        sampling query draws anew, reproducibly (None: the decoder does not sample)."""
        name, opts = spec.decoder
        if name not in SAMPLING:
            return None
        base = self.seed if self.seed is not None else dict(opts).get("seed", 0)
        text = json.dumps([base, row, position], default=str)
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF

    def engine_for(self, nid: str):
        """The engine that runs queries on model node `nid` (runtime/engines:
        the local decoding loop, or requests to a server), made once per node."""
        if nid not in self._engines:
            from .engines import engine_for_node

            self._engines[nid] = engine_for_node(self, nid)
        return self._engines[nid]

    def is_served(self, nid: str) -> bool:
        """Whether model node `nid` runs on a server (its calls go to its engine, not to a local batch)."""
        from .engines import source_kind_of

        return self.c.spec(nid).kind != "router" and source_kind_of(self.c, nid) in ("server", "vllm")

    def is_remote(self, nid: str) -> bool:
        """Whether model node `nid` (or, for a router, one of its experts) is a server lmlang does not manage."""
        from .engines import source_kind_of

        spec = self.c.spec(nid)
        nids = spec.deps() if spec.kind == "router" else (nid,)
        return any(self.c.spec(n).kind != "router" and source_kind_of(self.c, n) == "server" for n in nids)

    def _router_texts(self, jobs: list[Job], results: list) -> dict:
        """The router argument's text of each routed call (job index -> text)."""
        texts = {}
        interp = None
        for job in jobs:
            if self.c.spec(job.spec.model).kind != "router":
                continue
            interp = interp or Interpreter(self.functions, set())
            try:
                (arg,) = [_eval_pure(interp, a, job.env) for a in job.spec.router_args]
                texts[job.index] = arg if isinstance(arg, str) else value_text(arg)
            except LmlangError as e:
                results[job.index] = e
        return texts

    def _route(self, jobs: list[Job], texts: dict) -> None:
        """Each routed call's expert (a router decides for many rows at once)."""
        by_router: dict = {}
        for job in jobs:
            if job.index in texts:
                by_router.setdefault(job.spec.model, []).append(job)
        for rid, group in by_router.items():
            try:
                router = self.router(rid)
                if getattr(router, "pool", None) is not None:
                    # a pool: each row decodes on the base with its own adapter mixture
                    for job, (stack, top) in zip(group, router.mixtures([texts[j.index] for j in group])):
                        job.lm_nid, job.expert, job.mix, job.mix_router = router.spec.base, top, stack, rid
                    continue
                choices = router.route([texts[j.index] for j in group])
            except LmlangError as e:
                for j in group:
                    j.result = e
                continue
            for job, expert in zip(group, choices):
                job.lm_nid, job.expert = expert, self.expert_name(expert)

    def _from_cache(self, jobs: list[Job], texts: dict, results: list) -> list[Job]:
        """Answer the calls the result cache holds; the others come back."""
        from .prompt_flow import is_grown

        if self._keys is None:
            from .result_cache import CallKeys

            self._keys = CallKeys(
                self.c, {"device": self.device_kind(), "dtype": self.dtype, "device_map": self.device_map}
            )
        misses = []
        for job in jobs:
            if self.is_remote(job.spec.model):
                misses.append(job)  # a remote server's answers may change behind its URL: never cached
                continue
            if self.functions and is_grown(job.spec.segments):
                # a registered Python function may answer differently on each
                # call, and its code is not part of the key: never cached
                misses.append(job)
                continue
            try:
                job.key = self._keys.call_key(job.spec, job.env, job.seed, texts.get(job.index))
            except LmlangError as e:  # a model that cannot be found fails the call, as decoding would
                results[job.index] = e
                continue
            entry = self.cache.get(job.key)
            if entry is None:
                misses.append(job)
                continue
            out, holes = entry["result"], entry["texts"]
            results[job.index] = out
            if job.stream:
                for hole, text in holes.items():
                    job.stream(hole, text)
            self.trace.add(
                QueryTrace(
                    query=job.spec.name,
                    model=str(entry.get("model", "")),
                    prompt=str(entry.get("prompt", "")),
                    values=dict(holes),
                    decoder=job.spec.decoder[0],
                    expert=out.get("expert"),
                    row=job.row,
                    cached=True,
                )
            )
        return misses

    def device_kind(self) -> str:
        """What the device setting resolves to (results may differ across
        devices), told without importing torch: "auto" is CUDA exactly when a
        GPU is visible and torch is a CUDA build (torch's version, which says
        which, is part of the cache's code fingerprint)."""
        if self.device_map:
            return f"map:{self.device_map}"
        if self.device != "auto":
            return self.device.split(":")[0]
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpu = os.path.exists("/dev/nvidiactl") and visible not in ("", "-1")
        return "auto:gpu" if gpu else "auto:cpu"

    # ------------------------------------------------------------ flow
    def run(self, inputs: dict) -> dict:
        (outcome,) = self.run_rows([inputs])
        if outcome.error is not None:
            raise outcome.error
        assert outcome.values is not None  # a row without an error ends with its emitted values
        return outcome.values

    def run_rows(
        self, rows: list[dict], on_done: Callable[[RowOutcome], None] | None = None, row_ids: list[int] | None = None
    ) -> list[RowOutcome]:
        """Run the flow for many input rows. Rows advance together: whenever
        calls wait (of several rows, or of independent steps of one row),
        they decode in shared batches."""
        row_ids = row_ids or list(range(len(rows)))
        steps = [cast(StepSpec, self.c.spec(n)).stmt for n in self.c.steps]  # c.steps lists step nodes
        interp = Interpreter(self.functions, set(self.query_ids), prefetch=self.parallel, defs=self.defs())
        outcomes = [RowOutcome(rid) for rid in row_ids]

        def finish(r: int, values=None, error=None):
            outcomes[r].values, outcomes[r].error = values, error
            if on_done:
                on_done(outcomes[r])

        def dispatch(slots):
            stream = self.flow_stream  # `lmlang run --stream` (Program.run_streamed)
            try:
                return self.run_calls(
                    [
                        (
                            s.call.name,
                            s.call.args,
                            s.call.kwargs,
                            s.row.id,
                            s.call.position,
                            (lambda h, t, q=s.call.name: stream(q, h, t)) if stream else None,
                        )
                        for s in slots
                    ]
                )
            except LmlangError as e:
                return [e] * len(slots)

        sched = Scheduler(dispatch, finish)
        for r, inputs in enumerate(rows):
            try:
                env = self.bind_inputs(inputs)
            except LmlangError as e:
                finish(r, error=e)
                continue
            sched.add_row(r, row_ids[r], interp.run_steps(steps, env))
        sched.run()
        return outcomes

    def defs(self) -> dict:
        """The program's flow functions (DefSpec nodes) by name."""
        return {s.name: s for s in self.c.nodes.values() if isinstance(s, DefSpec)}

    def bind_inputs(self, inputs: dict) -> dict:
        if not isinstance(inputs, Mapping):
            raise InputError(f"a row must map input names to values, got {_shown(inputs)}")
        declared = {s.name: s for s in self.c.nodes.values() if isinstance(s, InputSpec)}
        unknown = [k for k in inputs if k not in declared]
        if unknown:
            raise InputError(
                f"unknown input '{unknown[0]}'", hint="declared inputs: " + (", ".join(declared) or "none")
            )
        env = {}
        for name, spec in declared.items():
            if name in inputs:
                env[name] = coerce_input(name, inputs[name], spec.type)
            elif spec.has_default:
                env[name] = _thaw(spec.default)
            else:
                raise InputError(f"missing input '{name}'", hint=f"pass it with --set {name}=... or a --data column")
        return env


def _eval_pure(interp, ir, env):
    """Evaluate an expression that may not call queries (router arguments)."""
    gen = interp.expr(ir, env)
    try:
        next(gen)
    except StopIteration as stop:
        return stop.value
    raise LmlangRuntimeError("a router's argument cannot call a query")


def _thaw(v):
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    return v
