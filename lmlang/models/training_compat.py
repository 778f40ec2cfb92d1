"""Compatible updates (MUSCLE, Echterhoff et al. 2024): `train ... {
compatible_with: OLD, flip_weight: w }`.

An update that is more accurate on average can still break rows the old
model answered right (negative flips). The trainer runs the old model once
over the training rows, teacher-forced, and marks the completion *tokens* it
gets right (its greedy token equals the label there). MUSCLE's loss masks
tokens the same way: where the old model is right it distils the old model,
``KL(p_old || p_new)``, so the update keeps the old model's likelihood of
its right outputs (and the rest of its distribution there); where the old
model is wrong MUSCLE distils the new task model, and here the update learns
from the labels alone (the cross-entropy every row has; there is no separate
new task model to distil). The loss adds ``w * KL`` as a mean over the
batch's right tokens. An earlier version kept only rows right at every
token, which left out the right part of a nearly right answer (the year of
a date whose day is wrong): the cache key records the mask ("token").

The old model is a base folder plus a stack of adapters, applied with the
query-time adapter host, before the new adapter is wrapped around the base.
The cache key holds the old model's content (its base's key and each adapter
folder's files), not its path.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import LmlangRuntimeError


def compat_key(compatible_with: tuple, base_key: Callable[[Path], str]) -> dict:
    """What the adapter cache key records of the old model: content, not paths."""
    old_base, stack = compatible_with
    adapters = []
    for folder, scale in stack:
        digest = hashlib.sha256()
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            digest.update((Path(folder) / name).read_bytes())
        adapters.append([digest.hexdigest(), float(scale)])
    return {"base": base_key(Path(old_base)), "adapters": adapters, "mask": "token"}


@dataclass
class _Loaded:
    """What AdapterHost needs of a loaded model (models/loader.py's LoadedModel)."""

    model: Any
    tokenizer: Any = None
    adapter_host: Any = None


def old_predictions(model, tokenizer, base_path: Path, compatible_with: tuple, examples: list, batch: int) -> list:
    """Per example: (the old model's log-probabilities (right tokens, vocab) on
    the CPU, a bool mask over the completion positions saying which are right),
    or None when it gets no completion token right."""
    import torch

    from .adapters import AdapterHost
    from .training import _load_base, collate

    old_base, stack = compatible_with
    old_model = model
    if Path(old_base).resolve() != Path(base_path).resolve():
        old_model, old_tokenizer = _load_base(Path(old_base))
        if old_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise LmlangRuntimeError(
                f"compatible_with: the old model {old_base} has another tokenizer than the base {base_path}",
                hint="an update is compared with the old model token by token: use a model of the same family",
            )
        old_model.to(next(model.parameters()).device)
    old_model.eval()
    host = AdapterHost(_Loaded(old_model, tokenizer))
    try:
        names = []
        for i, (folder, scale) in enumerate(stack):
            host.add(f"old{i}", Path(folder))
            names.append((f"old{i}", float(scale)))
        device = next(old_model.parameters()).device
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        out: list = []
        with torch.no_grad(), host.activate(tuple(names)):
            for i in range(0, len(examples), batch):
                chunk = examples[i : i + batch]
                ids, mask, labels = (t.to(device) for t in collate(chunk, pad_id))
                logits = old_model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                for row in range(len(chunk)):
                    keep = labels[row, 1:] != -100
                    row_logits, targets = logits[row][keep], labels[row, 1:][keep]
                    right = row_logits.argmax(-1) == targets
                    kept = torch.log_softmax(row_logits[right], -1).cpu()
                    out.append((kept, right.cpu()) if bool(right.any()) else None)
    finally:
        host.close()
    return out


def compat_term(logits, old_rows: list, examples: list):
    """KL(p_old || p_new), mean over the completion tokens of the batch the
    old model got right (old_predictions); 0 when it got none right. `logits`
    are the new model's at every row's completion positions, row after row."""
    import torch
    import torch.nn.functional as F

    keep, targets = [], []
    for example, old in zip(examples, old_rows):
        if old is None:
            keep.append(torch.zeros(sum(1 for label in example.labels[1:] if label != -100), dtype=torch.bool))
        else:
            keep.append(old[1])
            targets.append(old[0])
    if not targets:
        return logits.sum() * 0.0
    mask = torch.cat(keep).to(logits.device)
    new = F.log_softmax(logits[mask].float(), -1)
    old_lp = torch.cat(targets).to(logits.device)
    return F.kl_div(new, old_lp, log_target=True, reduction="sum") / new.shape[0]
