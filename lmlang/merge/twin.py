"""Twin-Merging (Lu et al., NeurIPS 2024): a shared core merged once, plus
per-expert exclusive knowledge weighted per input.

Given a base and LoRA experts with exact deltas D_i (= scale_i B_i A_i), the
**core** is one merge of the deltas (TIES by default) written as a full
model folder: W_core = W_base + D_core. Each expert's **exclusive part** is
what the core misses of it, E_i = D_i - D_core (per target module, over the
union of the experts' modules; D_core is read back from the core folder, so
the core's own rounding is compensated too), compressed by truncated SVD to
rank k and stored as a PEFT LoRA folder on the core: B_i = U_k S_k^1/2,
A_i = S_k^1/2 V_k^T, alpha = r = k (scale 1).

At run time a router gives row x the weights w(x) over the experts, and the
row runs with

    W(x) = W_core + sum_i w_i(x) * U_i,k S_i,k V_i,k^T

which is the core model with the exclusive adapters stacked at per-row
scales: rows with different weights decode in ONE batch through the adapter
host's row-indexed deltas (runtime/pool.py RowMixedLM over
AdapterHost.activate_rows). With one-hot weights and k at least the rank of
E_i, row x runs exactly base + D_i: the expert itself. The default router
(`TwinRouter`) is the pool's embedding scorer over each expert's examples,
softmax(cosine / temperature) over all experts, standing in for the paper's
small trained router.

Default rank: the sum of the experts' ranks. With a task_arithmetic core
that rank makes every E_i exact (D_core is then a sum of rank-r_i terms);
with TIES the core is a sparse, sign-elected mix of full rank, and the
per-module relative errors of the truncation are reported.

Proposed syntax (LANGUAGE.md): `model twin = merge twin { base: base,
models: [base + senti, base + math], router: by_example, rank: 24,
core: ties, density: 0.5 }` with `examples` for the router given as in
`route embedding` (or taken from the adapters' training data, like a pool);
graph: a TwinSpec (base, adapters, options) whose value is
`build_twin(...)`; runtime: the executor routes the query's argument through
`TwinRouter.weights(texts)` and decodes each batch with
`twin.lm_for_rows(core_lm, host, weights)`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import MergeError
from .stream import MARKER, MergeConfigError

FORMAT_VERSION = 1
MANIFEST = "twin.json"
CORE_METHODS = ("ties", "task_arithmetic", "dare_ties", "breadcrumbs", "pcb", "tsv", "linear")


@dataclass
class TwinModel:
    path: Path  # the twin folder (manifest + exclusive adapters)
    core: Path  # full model folder: base + merged core delta
    experts: list[str]
    exclusive: list[Path]  # one PEFT LoRA folder per expert, on the core
    rank: int
    errors: dict[str, float] = field(default_factory=dict)  # expert -> overall relative error of its truncation
    module_errors: dict[str, dict[str, float]] = field(default_factory=dict)
    cached: bool = False
    seconds: float = 0.0

    def adapter_name(self, expert: str) -> str:
        return f"twin:{expert}"

    def attach(self, host) -> None:
        """Load the exclusive parts into the core model's adapter host (once)."""
        for name, folder in zip(self.experts, self.exclusive):
            key = self.adapter_name(name)
            if key not in host.names:
                host.add(key, folder)

    def stacks(self, weights) -> list[tuple[tuple[str, float], ...]]:
        """Per-row adapter stacks for [rows, experts] weights."""
        from ..runtime.pool import stacks_for

        return stacks_for(weights, [self.adapter_name(e) for e in self.experts], min_weight=0.0)

    def lm_for_rows(self, core_lm, host, weights, name: str = "twin"):
        """An LM over the core whose row i runs W_core + sum_j weights[i, j] * E_j."""
        from ..runtime.pool import RowMixedLM

        self.attach(host)
        return RowMixedLM(core_lm, host, self.stacks(weights), name=name)


def build_twin(
    base: str | os.PathLike,
    experts: Sequence[tuple[str, str | os.PathLike]],
    *,
    core: str = "ties",
    core_params: Mapping[str, Any] | None = None,
    rank: int | None = None,
    out_dir: str | os.PathLike | None = None,
) -> TwinModel:
    """Build (or reuse) the core and the exclusive parts; see the module docstring.

    experts: [(name, PEFT LoRA folder)] trained on `base` (a safetensors folder)."""
    from .lora import _content_key, load_lora, merge_loras
    from .stream import load_input

    start = time.perf_counter()
    if core not in CORE_METHODS:
        from ..suggest import did_you_mean

        hint = did_you_mean(core, CORE_METHODS) or f"use one of {', '.join(CORE_METHODS)}"
        raise MergeConfigError(f"unknown twin core method '{core}'; {hint}")
    if len(experts) < 2:
        raise MergeConfigError("merge twin needs at least two experts")
    names = [str(n) for n, _ in experts]
    if len(set(names)) != len(names):
        raise MergeConfigError("merge twin: expert names must be unique")
    params = dict(
        core_params if core_params is not None else ({"density": 0.5} if core in ("ties", "dare_ties", "pcb") else {})
    )
    folders = [Path(p).expanduser().resolve() for _, p in experts]
    loras = [load_lora(p) for p in folders]
    k = int(rank) if rank is not None else sum(int(ad.config.get("r", 8)) for ad in loras)
    if k < 1:
        raise MergeConfigError(f"twin rank must be at least 1, got {k}")
    base_input = load_input(base)
    core_res = merge_loras(
        core, [(p, {"weight": 1.0}) for p in folders], params, base_model=base_input.path, output="full"
    )
    key = hashlib.sha256(
        json.dumps(
            {
                "v": FORMAT_VERSION,
                "base": base_input.content_key,
                "core": str(core_res.path),
                "core_method": core,
                "params": params,
                "rank": k,
                "experts": [[n, _content_key(p)] for n, p in zip(names, folders)],
            },
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    final = _destination(key, out_dir)
    saved = _cached(final, key)
    if saved is not None:
        return _model(final, saved, True, time.perf_counter() - start)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        manifest = _write_exclusive(tmp, base_input, core_res.path, names, loras, k)
        manifest.update(
            {
                "key": key,
                "core": str(core_res.path),
                "core_method": core,
                "core_params": params,
                "base": str(base_input.path),
                "experts_from": [str(p) for p in folders],
            }
        )
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        (tmp / MARKER).write_text(json.dumps({"key": key, "kind": "twin"}))
        _card(tmp, manifest)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _model(final, json.loads((final / MANIFEST).read_text()), False, time.perf_counter() - start)


def _write_exclusive(tmp: Path, base_input, core_path: Path, names: list[str], loras, rank: int) -> dict:
    """One PEFT folder per expert: E_i = D_i - (W_core - W_base), SVD-truncated."""
    import torch

    from .lora import _write_lora

    targets = sorted(set().union(*(set(ad.modules) for ad in loras)))
    base_w = _read_tensors(base_input.path, targets)
    core_w = _read_tensors(core_path, targets)
    core_delta = {n: core_w[n].float() - base_w[n].float() for n in targets}
    shapes = {n: tuple(core_delta[n].shape) for n in targets}
    errors, module_errors, folders = {}, {}, []
    for i, (name, lora) in enumerate(zip(names, loras)):

        def exclusive(t: str, lora=lora):
            own = lora.modules[t].delta() if t in lora.modules else torch.zeros(shapes[t])
            return own - core_delta[t]

        sub = tmp / "exclusive" / f"{i}-{_slug(name)}"
        sub.mkdir(parents=True)
        _, per_module, overall = _write_lora(
            sub, [lora, *(other for other in loras if other is not lora)], targets, exclusive, rank, None
        )
        cfg_path = sub / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = str(core_path)
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
        errors[name], module_errors[name] = overall, per_module
        folders.append(str(sub.relative_to(tmp)))
    return {"experts": names, "exclusive": folders, "rank": rank, "errors": errors, "module_errors": module_errors}


def _read_tensors(folder: Path, names: Sequence[str]) -> dict:
    """The named tensors of a safetensors folder (sharded or not)."""
    from safetensors import safe_open

    from .safetensors_io import weight_files

    want, out = set(names), {}
    for f in weight_files(folder):
        with safe_open(str(f), "pt") as fh:
            for key in fh.keys():
                if key in want:
                    out[key] = fh.get_tensor(key)
    missing = sorted(want - set(out))
    if missing:
        raise MergeError(f"{folder}: missing tensor {missing[0]} that the experts adapt")
    return out


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40] or "expert"


def _destination(key: str, out_dir) -> Path:
    if out_dir is None:
        from ..home import cache_dir

        return cache_dir("merges") / f"twin-{key[:24]}"
    final = Path(out_dir).expanduser().resolve()
    if final.exists() and any(final.iterdir()) and not (final / MANIFEST).exists():
        raise MergeError(f"output folder {final} exists and is not an lmlang twin merge; choose an empty or new folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    return final


def _cached(final: Path, key: str) -> dict | None:
    try:
        saved = json.loads((final / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    ok = saved.get("key") == key and all(
        (final / f / "adapter_model.safetensors").is_file() for f in saved["exclusive"]
    )
    return saved if ok else None


def _model(final: Path, manifest: dict, cached: bool, seconds: float) -> TwinModel:
    return TwinModel(
        final,
        Path(manifest["core"]),
        list(manifest["experts"]),
        [final / f for f in manifest["exclusive"]],
        int(manifest["rank"]),
        dict(manifest["errors"]),
        dict(manifest["module_errors"]),
        cached,
        seconds,
    )


def _card(folder: Path, manifest: dict) -> None:
    lines = [
        f"# Twin merge ({manifest['core_method']} core, exclusive parts at rank {manifest['rank']})",
        "",
        f"Core model: `{manifest['core']}`.",
        "",
        "| expert | exclusive part | relative error |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {n} | `{f}` | {manifest['errors'][n]:.3g} |" for n, f in zip(manifest["experts"], manifest["exclusive"])
    ]
    (folder / "README.md").write_text("\n".join(lines) + "\n")


class TwinRouter:
    """Per-row expert weights from examples: softmax(cosine / temperature) over
    the top_k experts (all by default), with the pool's embedding scorer."""

    def __init__(
        self,
        examples: Sequence[Sequence[str]],
        encoder: str = "minilm",
        base_lm=None,
        temperature: float = 0.05,
        top_k: int | None = None,
    ):
        from ..runtime.pool import EmbeddingIndex

        self.index = EmbeddingIndex(examples, encoder, base_lm)
        self.temperature = temperature
        self.top_k = top_k or len(examples)

    def weights(self, texts: Sequence[str]):
        from ..runtime.pool import weights_from_scores

        return weights_from_scores(self.index.scores(texts), self.top_k, self.temperature)
