"""Runs a compiled graph: builds model nodes on demand (once per process),
runs query nodes through the decoding loop, and interprets flow steps in
order."""
from __future__ import annotations

import time

from ..compiler import Compiled
from ..errors import LmlangRuntimeError, NotSupportedYet, ScriptError
from ..graph import InputSpec, ModelSpec, QuerySpec
from .decode import QueryRun, run_decoder
from .flow import Interpreter
from .lm import HFModel, LM
from .prompt import render
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


class Executor:
    def __init__(self, compiled: Compiled, functions: dict | None = None, device: str = "auto",
                 trace: Trace | None = None):
        self.c = compiled
        self.functions = dict(functions or {})
        self.device = device
        self.trace = trace or Trace()
        self._lms: dict[str, LM] = {}
        self.query_ids = {self.c.spec(n).name: n for n in self.c.graph.nodes if isinstance(self.c.spec(n), QuerySpec)}

    # ------------------------------------------------------------ models
    def lm(self, nid: str) -> LM:
        if nid in self._lms:
            return self._lms[nid]
        spec = self.c.spec(nid)
        if isinstance(spec, ModelSpec):
            from transformers.utils import logging as hf_logging

            from ..models.loader import load_model, resolve_model

            hf_logging.disable_progress_bar()    # lmlang prints its own progress
            path = resolve_model(spec.source)
            lm = HFModel(load_model(path, device=self.device), name=_display_name(spec, self.c, nid))
        else:
            names = self.c.graph.nodes[nid]["names"]
            raise NotSupportedYet(f"running a {spec.kind} node{' (' + ', '.join(names) + ')' if names else ''} is not supported yet",
                                  hint=f"declared at {getattr(spec, 'loc', '') or 'unknown position'}")
        self._lms[nid] = lm
        return lm

    # ------------------------------------------------------------ queries
    def call_query(self, name: str, args: list, kwargs: dict, loc: str = "") -> dict:
        nid = self.query_ids.get(name)
        if nid is None:
            raise LmlangRuntimeError(f"undefined function '{name}'", hint=f"at {loc}" if loc else "")
        spec: QuerySpec = self.c.spec(nid)
        params = [p for p, _ in spec.params]
        env = dict(zip(params, args))
        env.update(kwargs)
        missing = [p for p in params if p not in env]
        if missing:
            raise LmlangRuntimeError(f"{name}() is missing {', '.join(missing)}")
        for p, t in spec.params:
            if t in ("int", "float", "bool", "str"):
                env[p] = coerce_input(p, env[p], t) if not isinstance(env[p], (dict, list)) else env[p]
        return self.run_query(spec, env)

    def run_query(self, spec: QuerySpec, env: dict) -> dict:
        t0 = time.perf_counter()
        if self.c.spec(spec.model).kind == "router":
            raise NotSupportedYet(f"routing is not supported yet (query {spec.name})", hint=f"at {spec.loc}")
        lm = self.lm(spec.model)
        prompt = render(spec.segments, env, lm.tokenizer, spec.chat, spec.loc)
        run = QueryRun(lm, prompt, dict(spec.constraints))
        result = run_decoder(run, spec.decoder, spec.distribution)
        out = dict(result.values)
        if result.distribution is not None:
            out["distribution"] = result.distribution
        holes = [vars(h) for h in result.holes]
        self.trace.add(QueryTrace(
            query=spec.name, model=lm.name, prompt=prompt.display(), values=dict(result.texts), holes=holes,
            forward_passes=result.forward_passes, tokens_generated=sum(h["generated"] for h in holes),
            tokens_forced=sum(h["forced"] for h in holes), wall_seconds=time.perf_counter() - t0,
            decoder=spec.decoder[0]))
        return out

    # ------------------------------------------------------------ flow
    def run(self, inputs: dict) -> dict:
        env = self.bind_inputs(inputs)
        steps = [self.c.spec(n).stmt for n in self.c.steps]
        return Interpreter(self.call_query, self.functions).run_steps(steps, env)

    def bind_inputs(self, inputs: dict) -> dict:
        declared = {s.name: s for n in self.c.graph.nodes if isinstance(s := self.c.spec(n), InputSpec)}
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


def _thaw(v):
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    return v


def _display_name(spec: ModelSpec, c: Compiled, nid: str) -> str:
    names = c.graph.nodes[nid]["names"]
    return names[0] if names else spec.source
