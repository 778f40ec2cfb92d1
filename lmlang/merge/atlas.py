"""aTLAS (Zhang et al., NeurIPS 2024, "Knowledge Composition using Task
Vectors with Learned Anisotropic Scaling"): learn one coefficient per block
(or per tensor, or per model) and task vector on a small labelled set.

    W_t = W_base,t + sum_i c[group(t), i] * delta_i,t

Only the coefficients c [groups, experts] are parameters: the base weights
and the deltas are frozen, and the forward pass is functional
(torch.func.functional_call with the merged tensors), so no model copy is
trained. The loss is the completion cross-entropy of the rows (lmlang's
training data shapes: prompt/completion or messages; models/training.py
renders them exactly as LoRA training does), minimised by Adam on
shuffled mini-batches. Groups (`granularity`): "block" = one per
transformer layer (`...layers.<i>.`) plus one for everything else the
experts touch (embeddings, final norm, head); "tensor" = one per weight;
"model" = one per expert (task arithmetic with learned lambdas).

Experts are PEFT LoRA folders (delta = (alpha/r) B A per module, exact) or
full model folders on the same base (delta = expert - base for every float
tensor that differs). The result is an ordinary merged model folder
(output "full"), or for LoRA experts optionally a LoRA folder (output
"lora": truncated SVD of each merged delta at the sum of the experts' ranks,
exact since a block-scaled sum of rank-r_i terms has rank <= sum r_i). The
learned coefficients, the loss per step and the recipe are in atlas.json in
the folder; the folder is cached by content (base, experts, data bytes,
options) under LMLANG_HOME/merges.

Proposed syntax (LANGUAGE.md): `model learned = merge atlas { base: base,
models: [base + senti, base + math], fit_on: "data/dev.jsonl",
granularity: block, steps: 50, lr: 0.01, init: 0.3 }`; checker: fit_on is
a data path (like `train`), granularity in block|tensor|model, steps int >=
1, lr > 0; graph: an AtlasSpec (base, experts, data, options) whose value is
`fit_atlas(...).path`, a model folder like any merge's; runtime: the
executor's merge step calls fit_atlas (cached) and loads the folder.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .stream import MARKER, MergeConfigError

FORMAT_VERSION = 1
MANIFEST = "atlas.json"
GRANULARITY = ("block", "tensor", "model")
DEFAULTS = {
    "granularity": "block",
    "steps": 20,
    "lr": 0.01,
    "init": None,
    "batch_size": 8,
    "seed": 0,
    "max_length": 512,
    "output": "full",
}
_LAYER = re.compile(r"(^|\.)layers\.(\d+)\.")


@dataclass
class AtlasResult:
    path: Path
    experts: list[str]
    groups: list[str]
    coefficients: dict[str, dict[str, float]]  # group -> expert -> c
    losses: list[float] = field(default_factory=list)
    cached: bool = False
    seconds: float = 0.0


def group_of(name: str, granularity: str) -> str:
    """The coefficient group of a weight name."""
    if granularity == "tensor":
        return name
    if granularity == "model":
        return "model"
    m = _LAYER.search(name)
    return f"layer.{int(m.group(2))}" if m else "other"


def _group_order(g: str) -> tuple:
    return (0, int(g.split(".")[1]), "") if g.startswith("layer.") else (1, 0, g)


def fit_coefficients(
    model, deltas: Sequence[dict], granularity: str, loss_fn: Callable, *, init: float, steps: int, lr: float
) -> tuple[list[str], Any, list[float]]:
    """Learn c [groups, experts] by Adam on loss_fn(forward), model frozen.

    deltas: per expert {weight name: delta tensor}; forward(**kw) runs the
    model with W = W_base + sum_i c[g, i] delta_i on the named weights.
    Returns (group names, c, the loss at each step before its update)."""
    import torch
    from torch.func import functional_call

    names = sorted(set().union(*(set(d) for d in deltas)))
    groups = sorted({group_of(n, granularity) for n in names}, key=_group_order)
    index = {g: i for i, g in enumerate(groups)}
    params = dict(model.named_parameters())
    for p in params.values():
        p.requires_grad_(False)
    coef = torch.full((len(groups), len(deltas)), float(init), requires_grad=True)
    optimizer = torch.optim.Adam([coef], lr=lr)

    def forward(**kw):
        merged = {}
        for n in names:
            row = coef[index[group_of(n, granularity)]]
            w = params[n]
            for i, d in enumerate(deltas):
                if n in d:
                    w = w + row[i] * d[n]
            merged[n] = w
        return functional_call(model, merged, args=(), kwargs=kw)

    losses = []
    for _ in range(steps):
        loss = loss_fn(forward)
        losses.append(float(loss.detach()))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return groups, coef.detach().clone(), losses


def completion_loss(examples, pad_id: int, batch_size: int, seed: int) -> Callable:
    """A loss_fn over shuffled mini-batches of encoded rows (cross-entropy on the completions)."""
    import torch

    from ..models.training import collate

    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []

    def loss_fn(forward):
        nonlocal order
        if len(order) < batch_size:
            order += torch.randperm(len(examples), generator=gen).tolist()
        batch, order = order[:batch_size], order[batch_size:]
        ids, mask, labels = collate([examples[j] for j in batch], pad_id)
        logits = forward(input_ids=ids, attention_mask=mask).logits
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
        )

    return loss_fn


def expert_deltas(base_input, folder: Path) -> tuple[dict, Any]:
    """{weight name: fp32 delta} of a LoRA folder or a full model folder, and the LoraAdapter (or None)."""

    from .lora import load_lora
    from .twin import _read_tensors

    if (folder / "adapter_config.json").is_file():
        lora = load_lora(folder)
        for n, mod in lora.modules.items():
            if n not in base_input.tensors:
                raise MergeConfigError(f"{folder.name} targets {n}, which the base model lacks")
        return {n: mod.delta().float() for n, mod in lora.modules.items()}, lora
    from .stream import load_input

    other = load_input(folder)
    names = [n for n, meta in base_input.tensors.items() if meta.is_float and n in other.tensors]
    base_w, exp_w = _read_tensors(base_input.path, names), _read_tensors(other.path, names)
    out = {}
    for n in names:
        if base_w[n].shape != exp_w[n].shape:
            raise MergeConfigError(
                f"{folder.name}: {n} has shape {list(exp_w[n].shape)}, the base {list(base_w[n].shape)}"
            )
        d = exp_w[n].float() - base_w[n].float()
        if bool(d.any()):
            out[n] = d
    return out, None


def _options(options: dict | None) -> dict:
    opts = {**DEFAULTS, **(options or {})}
    unknown = sorted(set(opts) - set(DEFAULTS))
    if unknown:
        raise MergeConfigError(f"merge atlas: unknown option '{unknown[0]}'; options: {', '.join(DEFAULTS)}")
    if opts["granularity"] not in GRANULARITY:
        raise MergeConfigError(
            f"merge atlas: granularity must be one of {', '.join(GRANULARITY)}, got {opts['granularity']!r}"
        )
    if not (isinstance(opts["steps"], int) and opts["steps"] >= 1):
        raise MergeConfigError(f"merge atlas: steps must be an integer >= 1, got {opts['steps']!r}")
    if not (isinstance(opts["lr"], (int, float)) and opts["lr"] > 0):
        raise MergeConfigError(f"merge atlas: lr must be positive, got {opts['lr']!r}")
    if opts["output"] not in ("full", "lora"):
        raise MergeConfigError(f"merge atlas: output must be full or lora, got {opts['output']!r}")
    return opts


def fit_atlas(
    base: str | os.PathLike,
    experts: Sequence[tuple[str, str | os.PathLike]],
    data: str | os.PathLike,
    options: dict | None = None,
    out_dir: str | os.PathLike | None = None,
) -> AtlasResult:
    """Learn the coefficients on `data` and write the merged folder (cached); see the module docstring."""
    from ..models.training import _load_base, encode_rows, read_rows
    from .lora import _content_key
    from .stream import load_input

    start = time.perf_counter()
    opts = _options(options)
    if len(experts) < 1:
        raise MergeConfigError("merge atlas needs at least one expert")
    names = [str(n) for n, _ in experts]
    if len(set(names)) != len(names):
        raise MergeConfigError("merge atlas: expert names must be unique")
    folders = [Path(p).expanduser().resolve() for _, p in experts]
    data_path = Path(data).expanduser()
    data_bytes = data_path.read_bytes() if data_path.is_file() else b""
    rows = read_rows(data_path, data_bytes or None)
    base_input = load_input(base)
    init = opts["init"] if opts["init"] is not None else 1.0 / len(experts)
    key = hashlib.sha256(
        json.dumps(
            {
                "v": FORMAT_VERSION,
                "base": base_input.content_key,
                "options": {**opts, "init": init},
                "experts": [[n, _content_key(p)] for n, p in zip(names, folders)],
                "data": hashlib.sha256(data_bytes).hexdigest(),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    final = _destination(key, out_dir)
    saved = _cached(final, key)
    if saved is not None:
        return _result(final, saved, True, time.perf_counter() - start)
    pairs = [expert_deltas(base_input, p) for p in folders]
    deltas, loras = [d for d, _ in pairs], [ad for _, ad in pairs]
    if opts["output"] == "lora" and any(ad is None for ad in loras):
        raise MergeConfigError("merge atlas: output lora needs LoRA experts (a full model has no LoRA form)")
    model, tokenizer = _load_base(base_input.path)
    model.eval()
    examples = encode_rows(tokenizer, rows, opts["max_length"], data_path)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    groups, coef, losses = fit_coefficients(
        model,
        deltas,
        opts["granularity"],
        completion_loss(examples, pad, opts["batch_size"], opts["seed"]),
        init=init,
        steps=opts["steps"],
        lr=opts["lr"],
    )
    del model
    if not all(math.isfinite(x) for x in losses) or not bool(coef.isfinite().all()):
        raise MergeConfigError("merge atlas: the loss diverged; lower lr")
    manifest = {
        "key": key,
        "experts": names,
        "experts_from": [str(p) for p in folders],
        "base": str(base_input.path),
        "data": str(data_path),
        "options": {**opts, "init": init},
        "groups": groups,
        "coefficients": {g: {n: float(coef[gi, i]) for i, n in enumerate(names)} for gi, g in enumerate(groups)},
        "losses": losses,
    }
    _write(final, base_input, deltas, loras, groups, coef, opts, manifest)
    return _result(final, manifest, False, time.perf_counter() - start)


def merged_delta_fn(deltas: Sequence[dict], groups: list[str], coef, granularity: str) -> Callable:
    """name -> sum_i c[group(name), i] * delta_i[name] (fp32)."""
    index = {g: i for i, g in enumerate(groups)}

    def merged(name: str):
        row = coef[index[group_of(name, granularity)]]
        out = None
        for i, d in enumerate(deltas):
            if name in d:
                term = float(row[i]) * d[name]
                out = term if out is None else out + term
        return out

    return merged


def _write(final: Path, base_input, deltas, loras, groups, coef, opts: dict, manifest: dict) -> None:
    from .lora import _write_full, _write_lora
    from .stream import _publish

    targets = sorted(set().union(*(set(d) for d in deltas)))
    merged = merged_delta_fn(deltas, groups, coef, opts["granularity"])
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        if opts["output"] == "full":
            _write_full(tmp, base_input, targets, merged, None)
        else:
            rank = sum(int(ad.config.get("r", 8)) for ad in loras)
            manifest["rank"], _, manifest["lora_error"] = _write_lora(tmp, loras, targets, merged, rank, None)
            cfg = json.loads((tmp / "adapter_config.json").read_text())
            cfg["base_model_name_or_path"] = str(base_input.path)
            (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        (tmp / MARKER).write_text(json.dumps({"key": manifest["key"], "kind": "atlas"}))
        _card(tmp, manifest)
        _publish(tmp, final, replace=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _destination(key: str, out_dir) -> Path:
    from ..errors import MergeError

    if out_dir is None:
        from ..home import cache_dir

        return cache_dir("merges") / f"atlas-{key[:24]}"
    final = Path(out_dir).expanduser().resolve()
    if final.exists() and any(final.iterdir()) and not (final / MANIFEST).exists():
        raise MergeError(
            f"output folder {final} exists and is not an lmlang atlas merge; choose an empty or new folder"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    return final


def _cached(final: Path, key: str) -> dict | None:
    try:
        saved = json.loads((final / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return saved if saved.get("key") == key else None


def _result(final: Path, manifest: dict, cached: bool, seconds: float) -> AtlasResult:
    return AtlasResult(
        final,
        list(manifest["experts"]),
        list(manifest["groups"]),
        dict(manifest["coefficients"]),
        list(manifest["losses"]),
        cached,
        seconds,
    )


def _card(folder: Path, manifest: dict) -> None:
    names = manifest["experts"]
    lines = [
        f"# aTLAS merge ({manifest['options']['granularity']} coefficients, {manifest['options']['steps']} steps)",
        "",
        f"Base: `{manifest['base']}`. Fitted on `{manifest['data']}`; loss "
        f"{manifest['losses'][0]:.4g} -> {manifest['losses'][-1]:.4g}.",
        "",
        "| group | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    for g, row in manifest["coefficients"].items():
        lines.append(f"| {g} | " + " | ".join(f"{row[n]:.4f}" for n in names) + " |")
    (folder / "README.md").write_text("\n".join(lines) + "\n")
