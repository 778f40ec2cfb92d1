"""ComPEFT for LoRA adapters: sparsify, quantize with one scale, keep a valid PEFT folder.

ComPEFT (Yadav et al. 2023) compresses a task vector tau by keeping the top
`density` fraction of |tau| and replacing the kept values by one magnitude
times their sign: tau_hat = alpha * std(tau) * sign(tau) on the kept entries.

**Where the sparsity goes: on the LoRA factors, not on the exact delta.** A
LoRA's exact delta W = (alpha / r) B A has out x in entries, (out + in) / r
times more than its factors (36x for SmolLM2's q_proj at r = 8): a sparse
ternary copy of the delta would be bigger than the adapter it compresses, and
re-factoring it by truncated SVD needs a high rank to stay accurate (sign
patterns are not low rank). So A and B are each sparsified and quantized, the
folder stays a LoRA of the same rank, and the error is always measured on
the exact delta: ||W - W_hat||_F / ||W||_F per module and overall.

**Balanced factors first.** B A is one product of many factor pairs; the
pair training leaves is not the one that compresses best. By default
(`balance`) each module is re-factored as B' = U S^1/2, A' = S^1/2 V^T
from the SVD of B A (same product, same rank): both factors then carry the
same singular values and each of the r components is one singular
direction. Neither form wins everywhere (on a specialization-bench adapter:
ternary at density 0.2, relative error 0.86 as trained and 0.69 balanced;
at 0.5, 0.55 and 0.61; int8 at 0.4, 0.62 and 0.37), so each module is
compressed both ways and keeps the smaller error of its exact delta.

**One scale per module.** With `quantize: ternary` each factor becomes T =
sign(kept) in {-1, 0, 1}. The module's one scale c multiplies the product:
W_hat = c * T_B @ T_A. By default c is the least-squares fit on the exact
delta, c = <W, T_B T_A> / ||T_B T_A||^2 (the best single scale for those
signs); with an explicit `alpha` it is ComPEFT's own rule, (alpha std(B)) *
(alpha std(A)) * (lora_alpha / r). `quantize: int8` stores round(127 x /
max|kept|) per factor (c = the product of the two max/127 steps and the LoRA
scale); `none` only sparsifies and keeps the values.

**A folder both PEFT and lmlang load.** The integer factors are written as
int8 tensors under PEFT's own names, and each module's scale c goes into
`alpha_pattern` (c = alpha_m / r, so alpha_m = c r; c sqrt(r) with rsLoRA),
exact module names, regex-escaped. PEFT copies int8 tensors into its float
parameters on load; lmlang's adapter host casts them too. On disk that is one
byte per factor entry: about a quarter of an fp32 adapter, whatever the
density. The compact ComPEFT encoding (a bitmap of kept positions plus one
sign bit, or one int8 value, per kept entry, and the scale) is what density
buys: its exact size is reported as `packed_bytes`, and with `packed=True` it
is written beside the PEFT files as `compeft.safetensors`, from which
`unpack` rebuilds the same PEFT folder. (vLLM ignores `alpha_pattern`, so a
ternary or int8 folder is for PEFT and lmlang; `quantize: none` folders keep
the adapter's scales.)

Results are cached under LMLANG_HOME/adapters/compeft-<key> by the input's
content and the options, and published atomically.

Proposed syntax (LANGUAGE.md): `adapter small = compress senti { density:
0.1, quantize: ternary }` -> an adapter node whose value is `compress_lora(
folder, density, quantize, alpha)`.path; `lmlang eval` / the trace reports
`size_ratio`, `packed_ratio` and `overall_error` from the result.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MergeError
from .stream import MergeConfigError

FORMAT_VERSION = 1
QUANTIZE = ("ternary", "int8", "none")
REPORT = "compeft.json"
PACKED = "compeft.safetensors"
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
_FACTOR_RE = re.compile(
    r"^(?:base_model\.model\.)?(.*)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.weight)?$"
)


@dataclass
class CompressResult:
    path: Path
    cached: bool
    seconds: float
    density: float
    quantize: str
    scale_rule: str  # "least_squares" | "alpha_std" | "absmax" | "lora"
    original_bytes: int  # the input's adapter_model.safetensors
    bytes: int  # the output's adapter_model.safetensors
    size_ratio: float
    packed_bytes: int  # the ComPEFT encoding (bitmaps + values + scales)
    packed_ratio: float
    overall_error: float  # relative Frobenius error of the exact deltas, all modules
    module_errors: dict[str, float] = field(default_factory=dict)
    balanced_modules: int = 0  # modules stored in their balanced factorization (the smaller error)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


# ---------------------------------------------------------------- kernels


def sparsify(factor, density: float):
    """(kept values, boolean mask): the top `density` fraction of |factor|
    (lmlang's magnitude rule: ties at the cut go to the lower index)."""
    from .methods import magnitude

    kept = magnitude(factor, density)
    return kept, kept != 0


def quantize_factor(kept, mask, quantize: str, alpha: float | None, original):
    """(integer or float values, step) with kept ~= values * step. Ternary's
    step is 1 unless `alpha` asks for ComPEFT's alpha * std(original)."""
    import torch

    if quantize == "ternary":
        values = torch.sign(kept).to(torch.int8)
        step = 1.0 if alpha is None else float(alpha) * float(original.float().std())
        return values, step
    if quantize == "int8":
        top = float(kept.abs().max()) if mask.any() else 0.0
        step = top / 127.0 if top > 0 else 1.0
        return torch.round(kept / step).clamp(-127, 127).to(torch.int8), step
    return kept.clone(), 1.0


def balance_factors(a, b):
    """(A', B') with B' A' = B A and B' = U S^1/2, A' = S^1/2 V^T (the SVD of
    B A), computed from the factors' QR decompositions (no out x in matrix).

    Why: training leaves the product's scale split unevenly between A and B
    and its directions mixed across the r components; sparsifying and
    quantizing each factor then loses more than it needs to. In the balanced
    form the two factors carry the same singular values and each component is
    one singular direction, which low densities keep better (compress_lora
    tries both forms per module)."""
    import torch

    qb, rb = torch.linalg.qr(b.double())  # b: out x r
    qa, ra = torch.linalg.qr(a.double().T)  # a^T: in x r
    u, sv, vh = torch.linalg.svd(rb @ ra.T)
    root = sv.sqrt()
    return (root[:, None] * (vh @ qa.T)).to(a.dtype), ((qb @ u) * root).to(b.dtype)


def _module_scale(config: dict, module: str) -> tuple[float, int]:
    """(alpha / r or alpha / sqrt(r), r) for one module, PEFT's rule."""
    from ..models.peft_config import pattern_value

    r = int(pattern_value(config.get("rank_pattern"), module, config.get("r", 8)))
    alpha = float(pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", r)))
    return (alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r), r


def compress_module(a, b, lora_scale: float, density: float, quantize: str, alpha: float | None = None) -> dict:
    """Compress one module's factors (A: r x in, B: out x r, float32).

    Returns {"a", "b": stored values, "scale": c with W_hat = c * b @ a,
    "mask_a", "mask_b", "error": relative Frobenius error, "norm_sq",
    "diff_sq"}. Embedding factors are passed in the same B @ A layout."""

    kept_a, mask_a = sparsify(a, density)
    kept_b, mask_b = sparsify(b, density)
    qa, step_a = quantize_factor(kept_a, mask_a, quantize, alpha, a)
    qb, step_b = quantize_factor(kept_b, mask_b, quantize, alpha, b)
    exact = (b.double() @ a.double()) * lora_scale
    product = qb.double() @ qa.double()
    if quantize == "ternary" and alpha is None:
        denom = float((product * product).sum())
        scale = float((exact * product).sum()) / denom if denom > 0 else 0.0
    else:
        scale = step_a * step_b * lora_scale
    diff_sq = float(((exact - scale * product) ** 2).sum())
    norm_sq = float((exact * exact).sum())
    error = math.sqrt(diff_sq / norm_sq) if norm_sq > 0 else 0.0
    return {
        "a": qa,
        "b": qb,
        "scale": scale,
        "mask_a": mask_a,
        "mask_b": mask_b,
        "error": error,
        "norm_sq": norm_sq,
        "diff_sq": diff_sq,
    }


def packed_size(mask, quantize: str, dtype_bytes: int = 4) -> int:
    """Bytes of one factor in the ComPEFT encoding: a bitmap of kept
    positions, then a sign bit (ternary), a byte (int8) or the value (none)
    per kept entry, plus a 4-byte scale."""
    n, k = mask.numel(), int(mask.sum())
    per_kept = {"ternary": None, "int8": 1, "none": dtype_bytes}[quantize]
    values = math.ceil(k / 8) if per_kept is None else k * per_kept
    return math.ceil(n / 8) + values + 4


# ---------------------------------------------------------------- folders


def _check_options(density: Any, quantize: Any, alpha: Any) -> None:
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:
        raise MergeConfigError(f"compress density must be a number in (0, 1], got {density!r}")
    if quantize not in QUANTIZE:
        from ..suggest import did_you_mean

        hint = did_you_mean(str(quantize), QUANTIZE) or f"use one of {', '.join(QUANTIZE)}"
        raise MergeConfigError(f"unknown compress quantize '{quantize}'; {hint}")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0):
        raise MergeConfigError(f"compress alpha must be a positive number, got {alpha!r}")
    if alpha is not None and quantize != "ternary":
        raise MergeConfigError("compress alpha (ComPEFT's alpha * std scale) applies to quantize: ternary only")


def _read(folder: Path) -> tuple[dict, dict]:
    from ..models.adapters import read_adapter_files

    try:
        config, tensors = read_adapter_files(folder)
    except Exception as exc:  # LmlangRuntimeError from the reader: same words, a merge error here
        raise MergeError(getattr(exc, "message", str(exc))) from None
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise MergeError(f"{folder}: compress takes a LoRA adapter, not {config.get('peft_type')}")
    if config.get("use_dora"):
        raise MergeError(
            f"{folder}: DoRA adapters cannot be compressed factor by factor (their magnitude vector is not a delta)"
        )
    if config.get("modules_to_save"):
        raise MergeError(
            f"{folder}: adapters with fully trained modules (modules_to_save) are not supported by compress"
        )
    return config, tensors


def _modules(folder: Path, tensors: dict) -> dict[str, dict[str, str]]:
    """module name -> {"A": key, "B": key} in the file."""
    out: dict[str, dict[str, str]] = {}
    for key in tensors:
        m = _FACTOR_RE.match(key)
        if not m:
            raise MergeError(f"{folder}: unexpected tensor {key} in a LoRA adapter")
        out.setdefault(m.group(1), {})[m.group(2)[-1]] = key
    for module, parts in out.items():
        if set(parts) != {"A", "B"}:
            raise MergeError(f"{folder}: module {module} lacks its A or B factor")
    return out


def content_key(folder: Path) -> str:
    """sha256 over the bytes of an adapter's config and weights (small files)."""
    h = hashlib.sha256()
    for name in (CONFIG, WEIGHTS):
        h.update(name.encode() + b"\0" + (folder / name).read_bytes() + b"\0")
    return h.hexdigest()


def compress_lora(
    folder: str | os.PathLike,
    density: float = 0.1,
    quantize: str = "ternary",
    alpha: float | None = None,
    packed: bool = False,
    out_dir: str | os.PathLike | None = None,
    balance: bool = True,
) -> CompressResult:
    """ComPEFT-compress the PEFT LoRA folder; see the module docstring.

    balance: per module, compress both the factors as trained and their
    balanced SVD form (`balance_factors`; the same product) and keep the one
    with the smaller error of the exact delta (not for a lossless copy:
    density 1, quantize none)."""
    import torch
    from safetensors.torch import save_file

    start = time.perf_counter()
    _check_options(density, quantize, alpha)
    src = Path(folder).expanduser().resolve()
    config, tensors = _read(src)
    balance = bool(balance) and not (quantize == "none" and density >= 1)
    options = {
        "density": float(density),
        "quantize": quantize,
        "alpha": alpha,
        "packed": bool(packed),
        "balance": balance,
    }
    key = hashlib.sha256(
        json.dumps({"v": FORMAT_VERSION, "input": content_key(src), "options": options}, sort_keys=True).encode()
    ).hexdigest()
    final = _destination(key, out_dir)
    saved = _cached(final, key)
    if saved is not None:
        saved.update(path=final, cached=True, seconds=time.perf_counter() - start)
        return CompressResult(**saved)

    rslora = bool(config.get("use_rslora"))
    out_tensors: dict[str, Any] = {}
    packed_tensors: dict[str, Any] = {}
    patterns: dict[str, float] = {}
    errors: dict[str, float] = {}
    diff_total = norm_total = 0.0
    packed_bytes = balanced = 0
    for module, parts in sorted(_modules(src, tensors).items()):
        a_key, b_key = parts["A"], parts["B"]
        a = tensors[a_key].float()  # embedding factors too: the error is layout-free
        b = tensors[b_key].float()
        lora_scale, r = _module_scale(config, module)
        res = compress_module(a, b, lora_scale, density, quantize, alpha)
        if balance:
            bal_a, bal_b = balance_factors(a, b)
            other = compress_module(bal_a, bal_b, lora_scale, density, quantize, alpha)
            if other["diff_sq"] < res["diff_sq"]:
                res = other
                balanced += 1
        errors[module] = res["error"]
        diff_total += res["diff_sq"]
        norm_total += res["norm_sq"]
        packed_bytes += packed_size(res["mask_a"], quantize) + packed_size(res["mask_b"], quantize)
        if quantize == "none":
            out_tensors[a_key] = res["a"].to(tensors[a_key].dtype).contiguous()
            out_tensors[b_key] = res["b"].to(tensors[b_key].dtype).contiguous()
        else:
            out_tensors[a_key] = res["a"].contiguous()
            out_tensors[b_key] = res["b"].contiguous()
            patterns[re.escape(module)] = res["scale"] * (math.sqrt(r) if rslora else r)
        if packed:
            packed_tensors.update(_pack(a_key, res["a"], res["mask_a"], quantize))
            packed_tensors.update(_pack(b_key, res["b"], res["mask_b"], quantize))
            packed_tensors[f"{module}.scale"] = torch.tensor(
                [res["scale"] if quantize != "none" else lora_scale], dtype=torch.float64
            )
    new_config = dict(config)
    if quantize != "none":
        new_config["alpha_pattern"] = patterns  # every module has its own exact entry
    original_bytes = (src / WEIGHTS).stat().st_size
    overall = math.sqrt(diff_total / norm_total) if norm_total > 0 else 0.0
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        save_file(out_tensors, str(tmp / WEIGHTS), metadata={"format": "pt", "lmlang": "compeft"})
        (tmp / CONFIG).write_text(json.dumps(new_config, indent=2, sort_keys=True))
        if packed:
            save_file(packed_tensors, str(tmp / PACKED), metadata={"quantize": quantize, "density": str(density)})
        out_bytes = (tmp / WEIGHTS).stat().st_size
        result = CompressResult(
            final,
            False,
            0.0,
            float(density),
            quantize,
            _scale_rule(quantize, alpha),
            original_bytes,
            out_bytes,
            out_bytes / original_bytes,
            packed_bytes,
            packed_bytes / original_bytes,
            overall,
            errors,
            balanced,
        )
        result.seconds = time.perf_counter() - start
        report = {k: v for k, v in result.to_dict().items() if k not in ("path", "cached", "seconds")}
        (tmp / REPORT).write_text(json.dumps({"key": key, "source": str(src), "options": options, **report}, indent=1))
        _card(tmp, src, result)
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _scale_rule(quantize: str, alpha: float | None) -> str:
    if quantize == "ternary":
        return "least_squares" if alpha is None else "alpha_std"
    return "absmax" if quantize == "int8" else "lora"


def _destination(key: str, out_dir) -> Path:
    if out_dir is None:
        from ..home import cache_dir

        return cache_dir("adapters") / f"compeft-{key[:32]}"
    final = Path(out_dir).expanduser().resolve()
    if final.exists() and any(final.iterdir()) and not (final / REPORT).exists():
        raise MergeError(
            f"output folder {final} exists and is not an lmlang compressed adapter; choose an empty or new folder"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    return final


def _cached(final: Path, key: str) -> dict | None:
    try:
        saved = json.loads((final / REPORT).read_text())
    except (OSError, ValueError):
        return None
    if saved.get("key") != key or not (final / WEIGHTS).is_file():
        return None
    names = CompressResult.__dataclass_fields__
    return {k: v for k, v in saved.items() if k in names}


def _publish(tmp: Path, final: Path) -> None:
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / REPORT).exists():  # not a lost race with an equal result
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _card(folder: Path, src: Path, result: CompressResult) -> None:
    lines = [
        f"# ComPEFT-compressed LoRA ({result.quantize}, density {result.density:g})",
        "",
        f"Compressed by lmlang from `{src}`.",
        "",
        f"- weights on disk: {result.bytes} bytes ({result.size_ratio:.3f} of the original {result.original_bytes})",
        f"- ComPEFT packed encoding: {result.packed_bytes} bytes ({result.packed_ratio:.3f})",
        f"- scale rule: {result.scale_rule}; relative Frobenius error of the deltas: {result.overall_error:.4g}",
        "",
        "| module | relative error |",
        "| --- | --- |",
    ]
    lines += [f"| `{m}` | {e:.4g} |" for m, e in sorted(result.module_errors.items())]
    (folder / "README.md").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------- packed form


def _pack(key: str, values, mask, quantize: str) -> dict:
    """The compact encoding of one factor: a packed bitmap, packed sign bits
    (ternary) or the kept values, and the shape."""
    import numpy as np
    import torch

    flat_mask = mask.reshape(-1).numpy()
    kept = values.reshape(-1)[torch.from_numpy(flat_mask)]
    out = {
        f"{key}.mask": torch.from_numpy(np.packbits(flat_mask.astype(np.uint8))),
        f"{key}.shape": torch.tensor(list(values.shape), dtype=torch.int64),
    }
    if quantize == "ternary":
        out[f"{key}.signs"] = torch.from_numpy(np.packbits((kept > 0).numpy().astype(np.uint8)))
    else:
        out[f"{key}.values"] = kept.contiguous()
    return out


def unpack(folder: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Rebuild the PEFT weights of a compressed folder from its compeft.safetensors
    (the transport form) into out_dir: the same tensors as the folder's own."""
    import numpy as np
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = Path(folder)
    if not (src / PACKED).is_file():
        raise MergeError(f"{src}: no {PACKED} (compress with packed=True)")
    report = json.loads((src / REPORT).read_text())
    quantize = report["quantize"]
    with safe_open(str(src / PACKED), "pt") as fh:
        packed = {k: fh.get_tensor(k) for k in fh.keys()}
    tensors = {}
    for name in [k[: -len(".shape")] for k in packed if k.endswith(".shape")]:
        shape = tuple(int(x) for x in packed[f"{name}.shape"])
        n = math.prod(shape)
        mask = torch.from_numpy(np.unpackbits(packed[f"{name}.mask"].numpy(), count=n).astype(bool))
        if quantize == "ternary":
            k = int(mask.sum())
            signs = torch.from_numpy(np.unpackbits(packed[f"{name}.signs"].numpy(), count=k).astype(np.int8))
            flat = torch.zeros(n, dtype=torch.int8)
            flat[mask] = signs * 2 - 1
        else:
            kept = packed[f"{name}.values"]
            flat = torch.zeros(n, dtype=kept.dtype)
            flat[mask] = kept
        tensors[name] = flat.reshape(shape).contiguous()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt", "lmlang": "compeft"})
    shutil.copy2(src / CONFIG, out / CONFIG)
    return out
