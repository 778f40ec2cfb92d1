"""An adapter stack as ONE exact PEFT LoRA folder, for a server to load as a module.

Locally `base + a * 0.8 + b` applies each adapter's delta W = scale_i * B_i @ A_i
times its scale s_i, summed. A served model takes one LoRA module per request,
so the stack is exported as one adapter whose product is exactly that sum:

    A = [A_1; A_2; ...]          (rows stacked: rank R = r_1 + r_2 + ...)
    B = [s_1 scale_1 B_1, s_2 scale_2 B_2, ...]      (columns side by side)
    B @ A = sum_i s_i scale_i B_i @ A_i,   with lora_alpha = R (scale 1)

Concatenation is exact (no SVD, no averaging of factors). An adapter with a
smaller rank on some module (rank_pattern), or without that module, is padded
with zero rows and columns so every module has rank R. A single adapter at
scale 1 is served from its own folder. Exports are cached under
LMLANG_HOME/served-adapters by content (the folders' contents and the scales).

Refused (a runtime error naming the adapter): embedding LoRAs and mixed
fan_in_fan_out layouts (vLLM reads neither from a concatenation), and what
lmlang.merge.lora.load_lora refuses (DoRA, modules_to_save, biases).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..errors import LmlangRuntimeError
from ..home import cache_dir

EXPORT_VERSION = 1
MARKER = "lmlang-served-adapter.json"


def export_stack(stack: Sequence[tuple[str | os.PathLike, float]]) -> Path:
    """The folder of one PEFT adapter equal to the stack [(adapter folder, scale), ...]."""
    pairs = [(Path(f), float(s)) for f, s in stack]
    if not pairs:
        raise ValueError("an empty adapter stack")
    if len(pairs) == 1 and pairs[0][1] == 1.0:
        return pairs[0][0]
    out = cache_dir("served-adapters") / _key(pairs)
    if (out / MARKER).is_file():
        return out
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out.parent))
    try:
        _write(pairs, tmp)
        try:
            os.replace(tmp, out)
        except OSError:  # another process published it first
            if not (out / MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def module_name(folder: str | os.PathLike) -> str:
    """A stable LoRA module name for a folder (what requests name as their model)."""
    return "lmlang-" + hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:12]


def _key(stack: list[tuple[Path, float]]) -> str:
    from ..merge.lora import _content_key

    text = json.dumps([EXPORT_VERSION, [(_content_key(f), repr(s)) for f, s in stack]])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _write(stack: list[tuple[Path, float]], out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from ..errors import MergeError
    from ..merge.lora import PREFIX, load_lora

    try:
        adapters = [load_lora(f) for f, _ in stack]
    except MergeError as e:
        raise LmlangRuntimeError(f"cannot serve this adapter stack: {e.message}", hint=e.hint) from None
    for (folder, _), ad in zip(stack, adapters):
        if any(m.embedding for m in ad.modules.values()):
            raise LmlangRuntimeError(
                f"adapter {folder} adapts embeddings, which lmlang cannot export for a server",
                hint="apply it at scale 1 on its own, or run the model locally",
            )
    layouts = {m.fan_in_fan_out for ad in adapters for m in ad.modules.values()}
    if len(layouts) > 1:
        raise LmlangRuntimeError("adapters with different fan_in_fan_out layouts cannot be stacked for a server")
    ranks = [max(m.a.shape[0] for m in ad.modules.values()) for ad in adapters]
    total = sum(ranks)
    names = sorted({n for ad in adapters for n in ad.modules})
    tensors = {}
    for name in names:
        shape = next(ad.modules[name] for ad in adapters if name in ad.modules)
        a_rows, b_cols = [], []
        for (_, s), ad, r in zip(stack, adapters, ranks):
            m = ad.modules.get(name)
            a = torch.zeros((r, shape.a.shape[1]))
            b = torch.zeros((shape.b.shape[0], r))
            if m is not None:
                k = m.a.shape[0]
                a[:k] = m.a
                b[:, :k] = m.b * (m.scale * s)
            a_rows.append(a)
            b_cols.append(b)
        key = PREFIX + name[: -len(".weight")]
        tensors[f"{key}.lora_A.weight"] = torch.cat(a_rows, 0).contiguous()
        tensors[f"{key}.lora_B.weight"] = torch.cat(b_cols, 1).contiguous()
    save_file(tensors, str(out / "adapter_model.safetensors"))
    first = adapters[0].config
    config = {
        "peft_type": "LORA",
        "task_type": first.get("task_type", "CAUSAL_LM"),
        "r": total,
        "lora_alpha": total,
        "target_modules": sorted({n[: -len(".weight")].rsplit(".", 1)[-1] for n in names}),
        "fan_in_fan_out": layouts.pop() if layouts else False,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "lora_dropout": 0.0,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "base_model_name_or_path": first.get("base_model_name_or_path"),
        "inference_mode": True,
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    recipe = {"version": EXPORT_VERSION, "stack": [[str(f), s] for f, s in stack], "rank": total}
    (out / MARKER).write_text(json.dumps(recipe, indent=2))
