"""Merging PEFT LoRA adapters through their exact weight deltas.

Each adapter contributes delta W = scale * B @ A per target module (scale =
alpha / r, or alpha / sqrt(r) with use_rslora; rank_pattern / alpha_pattern
honoured; transposed for fan_in_fan_out layers and embeddings, as PEFT's
get_delta_weight does). The deltas are merged with any merge method, the base
being a zero delta; a module an adapter does not target has delta 0. Factors
are never averaged separately: mean(B) @ mean(A) is not mean(B @ A).

Output is either a full model folder (base + merged delta, streamed like
`merge_models`) or a LoRA folder re-factored by truncated SVD at `rank`, with
the relative Frobenius reconstruction error per module and overall. For
slerp the first adapter's delta plays the base's part.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import MergeError
from ..models.peft_config import pattern_value
from .options import METHODS, adapter_merge_problems, first_adapter_is_base, unknown_method_message
from .stream import (
    MARKER,
    MergeConfigError,
    ParamResolver,
    WorkFolder,
    _dtype_name,
    _publish,
    copy_side_files,
    layer_positions,
    load_input,
    stream_tensors,
)
from .safetensors_io import NAME_TO_ST

PREFIX = "base_model.model."


@dataclass
class LoraModule:
    a: Any  # torch tensors
    b: Any
    scale: float
    fan_in_fan_out: bool
    embedding: bool

    def delta(self):
        """Delta in the base weight's layout, computed as PEFT does."""
        d = self.b @ self.a
        if self.fan_in_fan_out or self.embedding:
            d = d.T
        return d * self.scale


@dataclass
class LoraAdapter:
    path: Path
    config: dict
    modules: dict[str, LoraModule]  # base weight name ("model.layers.0.self_attn.q_proj.weight") -> factors


# A merged LoRA re-factored at `rank` whose relative reconstruction error
# (Frobenius norm of what truncation lost over that of the merged delta)
# passes this gets a warning: the adapter then differs from the merge by more
# than a tenth. Sign-electing and sparsifying methods (ties, dare, pcb...)
# raise the delta's rank far above the inputs' sum, so they pass it often.
RECONSTRUCTION_WARNING = 0.10


@dataclass
class LoraMergeResult:
    path: Path
    seconds: float
    cached: bool
    rank: int | None = None
    module_errors: dict[str, float] = field(default_factory=dict)
    overall_error: float | None = None
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line on what the re-factoring kept ("" for a full-model output)."""
        if self.overall_error is None:
            return ""
        return f"rank {self.rank}, reconstruction error {self.overall_error:.1%}"


def reconstruction_warnings(result: LoraMergeResult, method: str) -> list[str]:
    if result.overall_error is None or result.overall_error <= RECONSTRUCTION_WARNING:
        return []
    worst = max(result.module_errors.items(), key=lambda kv: kv[1], default=None)
    where = f" (worst module {worst[0]}: {worst[1]:.1%})" if worst else ""
    return [
        f"the merged adapter keeps the {method} merge only approximately: truncating it to rank {result.rank} "
        f"loses {result.overall_error:.1%} of the merged delta{where}, above the {RECONSTRUCTION_WARNING:.0%} "
        "threshold; raise `rank`, or merge into a full model (base + adapters) for the exact result"
    ]


def load_lora(path: str | os.PathLike) -> LoraAdapter:
    import torch
    from safetensors.torch import load_file

    folder = Path(path).expanduser()
    cfg_path = folder / "adapter_config.json"
    weights = folder / "adapter_model.safetensors"
    if not cfg_path.exists() or not weights.exists():
        raise MergeError(f"{folder}: not a PEFT LoRA folder (needs adapter_config.json and adapter_model.safetensors)")
    config = json.loads(cfg_path.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise MergeError(f"{folder}: peft_type {config.get('peft_type')} is not LORA")
    if config.get("use_dora"):
        raise MergeError(
            f"{folder}: DoRA adapters are not supported by delta merging (their magnitude vector is not additive)"
        )
    if config.get("modules_to_save"):
        raise MergeError(f"{folder}: adapters with modules_to_save (fully trained modules) are not supported")
    if config.get("bias", "none") != "none":
        raise MergeError(f"{folder}: adapters that train biases (bias={config['bias']!r}) are not supported")
    tensors = load_file(weights)
    r0, alpha0 = config.get("r", 8), config.get("lora_alpha", 8)
    modules: dict[str, LoraModule] = {}
    pairs: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        m = re.match(r"(.*)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.[^.]+)?(?:\.weight)?$", key)
        if not m:
            raise MergeError(f"{folder}: unexpected tensor {key} in a LoRA adapter")
        pairs.setdefault(m.group(1), {})[m.group(2)] = value.to(torch.float32)
    for module, parts in pairs.items():
        name = module[len(PREFIX) :] if module.startswith(PREFIX) else module
        r = pattern_value(config.get("rank_pattern"), name, r0)
        alpha = pattern_value(config.get("alpha_pattern"), name, alpha0)
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        emb = "lora_embedding_A" in parts
        a = parts.get("lora_embedding_A" if emb else "lora_A")
        b = parts.get("lora_embedding_B" if emb else "lora_B")
        if a is None or b is None:
            raise MergeError(f"{folder}: module {name} lacks its A or B factor")
        modules[name + ".weight"] = LoraModule(a, b, scale, bool(config.get("fan_in_fan_out")) and not emb, emb)
    return LoraAdapter(folder.resolve(), config, modules)


def _content_key(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def merge_loras(
    method: str,
    adapters: Sequence[tuple[str | os.PathLike, Mapping[str, Any] | None]],
    params: Mapping[str, Any] | None = None,
    base_model: str | os.PathLike | None = None,
    output: str = "full",
    rank: int | None = None,
    out_dir: str | os.PathLike | None = None,
    compat: str = "lmlang",
    dtype: str | None = None,
    announce: Callable[[], None] | None = None,
) -> LoraMergeResult:
    """Merge LoRA adapters by their delta weights; output "full" (needs base_model)
    or "lora" (truncated SVD at `rank`, default the sum of the input ranks).
    A "lora" result reports its reconstruction error (`overall_error`,
    `module_errors`) and, past RECONSTRUCTION_WARNING, says so in
    `warnings`, cached or not. announce: as in merge_models."""
    import torch

    from .methods import TensorContext, get_method

    t_start = time.perf_counter()
    if method not in METHODS:
        raise MergeConfigError(unknown_method_message(method))
    if output not in ("full", "lora"):
        raise MergeConfigError(f"unknown LoRA merge output '{output}' (use 'full' or 'lora')")
    params = dict(params or {})
    per_model = [dict(o or {}) for _, o in adapters]
    info = METHODS[method]
    pseudo_base = first_adapter_is_base(method)
    problems = adapter_merge_problems(method, params, per_model, compat=compat)
    if problems:
        raise MergeConfigError("; ".join(p.text for p in problems))
    loras = [load_lora(p) for p, _ in adapters]
    names = sorted(set().union(*(set(a.modules) for a in loras)))
    base_dir = Path(base_model).expanduser() if base_model else None
    if output == "full":
        if base_dir is None:
            cand = loras[0].config.get("base_model_name_or_path")
            if cand and Path(cand).is_dir():
                base_dir = Path(cand)
            else:
                raise MergeConfigError("a full-model LoRA merge needs base_model (a local safetensors folder)")
    base_input = load_input(base_dir) if base_dir else None
    shapes: dict[str, tuple] = {}
    for lora in loras:
        for n, mod in lora.modules.items():
            shape = tuple(mod.delta().shape)
            if shapes.setdefault(n, shape) != shape:
                raise MergeError(f"adapters disagree on the shape of {n}: {list(shapes[n])} vs {list(shape)}")
            if base_input is not None:
                meta = base_input.tensors.get(n)
                if meta is None:
                    raise MergeError(f"{lora.path.name} targets {n}, which the base model {base_input.path.name} lacks")
                if tuple(meta.shape) != shape:
                    raise MergeError(
                        f"{lora.path.name}: delta of {n} has shape {list(shape)}, base weight {list(meta.shape)}"
                    )

    impl = get_method(method)
    resolver = ParamResolver(method, params, per_model[1:] if pseudo_base else per_model)
    positions = layer_positions(names, base_input.config if base_input else {})
    seed = params.get("seed", 0) if isinstance(params.get("seed", 0), int) else 0

    def merged_delta(name: str):
        deltas = [lora.modules[name].delta() if name in lora.modules else torch.zeros(shapes[name]) for lora in loras]
        glob, per = resolver.resolve(name, positions.get(name, 0.0))
        ctx = TensorContext(name, compat, seed)
        if pseudo_base:
            return impl.merge(deltas[1:], deltas[0], per, glob, ctx)
        base = torch.zeros(shapes[name]) if info.base != "ignored" else None
        return impl.merge(deltas, base, per, glob, ctx)

    recipe: dict[str, Any] = {
        "merge_method": method,
        "lora_adapters": [
            {"adapter": str(lora.path), **({"parameters": o} if o else {})} for lora, o in zip(loras, per_model)
        ],
        "parameters": params,
        "output": output,
        "compat": compat,
        "dtype": _dtype_name(dtype) or "inherit",
    }
    if base_input:
        recipe["base_model"] = str(base_input.path)
    if output == "lora":
        recipe["rank"] = rank
    key = hashlib.sha256(
        json.dumps(
            {
                "v": 1,
                "recipe": {k: v for k, v in recipe.items() if k not in ("lora_adapters", "base_model")},
                "adapters": [[_content_key(lora.path), o] for lora, o in zip(loras, per_model)],
                "base": base_input.content_key if base_input else None,
            },
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    if out_dir is None:
        from ..home import cache_dir

        final = cache_dir("merges") / f"lora-{key[:24]}"
    else:
        final = Path(out_dir).expanduser().resolve()
        if final.exists() and any(final.iterdir()) and not (final / MARKER).exists():
            raise MergeError(f"output folder {final} exists and is not an lmlang merge; choose an empty or new folder")
        final.parent.mkdir(parents=True, exist_ok=True)
    if (final / MARKER).exists():
        try:
            saved = json.loads((final / MARKER).read_text())
        except (OSError, ValueError):
            saved = {}
        if saved.get("key") == key:
            cached = LoraMergeResult(
                final,
                time.perf_counter() - t_start,
                True,
                saved.get("rank"),
                saved.get("module_errors", {}),
                saved.get("overall_error"),
            )
            cached.warnings = reconstruction_warnings(cached, method)
            return cached
    if announce is not None:
        announce()
    work = WorkFolder(final, whole_dir=out_dir is None)
    tmp = work.path
    result = LoraMergeResult(final, 0.0, False)
    try:
        if output == "full":
            _write_full(tmp, base_input, names, merged_delta, dtype)
        else:
            result.rank, result.module_errors, result.overall_error = _write_lora(
                tmp, loras, names, merged_delta, rank, dtype
            )
        seconds = time.perf_counter() - t_start
        _card(tmp, recipe, result, seconds)
        (tmp / MARKER).write_text(
            json.dumps(
                {
                    "key": key,
                    "recipe": recipe,
                    "rank": result.rank,
                    "module_errors": result.module_errors,
                    "overall_error": result.overall_error,
                },
                indent=2,
                default=str,
            )
        )
        work.release()
        published = _publish(tmp, final, replace=out_dir is not None)
    except BaseException:
        work.discard()
        raise
    result.warnings = reconstruction_warnings(result, method)
    result.cached = not published
    result.seconds = time.perf_counter() - t_start
    return result


def _write_full(tmp: Path, base, targets: Sequence[str], merged_delta, dtype: str | None) -> None:
    import torch

    out_name = _dtype_name(dtype)
    target_set = set(targets)
    names = [n for n, _ in sorted(base.tensors.items(), key=lambda kv: (kv[1].file, kv[1].begin))]
    out_dtypes = {
        n: NAME_TO_ST[out_name] if out_name and base.tensors[n].is_float else base.tensors[n].dtype for n in names
    }

    def compute(name: str, tensors: list):
        from .safetensors_io import torch_dtype

        w = tensors[0]
        if name not in target_set:
            return w.to(torch_dtype(out_dtypes[name]))
        return (w.to(torch.float32) + merged_delta(name)).to(torch_dtype(out_dtypes[name]))

    stream_tensors(tmp, names, [base], compute, out_dtypes, {n: base.tensors[n].shape for n in names}, [False])
    copy_side_files(base.path, tmp, base.path, out_name, False)


def _write_lora(
    tmp: Path, loras: Sequence[LoraAdapter], names: Sequence[str], merged_delta, rank: int | None, dtype: str | None
) -> tuple[int, dict[str, float], float]:
    import torch
    from safetensors.torch import save_file

    if rank is None:
        rank = sum(int(lora.config.get("r", 8)) for lora in loras)
    if rank < 1:
        raise MergeConfigError(f"rank must be >= 1, got {rank}")
    dt_name = _dtype_name(dtype)
    out_dt = (
        torch.float32
        if dt_name is None
        else {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dt_name]
    )
    tensors: dict[str, Any] = {}
    errors: dict[str, float] = {}
    err_sq = total_sq = 0.0
    embedding_modules = {n for lora in loras for n, m in lora.modules.items() if m.embedding}
    fan_in = {n for lora in loras for n, m in lora.modules.items() if m.fan_in_fan_out}
    for name in names:
        d = merged_delta(name)
        mat = d.T if (name in embedding_modules or name in fan_in) else d  # B @ A layout
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)
        k = min(rank, s.numel())
        root = s[:k].sqrt()
        b = u[:, :k] * root
        a = root.unsqueeze(1) * vh[:k]
        if k < rank:  # pad so every module has rank `rank`
            b = torch.cat([b, torch.zeros(b.shape[0], rank - k)], 1)
            a = torch.cat([a, torch.zeros(rank - k, a.shape[1])], 0)
        diff = float(torch.linalg.matrix_norm(mat - b @ a)) ** 2
        norm = float(torch.linalg.matrix_norm(mat)) ** 2
        errors[name[: -len(".weight")]] = math.sqrt(diff / norm) if norm > 0 else 0.0
        err_sq += diff
        total_sq += norm
        module = PREFIX + name[: -len(".weight")]
        if name in embedding_modules:
            tensors[module + ".lora_embedding_A"] = a.to(out_dt).contiguous()
            tensors[module + ".lora_embedding_B"] = b.to(out_dt).contiguous()
        else:
            tensors[module + ".lora_A.weight"] = a.to(out_dt).contiguous()
            tensors[module + ".lora_B.weight"] = b.to(out_dt).contiguous()
    save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = dict(loras[0].config)
    cfg.update(
        {
            "r": rank,
            "lora_alpha": rank,
            "use_rslora": False,
            "rank_pattern": {},
            "alpha_pattern": {},
            "target_modules": sorted(n[: -len(".weight")] for n in names),
            "fan_in_fan_out": bool(fan_in),
            "layers_to_transform": None,
            "layers_pattern": None,
        }
    )
    (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    overall = math.sqrt(err_sq / total_sq) if total_sq > 0 else 0.0
    return rank, errors, overall


def _card(folder: Path, recipe: dict, result: LoraMergeResult, seconds: float) -> None:
    import yaml

    lines = [
        f"# Merged LoRA ({recipe['merge_method']}, output {recipe['output']})",
        "",
        f"Built by lmlang from exact delta weights in {seconds:.1f} s.",
        "",
        "## Recipe",
        "",
        "```yaml",
        yaml.safe_dump(recipe, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    if result.overall_error is not None:
        lines += [
            f"Truncated SVD at rank {result.rank}: overall relative Frobenius error {result.overall_error:.3g}.",
            "",
            "| module | relative error |",
            "| --- | --- |",
        ]
        lines += [f"| `{m}` | {e:.3g} |" for m, e in sorted(result.module_errors.items())]
    (folder / "README.md").write_text("\n".join(lines) + "\n")
