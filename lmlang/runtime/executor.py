"""Runs a compiled graph: builds model nodes on demand (once per process),
runs query nodes through the decoding loop, and interprets flow steps in
order."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import LmlangError, LmlangRuntimeError, ScriptError
from ..graph import Compiled, InputSpec, QuerySpec
from .decode import QueryRun, run_decoder
from .flow import Interpreter
from .lm import HFModel, LM
from .prompt import render, value_text
from .trace import QueryTrace, Trace


class InputError(ScriptError):
    """A missing or ill-typed program input (exit code 2, like a script error)."""


def coerce_input(name: str, value, type_name: str):
    """Inputs from --set arrive as text; convert them to the declared type."""
    import json

    try:
        if type_name == "str":
            return value if isinstance(value, str) else str(value)
        if type_name == "int":
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if type_name == "float":
            return float(value)
        if type_name == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if type_name.startswith("list") or type_name == "json":
            return json.loads(value) if isinstance(value, str) else value
    except (ValueError, TypeError):
        raise InputError(f"input '{name}' expects {type_name}, got {value!r}") from None
    return value


@dataclass
class RowOutcome:
    index: int
    values: dict | None = None
    error: LmlangError | None = None


class Executor:
    """Runs one Compiled graph. Its settings are fields its owner (a
    Program) sets: `batch_size` rows decode together; `seed`, when not None,
    overrides every sampling decoder's seed (lmlang run --seed); `trace`
    collects a record per query."""

    def __init__(self, compiled: Compiled, functions: dict | None = None, device: str = "auto",
                 trace: Trace | None = None, batch_size: int = 32, seed: int | None = None):
        self.c = compiled
        self.functions = dict(functions or {})
        self.device = device
        self.trace = trace if trace is not None else Trace()
        self.batch_size = batch_size
        self.seed = seed
        self._lms: dict[str, LM] = {}                 # model node id -> its LM
        self._routers: dict = {}                      # router node id -> Router
        self._base_lms: dict[str, HFModel] = {}       # base folder -> the plain model (hidden-state embeddings)
        self._engines: dict = {}                      # model node id -> its engine (engine_for)
        from .build import Builder

        self.builder = Builder(compiled)
        self.query_ids = {s.name: n for n, s in self.c.nodes.items() if isinstance(s, QuerySpec)}

    # ------------------------------------------------------------ models
    def lm(self, nid: str) -> LM:
        if nid not in self._lms:
            self._lms[nid] = self.lm_for_value(self.builder.value(nid), self.c.display_name(nid))
        return self._lms[nid]

    def lm_for_value(self, value, name: str) -> LM:
        from transformers.utils import logging as hf_logging

        from ..models.loader import load_model
        from .build import Folder, Fused, Stacked

        hf_logging.disable_progress_bar()    # lmlang prints its own progress
        if isinstance(value, Folder):
            return HFModel(load_model(value.path, device=self.device), name=name)
        if isinstance(value, Stacked):
            from ..models.adapters import AdapterHost

            loaded = load_model(value.base, device=self.device)
            host = AdapterHost.for_model(loaded)
            stack = []
            for folder, scale in value.stack:
                key = str(folder)
                if key not in host.names:
                    host.add(key, Path(folder))
                stack.append((key, scale))
            stack = tuple(stack)
            base_lm = self._base_lm(loaded, value.base)
            return base_lm.with_hook(name, lambda: host.activate(stack))
        if isinstance(value, Fused):
            from .fusion import FusedLM

            members = [(self.lm_for_value(v, f"{name}[{i}]"), float(w)) for i, (v, w) in enumerate(value.members)]
            return FusedLM(members, value.mode, dict(value.options), name=name)
        raise LmlangRuntimeError(f"cannot run {value!r}")

    def base_lm(self, nid: str) -> HFModel:
        """The plain model under a model node (for hidden-state embeddings)."""
        from ..models.loader import load_model
        from .build import Folder, Stacked

        value = self.builder.value(nid)
        if isinstance(value, Stacked):
            value = Folder(value.base)
        if not isinstance(value, Folder):
            raise LmlangRuntimeError("encoder: base needs experts built on a plain model, not fusions")
        return self._base_lm(load_model(value.path, device=self.device), value.path)

    def expert_name(self, nid: str) -> str:
        names = self.c.node_names.get(nid)
        if names:
            return names[0]
        spec = self.c.spec(nid)
        if spec.kind == "apply":
            parts = [self.expert_name(spec.base)]
            for a, scale in spec.adapters:
                n = self.expert_name(a)
                parts.append(n if scale == 1.0 else f"{n} * {scale:g}")
            return " + ".join(parts)
        return spec.label()

    def router(self, nid: str):
        if nid not in self._routers:
            from .routing import Router

            spec = self.c.spec(nid)
            names = {e: self.expert_name(e) for e, _ in spec.experts}
            self._routers[nid] = Router(spec, names, self.lm, self.base_lm)
        return self._routers[nid]

    def _base_lm(self, loaded, path) -> HFModel:
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
        on_token as in run_query_rows."""
        (out,) = self.run_query_rows(name, [(list(args), dict(kwargs))], on_token=on_token)
        if isinstance(out, LmlangError):
            raise out
        return out

    def run_query_rows(self, name: str, calls: list[tuple[list, dict]], rows: list[int] | None = None,
                       on_token=None) -> list:
        """Run one query for many rows, batched; each entry is a result dict
        or the LmlangError of that row (other rows go on). on_token(i, hole,
        text) streams values as they grow (i indexes `calls`)."""
        nid = self.query_ids.get(name)
        if nid is None:
            raise LmlangRuntimeError(f"undefined function '{name}'")
        spec: QuerySpec = self.c.spec(nid)
        results: list = [None] * len(calls)
        envs = {}
        for i, (args, kwargs) in enumerate(calls):
            try:
                envs[i] = self.bind_args(spec, args, kwargs)
            except LmlangError as e:
                results[i] = e
        if self.c.spec(spec.model).kind == "router":
            by_expert = self._route(spec, envs, results)
        else:
            by_expert = {spec.model: sorted(envs)}
        from .engines import RowsJob

        for expert, todo in by_expert.items():
            routed = self.expert_name(expert) if expert != spec.model else None
            self.engine_for(expert).run_rows(RowsJob(spec, todo, envs, results, rows, routed, on_token, self.seed,
                                                     self.trace))
        return results

    def engine_for(self, nid: str):
        """The engine that runs queries on model node `nid` (runtime/engines:
        the local decoding loop, or requests to a server), made once per node."""
        if nid not in self._engines:
            from .engines import engine_for_node

            self._engines[nid] = engine_for_node(self, nid)
        return self._engines[nid]

    def _route(self, spec: QuerySpec, envs: dict, results: list) -> dict:
        """Route each row, then group rows by chosen expert (each expert decodes its rows batched)."""
        from .flow import Interpreter

        interp = Interpreter(self.functions, set())
        texts, ok = [], []
        for i in sorted(envs):
            try:
                (arg,) = [_eval_pure(interp, a, envs[i]) for a in spec.router_args]
                texts.append(arg if isinstance(arg, str) else value_text(arg))
                ok.append(i)
            except LmlangError as e:
                results[i] = e
        groups: dict = {}
        if ok:
            choices = self.router(spec.model).route(texts)
            for i, nid in zip(ok, choices):
                groups.setdefault(nid, []).append(i)
        return groups

    def _decode_group(self, spec: QuerySpec, lm: LM, group: list[int], envs: dict, results: list, rows,
                      expert: str | None = None, stream=None) -> None:
        t0 = time.perf_counter()
        runs, ok = [], []
        for i in group:
            try:
                prompt = render(spec.segments, envs[i], lm.tokenizer, spec.chat, spec.loc)
                runs.append(QueryRun(lm, prompt, dict(spec.constraints)))
                ok.append(i)
            except LmlangError as e:
                results[i] = e
        if not runs:
            return
        on_token = (lambda r, h, t: stream(ok[r], h, t)) if stream else None
        try:
            decoded = run_decoder(lm, runs, spec.decoder, spec.distribution, seed=self.seed, on_token=on_token)
        except LmlangError as e:
            if len(runs) == 1:
                results[ok[0]] = e
                return
            # Isolate the failing row: decode the group one by one.
            for i in ok:
                self._decode_group(spec, lm, [i], envs, results, rows, expert, stream)
            return
        wall = (time.perf_counter() - t0) / len(runs)
        for i, run, d in zip(ok, runs, decoded):
            out = dict(d.values)
            if d.distribution is not None:
                out["distribution"] = d.distribution
            if expert is not None:
                out["expert"] = expert
            results[i] = out
            holes = [vars(h) for h in d.holes]
            self.trace.add(QueryTrace(
                query=spec.name, model=lm.name, prompt=run.prompt.display(), values=dict(d.texts), holes=holes,
                forward_passes=d.forward_passes, tokens_generated=sum(h["generated"] for h in holes),
                tokens_forced=sum(h["forced"] for h in holes), wall_seconds=wall,
                decoder=spec.decoder[0], expert=expert, row=rows[i] if rows else None))

    # ------------------------------------------------------------ flow
    def run(self, inputs: dict) -> dict:
        (outcome,) = self.run_rows([inputs])
        if outcome.error is not None:
            raise outcome.error
        return outcome.values

    def run_rows(self, rows: list[dict], on_done: Callable[[RowOutcome], None] | None = None,
                 row_ids: list[int] | None = None) -> list[RowOutcome]:
        """Run the flow for many input rows. Rows advance together: whenever
        several rows wait on the same query, they decode as one batch."""
        row_ids = row_ids or list(range(len(rows)))
        steps = [self.c.spec(n).stmt for n in self.c.steps]
        interp = Interpreter(self.functions, set(self.query_ids))
        outcomes = [RowOutcome(rid) for rid in row_ids]
        gens, pending = {}, {}

        def finish(r: int, values=None, error=None):
            outcomes[r].values, outcomes[r].error = values, error
            if on_done:
                on_done(outcomes[r])

        def advance(r: int, value=None, error=None):
            try:
                req = gens[r].throw(error) if error is not None else gens[r].send(value)
                pending[r] = req
            except StopIteration as stop:
                finish(r, values=stop.value)
            except LmlangError as e:
                finish(r, error=e)

        for r, inputs in enumerate(rows):
            try:
                env = self.bind_inputs(inputs)
            except LmlangError as e:
                finish(r, error=e)
                continue
            gens[r] = interp.run_steps(steps, env)
            advance(r)
        while pending:
            name = next(iter(pending.values())).name
            waiting = [r for r, req in pending.items() if req.name == name]
            calls = [(pending[r].args, pending[r].kwargs) for r in waiting]
            try:
                results = self.run_query_rows(name, calls, [row_ids[r] for r in waiting])
            except LmlangError as e:
                results = [e] * len(waiting)
            for r, res in zip(waiting, results):
                del pending[r]
                if isinstance(res, LmlangError):
                    advance(r, error=res)
                else:
                    advance(r, value=res)
        return outcomes

    def bind_inputs(self, inputs: dict) -> dict:
        declared = {s.name: s for s in self.c.nodes.values() if isinstance(s, InputSpec)}
        unknown = [k for k in inputs if k not in declared]
        if unknown:
            raise InputError(f"unknown input '{unknown[0]}'", hint="declared inputs: " + (", ".join(declared) or "none"))
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
