"""Builds the model side of the graph: sources, adapters (loaded or trained),
applications, merges and fusions, each node once per process.

A model node evaluates to a ModelValue: a plain folder of safetensors
(sources and merge outputs), a base with an adapter stack applied at query
time (never merged), or a fusion of members. Adapter nodes evaluate to PEFT
folders. Derived artefacts (trained adapters, merges) are cached on disk by
their builders, keyed by content, so a second run reuses them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import LmlangError, LmlangRuntimeError, MergeError
from ..source import span_of
from ..graph import (
    AdapterMergeSpec,
    ApplySpec,
    Compiled,
    FuseSpec,
    LoraSpec,
    MergeSpec,
    ModelSpec,
    RouterSpec,
    TrainSpec,
)
from ..graph.specs import AtlasSpec, CompressSpec, TwinSpec, VllmSpec
from ..merge.options import STEP_OPTIONS


@dataclass(frozen=True)
class Folder:
    path: Path


@dataclass(frozen=True)
class Stacked:
    base: Path
    stack: tuple  # ((adapter folder, scale), ...)


@dataclass(frozen=True)
class Twin:
    """A Twin-Merging model (merge/twin.py): the core folder, the exclusive
    parts, and the router's examples per expert; rows are weighted and mixed
    when they decode (runtime/twin_lm.py)."""

    model: object  # merge.twin.TwinModel
    examples: tuple  # ((text, ...), ...) per expert, in the twin's order
    options: tuple  # sorted (key, value): top_k, temperature, encoder


@dataclass(frozen=True)
class Fused:
    mode: str
    members: tuple  # ((ModelValue, weight), ...)
    options: tuple
    anchor: object = None  # fuse dynamic: the ModelValue the experts were tuned from
    target: object = None  # fuse dynamic: the ModelValue that receives their shifts


def say(msg: str) -> None:
    print(f"lmlang: {msg}", file=sys.stderr, flush=True)


class _Announce:
    """A merge's "merging X" line, said only when the merge really runs
    (merges call it after their cache lookup); `said` tells the caller
    whether to say "X (cached)" instead."""

    def __init__(self, msg: str):
        self.msg, self.said = msg, False

    def __call__(self) -> None:
        self.said = True
        say(self.msg)


class Builder:
    def __init__(self, compiled: Compiled, device: str = "auto"):
        self.c = compiled
        self.device = device  # where adapters train (the program's device)
        self.values: dict[str, object] = {}  # node id -> its built value, once per process
        # a data set's rows by name (lifecycle.data.DataSets.rows), for adapters
        # trained on a selected or generated data set; the program sets it
        self.data_rows: Callable[[str], list[dict]] | None = None

    def value(self, nid: str):
        if nid not in self.values:
            try:
                self.values[nid] = self._build(nid)
            except LmlangError as e:
                raise e.at_node(span_of(getattr(self.c.spec(nid), "loc", "")), self.c.display_name(nid))
        return self.values[nid]

    def _build(self, nid: str):
        spec = self.c.spec(nid)
        if isinstance(spec, (ModelSpec, VllmSpec)):  # a vLLM source's weights are local too (training)
            from ..models.loader import resolve_model

            return Folder(resolve_model(spec.source))
        if isinstance(spec, LoraSpec):
            return Path(spec.path)
        if isinstance(spec, TrainSpec):
            from ..models.training import train_lora

            base = self.value(spec.base)
            if not isinstance(base, Folder):
                raise LmlangRuntimeError(
                    f"adapter {self.c.display_name(nid)}: train on a plain model, not an adapted or fused one",
                    hint=f"at {spec.loc}",
                )
            options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.options}
            old = options.pop("compatible_with", None)  # MUSCLE: the old model, built first
            old_value = None if old is None else self.value(str(old))
            if old_value is not None and not isinstance(old_value, (Folder, Stacked)):
                raise LmlangRuntimeError(
                    f"adapter {self.c.display_name(nid)}: compatible_with takes a model or a model with adapters",
                    hint=f"at {spec.loc}",
                )
            compatible = (
                None
                if old_value is None
                else (old_value.path, ())
                if isinstance(old_value, Folder)
                else (old_value.base, tuple(old_value.stack))
            )
            data = self._training_data(nid, spec)
            result = train_lora(
                base.path,
                data,
                options,
                progress=True,
                device=self.device,
                compatible_with=compatible,
                recipe=spec.recipe,
            )
            if not result.cached:
                source = f"data set {spec.dataset}" if spec.dataset else data.name
                say(
                    f"trained adapter {self.c.display_name(nid)} on {source} in {result.seconds:.0f} s "
                    f"(final loss {result.final_loss:.3f}; cached for later runs)"
                )
            return Path(result.path)
        if isinstance(spec, AdapterMergeSpec):
            from ..merge.lora import merge_loras

            opts = dict(spec.options)
            params = {k: v for k, v in opts.items() if k not in STEP_OPTIONS}
            adapters = [(self.value(a), dict(p)) for a, p in spec.adapters]
            name = self.c.display_name(nid)
            announce = _Announce(f"merging adapters ({spec.method}) for {name}")
            res = merge_loras(
                spec.method,
                adapters,
                params,
                output="lora",
                rank=opts.get("rank"),
                compat=opts.get("compat", "lmlang"),
                dtype=opts.get("dtype"),
                announce=announce,
            )
            say(f"merged {name}: {res.summary()}" if announce.said else f"{name} (cached): {res.summary()}")
            for w in res.warnings:
                say(f"warning: {name}: {w}")
            return Path(res.path)
        if isinstance(spec, ApplySpec):
            base = self.value(spec.base)
            stack = tuple((self.value(a), float(s)) for a, s in spec.adapters)
            if isinstance(base, Folder):
                return Stacked(base.path, stack)
            if isinstance(base, Stacked):
                return Stacked(base.base, base.stack + stack)
            raise LmlangRuntimeError(
                "adapters apply to a model, not to a fusion", hint=f"node {self.c.display_name(nid)}"
            )
        if isinstance(spec, MergeSpec):
            return self._merge(nid, spec)
        if isinstance(spec, FuseSpec):
            members = tuple((self.value(m), w) for m, w in spec.members)
            anchor, target = (self.value(x) if x else None for x in (spec.anchor, spec.target))
            return Fused(spec.mode, members, spec.options, anchor, target)
        if isinstance(spec, CompressSpec):
            return self._compress(nid, spec)
        if isinstance(spec, TwinSpec):
            return self._twin(nid, spec)
        if isinstance(spec, AtlasSpec):
            return self._atlas(nid, spec)
        if isinstance(spec, RouterSpec):
            raise LmlangRuntimeError("a router is not a model", hint=f"at {spec.loc}")
        raise LmlangRuntimeError(f"cannot build a {spec.kind} node")

    # ------------------------------------------------------------ composition (issue #17)
    def _compress(self, nid: str, spec: CompressSpec) -> Path:
        """ComPEFT: a PEFT folder, cached by content; its size and error said."""
        from ..merge.compress import compress_lora

        opts = dict(spec.options)
        res = compress_lora(
            self.value(spec.adapter), opts.get("density", 0.1), opts.get("quantize", "ternary"), opts.get("alpha")
        )
        say(
            f"{'compressed' if not res.cached else 'compressed (cached)'} {self.c.display_name(nid)}: "
            f"{res.bytes} bytes ({res.size_ratio:.1%} of {res.original_bytes}; packed {res.packed_ratio:.1%}), "
            f"reconstruction error {res.overall_error:.4f}"
        )
        return Path(res.path)

    def _experts(self, nid: str, spec) -> tuple[Path, list[tuple[str, Path]]]:
        """The base folder and the (adapter name, LoRA folder) of each
        `base + adapter` expert of a twin or atlas merge."""
        base = self.value(spec.base)
        if not isinstance(base, Folder):
            raise MergeError(f"{self.c.display_name(nid)}: the base must be a plain model", hint=f"at {spec.loc}")
        experts = []
        for m in spec.models:
            v = self.value(m)
            if not (isinstance(v, Stacked) and v.base == base.path and len(v.stack) == 1 and v.stack[0][1] == 1.0):
                raise MergeError(
                    f"{self.c.display_name(nid)}: {self.c.display_name(m)} is not the base plus one adapter",
                    hint=f"at {spec.loc}",
                )
            applied = self.c.spec(m)
            name = self.c.display_name(applied.adapters[0][0]) if isinstance(applied, ApplySpec) else m
            experts.append((name, Path(v.stack[0][0])))
        return base.path, experts

    def _twin(self, nid: str, spec: TwinSpec) -> Twin:
        from ..merge.twin import build_twin

        opts = dict(spec.options)
        base, experts = self._experts(nid, spec)
        core = opts.get("core", "ties")
        params = {"density": opts["density"]} if "density" in opts else None
        model = build_twin(base, experts, core=core, core_params=params, rank=opts.get("rank"))
        errors = ", ".join(f"{n} {e:.3g}" for n, e in model.errors.items())
        say(
            f"{self.c.display_name(nid)}{' (cached)' if model.cached else ''}: twin merge, {core} core, "
            f"exclusive parts at rank {model.rank} (relative error {errors})"
        )
        examples = spec.examples
        if not examples:  # by_example: each expert's own training prompts
            from .pool import training_prompts

            examples = tuple(tuple(training_prompts(folder, int(opts.get("examples", 16)))) for _, folder in experts)
            missing = [n for (n, _), ex in zip(experts, examples) if not ex]
            if missing:
                raise MergeError(
                    f"{self.c.display_name(nid)}: no training prompts recorded for {', '.join(missing)}",
                    hint="router: by_example reads an lmlang-trained adapter's data; declare a `route embedding` "
                    "router with examples over the same models and name it: router: NAME",
                )
        keep = ("top_k", "temperature", "encoder")
        return Twin(model, examples, tuple((k, v) for k, v in sorted(opts.items()) if k in keep))

    def _atlas(self, nid: str, spec: AtlasSpec) -> Folder:
        from ..merge.atlas import fit_atlas

        base, experts = self._experts(nid, spec)
        data = self._training_data(nid, spec)
        name = self.c.display_name(nid)
        res = fit_atlas(base, experts, data, dict(spec.options))
        say(f"{name}{' (cached)' if res.cached else ''}: atlas coefficients over {len(res.groups)} groups")
        if len(res.groups) <= 4:
            for group in res.groups:
                say(f"  {group}: " + ", ".join(f"{n} {c:.4f}" for n, c in res.coefficients[group].items()))
        else:  # one line per expert; every coefficient is in the folder's atlas.json
            for n in res.experts:
                cs = [res.coefficients[g][n] for g in res.groups]
                say(f"  {n}: mean {sum(cs) / len(cs):.4f}, min {min(cs):.4f}, max {max(cs):.4f}")
            say(f"  all coefficients: {res.path / 'atlas.json'}")
        return Folder(Path(res.path))

    def _training_data(self, nid: str, spec) -> Path:
        """The file training reads: the script's file, or a data set's rows
        written to a content-keyed JSONL (lifecycle.data.training_file)."""
        if not spec.dataset:
            return Path(spec.data)
        if self.data_rows is None:
            raise LmlangRuntimeError(
                f"adapter {self.c.display_name(nid)}: data set '{spec.dataset}' has no rows here",
                hint="run the script through lmlang.Program, which makes its data sets",
            )
        from ..lifecycle.data import training_file

        rows = self.data_rows(spec.dataset)
        if not rows:
            raise LmlangRuntimeError(
                f"adapter {self.c.display_name(nid)}: data set '{spec.dataset}' has no rows", hint=f"at {spec.loc}"
            )
        return training_file(rows)

    def _merge(self, nid: str, spec: MergeSpec):
        from ..merge.lora import merge_loras
        from ..merge.stream import merge_models

        opts = dict(spec.options)
        params = {k: v for k, v in opts.items() if k not in STEP_OPTIONS}
        compat = opts.get("compat", "lmlang")
        dtype = opts.get("dtype")
        base = self.value(spec.base) if spec.base else None
        inputs = [(self.value(m), dict(p)) for m, p in spec.models]
        if isinstance(base, Stacked) or isinstance(base, Fused):
            raise MergeError(f"merge {self.c.display_name(nid)}: the base must be a plain model", hint=f"at {spec.loc}")
        base_path = base.path if base else None
        # Fine-tunes given as `base + adapter` on the merge's own base merge by
        # exact delta algebra (delta W = scale * B @ A), never by averaging
        # A and B; that needs one adapter per input on one shared base.
        # A two-model method (slerp) with a real base interpolates between
        # the base and the other model: the full-model path below does that.
        from ..merge.options import first_adapter_is_base

        stacked = [v for v, _ in inputs if isinstance(v, Stacked)]
        if first_adapter_is_base(spec.method) and base_path is not None:
            stacked = []
        if stacked and len(stacked) == len(inputs) and all(len(v.stack) == 1 for v in stacked):
            bases = {v.base for v in stacked}
            if len(bases) == 1 and (base_path is None or base_path in bases):
                from ..merge.options import method_options

                weighted = "weight" in method_options(spec.method)
                adapters = []
                for v, p in inputs:
                    ((folder, scale),) = v.stack
                    p = dict(p)
                    if weighted:
                        p["weight"] = float(p.get("weight", 1.0)) * scale
                    elif scale != 1.0:
                        raise MergeError(
                            f"merge {spec.method} has no per-model weight, so it cannot apply an adapter at scale {scale:g}",
                            hint=f"at {spec.loc}: apply the adapter at scale 1, or merge with a weighted method",
                        )
                    adapters.append((folder, p))
                name = self.c.display_name(nid)
                announce = _Announce(f"merging {name} ({spec.method} over adapter deltas)")
                res = merge_loras(
                    spec.method,
                    adapters,
                    params,
                    base_model=bases.pop(),
                    output="full",
                    compat=compat,
                    dtype=dtype,
                    announce=announce,
                )
                if not announce.said:
                    say(f"{name} (cached)")
                return Folder(Path(res.path))
        folders = []
        for v, p in inputs:
            if isinstance(v, Fused):
                raise MergeError(f"merge {self.c.display_name(nid)}: cannot merge a fusion", hint=f"at {spec.loc}")
            if isinstance(v, Stacked):
                v = self._materialise(v)
            folders.append((v.path, p))
        name = self.c.display_name(nid)
        announce = _Announce(f"merging {name} ({spec.method}, streamed tensor by tensor; cached)")
        merged = merge_models(
            spec.method, folders, base=base_path, params=params, compat=compat, dtype=dtype, announce=announce
        )
        if not announce.said:
            say(f"{name} (cached)")
        return Folder(Path(merged.path))

    def _materialise(self, v: Stacked) -> Folder:
        """base + adapters as a full folder (cached), for merges that mix
        full models and adapted ones."""
        from ..merge.lora import merge_loras

        adapters = [(folder, {"weight": scale}) for folder, scale in v.stack]
        res = merge_loras("task_arithmetic", adapters, {}, base_model=v.base, output="full")
        return Folder(Path(res.path))
