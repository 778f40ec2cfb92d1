"""`train lora|dora|ia3|adalora on "data.jsonl" { ... }`: fine-tune a PEFT adapter, cached by content.

The method is the option `method` (absent: lora); each method's options and
defaults are one table, lmlang.models.options.TRAIN_METHODS. DoRA is PEFT's
LoraConfig(use_dora=True), IA3 its IA3Config, AdaLoRA its AdaLoraConfig with
the rank budget updated after every optimizer step (update_and_allocate) and
its orthogonality penalty in the loss (adalora_orth_penalty); the loop, the
data and the cache are the same for all four.

Data shape: a JSONL file (read by lmlang.jsonl: UTF-8, blank lines skipped, a
bad line named by its number), one JSON object per line:

    {"prompt": "sentiment: I loved it", "completion": "positive"}
    {"messages": [{"role": "system", "content": "..."},
                  {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}]}

* prompt/completion: both strings, the completion non-empty. When the base's
  tokenizer has a chat template, the row is rendered exactly as an lmlang query
  with one ``user`` message is: ``template([user: prompt], add_generation_prompt)``
  followed by the completion and whatever the template puts after an assistant
  message (e.g. ``<|im_end|>``), so the adapter learns to answer *and stop* the way
  queries prompt the model. Without a template: the prompt (with the tokenizer's
  BOS if it adds one), then the completion, then EOS.
* messages: a list of {"role": str, "content": str}; the last message must be the
  assistant's and non-empty. With a chat template the conversation up to it is the
  context; without one each earlier message is written as ``role: content\\n`` and
  the answer follows ``assistant: ``.

Loss is computed on the completion (last assistant message) tokens only; prompt
and padding positions have label -100. The prompt and the completion are
tokenized separately and concatenated, which is the token sequence the model sees
when it is prompted and then generates. Rows longer than ``max_length`` lose
prompt tokens from the left (then completion tokens from the right).

A bad row (invalid JSON, missing keys, wrong types, empty completion) raises
DataError naming the file and line.

The adapter is a PEFT folder (adapter_config.json + adapter_model.safetensors)
under ``cache_dir("adapters") / <sha256 of base content, data bytes, options>``,
published atomically; a second run with the same inputs reuses it without
training. Training is a plain fp32 AdamW loop (no Trainer), seeded: the same
seed gives bit-identical weights on the same machine. It runs on the
program's device (`device`: "auto" takes CUDA when there is one): the base and
every batch move there, and only the loss comes back to the host, once a step.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError, LmlangRuntimeError
from ..home import cache_dir
from ..suggest import did_you_mean
from .options import check_train_method, normalize_train_options, train_defaults
from .train_rows import read_rows  # (the checker reads rows through train_rows, without this module)

FORMAT_VERSION = 1  # bump when the training recipe changes what an option set produces

# The options, their defaults and rules are one torch-free table that the
# checker validates scripts against: lmlang.models.options.TRAIN_OPTIONS.
DEFAULT_OPTIONS: dict[str, Any] = train_defaults()

META_FILE = "lmlang_adapter.json"
# Files of a base folder that decide what training produces.
_BASE_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)


@dataclass(frozen=True)
class TrainResult:
    """Where a trained adapter lies, and what training it cost."""

    path: Path
    cached: bool
    seconds: float
    final_loss: float  # mean training loss over the last epoch
    steps: int = 0  # optimizer steps run (0 when cached)


@dataclass(frozen=True)
class Example:
    """One encoded row: token ids and labels (-100 where no loss)."""

    input_ids: list[int]
    labels: list[int]
    line: int


# ---------------------------------------------------------------- options


def normalize_options(options: dict | None) -> dict[str, Any]:
    """Defaults filled in, checked by the same rules as `lmlang check`,
    target_modules sorted: the cache key's view. `method` (default lora)
    picks the table; it stays in the result for every method but lora."""
    options = dict(options or {})
    method = options.pop("method", "lora")
    problem = check_train_method(str(method))
    if problem is not None:
        raise LmlangRuntimeError(problem.message, hint=problem.hint)
    out, problems = normalize_train_options(options, method)
    if problems:
        p = problems[0]
        got = f", got {(options or {})[p.option]!r}" if p.code != "unknown-option" else ""
        raise LmlangRuntimeError(p.message + got, hint=p.hint)
    return out


# ---------------------------------------------------------------- data


def _render(tokenizer, row: dict) -> tuple[list[int], list[int]]:
    """(context ids, answer ids) for one checked row."""
    if "messages" in row:
        context_messages, answer = row["messages"][:-1], row["messages"][-1]["content"]
    else:
        context_messages, answer = [{"role": "user", "content": row["prompt"]}], row["completion"]
    if getattr(tokenizer, "chat_template", None):
        full_messages = context_messages + [{"role": "assistant", "content": answer}]
        context = tokenizer.apply_chat_template(context_messages, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(full_messages, tokenize=False)
        if not full.startswith(context):
            raise ValueError("the chat template renders the answer's context differently from the generation prompt")
        tail = full[len(context) :]
        return (
            tokenizer(context, add_special_tokens=False)["input_ids"],
            tokenizer(tail, add_special_tokens=False)["input_ids"],
        )
    if "messages" in row:
        context = "".join(f"{m['role']}: {m['content']}\n" for m in context_messages) + "assistant: "
    else:
        context = row["prompt"]
    context_ids = tokenizer(context, add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    return context_ids, answer_ids


def encode_rows(tokenizer, rows: list[tuple[int, dict]], max_length: int, data_path: Path) -> list[Example]:
    examples = []
    for line, row in rows:
        try:
            context, answer = _render(tokenizer, row)
        except Exception as exc:  # template errors (unknown role, ...) belong to the row
            raise DataError(f"{data_path}:{line}: cannot render the row: {exc}") from None
        if not answer:
            raise DataError(f"{data_path}:{line}: the completion encodes to no tokens")
        answer = answer[: max_length - 1]
        context = context[max(0, len(context) - (max_length - len(answer))) :]
        examples.append(Example(context + answer, [-100] * len(context) + list(answer), line))
    return examples


def collate(examples: list[Example], pad_id: int):
    """Right-padded batch tensors: input_ids, attention_mask, labels (-100 on padding)."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(e.labels)
    return ids, mask, labels


# ---------------------------------------------------------------- cache keys

_key_memo: dict[tuple, str] = {}


def base_content_key(base_path: Path) -> str:
    """sha256 over the files of a base folder that decide training (weights,
    config, tokenizer). Memoized per process and on disk by (path, size, mtime)."""
    base_path = Path(base_path).resolve()
    files = sorted(
        p for p in base_path.iterdir() if p.is_file() and (p.name in _BASE_FILES or p.suffix == ".safetensors")
    )
    if not any(p.suffix == ".safetensors" for p in files):
        raise LmlangRuntimeError(f"base model folder {base_path} has no .safetensors weights")
    signature = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    memo_key = (str(base_path), signature)
    if memo_key in _key_memo:
        return _key_memo[memo_key]
    memo_file = cache_dir("adapters") / "base-keys.json"
    try:
        disk = json.loads(memo_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        disk = {}
    entry = disk.get(str(base_path))
    if isinstance(entry, dict) and entry.get("signature") == [list(s) for s in signature]:
        _key_memo[memo_key] = entry["key"]
        return entry["key"]
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode() + b"\0")
        with p.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
        digest.update(b"\0")
    key = digest.hexdigest()
    _key_memo[memo_key] = key
    disk[str(base_path)] = {"signature": [list(s) for s in signature], "key": key}
    tmp = memo_file.with_name(f".base-keys-{os.getpid()}-{os.urandom(8).hex()}.json")
    try:
        tmp.write_text(json.dumps(disk, indent=1), encoding="utf-8")
        os.replace(tmp, memo_file)
    except OSError:
        tmp.unlink(missing_ok=True)
    return key


def adapter_cache_key(base_key: str, data: bytes, options: dict) -> str:
    blob = json.dumps(
        {"format": FORMAT_VERSION, "base": base_key, "data": hashlib.sha256(data).hexdigest(), "options": options},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------- training


def train_lora(
    base_path: Path,
    data_path: Path,
    options: dict | None = None,
    progress: bool = True,
    device: str = "cpu",
    compatible_with: tuple | None = None,
    recipe: tuple = (),
) -> TrainResult:
    """Fine-tune an adapter (options["method"], default lora) on `data_path`
    over the HF folder `base_path`; the cached PEFT folder. The cache key does
    not include the device: an adapter trained on a GPU serves CPU runs and the
    other way round. `compatible_with`: (old base folder, ((adapter folder,
    scale), ...)), the old model of a MUSCLE update (training_compat.py).
    `recipe`: how a data set's rows were made (lifecycle.data.recipe: the
    files, the generating query, a selection's encoder), recorded in the
    adapter's metadata; the cache key holds the rows' bytes already."""
    from .training_compat import compat_key

    start = time.perf_counter()
    base_path, data_path = Path(base_path), Path(data_path)
    opts = normalize_options(options)
    if compatible_with is None and "flip_weight" in opts:
        raise LmlangRuntimeError("flip_weight needs compatible_with (the old model)")
    if compatible_with is not None:
        opts.setdefault("flip_weight", 1.0)
        opts["compatible_with"] = compat_key(compatible_with, base_content_key)
    if not base_path.is_dir():
        raise LmlangRuntimeError(f"base model folder not found: {base_path}")
    try:
        data = data_path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"training data not found: {data_path}") from None
    rows = read_rows(data_path, data)  # validate before any cache lookup: a bad file is always an error
    key = adapter_cache_key(base_content_key(base_path), data, opts)
    final = cache_dir("adapters") / key
    if _complete(final):
        meta = _read_meta(final)
        return TrainResult(final, True, time.perf_counter() - start, float(meta.get("final_loss", float("nan"))), 0)

    model, tokenizer = _load_base(base_path)
    examples = encode_rows(tokenizer, rows, opts["max_length"], data_path)
    opts_run = dict(opts)
    if opts.get("method") == "adalora" and opts["total_step"] is None:  # the schedule spans the run
        opts_run["total_step"] = math.ceil(len(examples) / opts["batch_size"]) * opts["epochs"]
    dev = training_device(device)
    old = None
    if compatible_with is not None:
        from .training_compat import old_predictions

        model.to(dev)
        old = old_predictions(model, tokenizer, base_path, compatible_with, examples, opts["batch_size"])
    peft_model = _wrap(model, opts_run, base_path)
    peft_model.to(dev)
    losses, steps = _fit(peft_model, tokenizer, examples, opts_run, progress, old)
    final_loss = losses[-1] if losses else float("nan")
    seconds = time.perf_counter() - start
    tmp = final.parent / f".tmp-{key[:16]}-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
        meta = {
            "format": FORMAT_VERSION,
            "model_type": getattr(model.config, "model_type", None),
            "vocab_size": len(tokenizer),
            "base": str(base_path),
            "data": str(data_path),
            **({"recipe": recipe} if recipe else {}),
            "rows": len(examples),
            "options": opts_run,
            "final_loss": final_loss,
            "epoch_losses": losses,
            "steps": steps,
            "seconds": seconds,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        try:
            os.rename(tmp, final)
        except OSError:
            if not _complete(final):  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            import shutil  # here: the checker imports this module, and shutil pulls in bz2 and lzma

            shutil.rmtree(tmp, ignore_errors=True)
    return TrainResult(final, False, seconds, final_loss, steps)


def _complete(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()


def _read_meta(folder: Path) -> dict:
    try:
        return json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _load_base(base_path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        common = dict(local_files_only=True, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(str(base_path), **common)
        model = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32, **common)
    except Exception as exc:
        raise LmlangRuntimeError(f"cannot load base model from {base_path}: {exc}") from exc
    return model, tokenizer


def training_device(device: str):
    """The torch device to train on: "auto" is CUDA when available, else the CPU."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise LmlangRuntimeError(f"unknown device '{device}'", hint="use auto, cpu or cuda") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LmlangRuntimeError(f"device '{device}' requested but CUDA is not available", hint="use cpu or auto")
    return dev


def _wrap(model, opts: dict, base_path: Path):
    import torch
    from peft import get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n}
    missing = [t for t in opts["target_modules"] if t not in names]
    if missing:
        raise LmlangRuntimeError(
            f"target module {missing[0]!r} does not exist in the base model {base_path}",
            hint=did_you_mean(missing[0], sorted(names)),
        )
    torch.manual_seed(opts["seed"])  # LoRA A initialisation
    return get_peft_model(model, peft_config(opts))


def peft_config(opts: dict):
    """The PEFT config of a normalized option set (one per method)."""
    from peft import AdaLoraConfig, IA3Config, LoraConfig

    method = opts.get("method", "lora")
    targets = list(opts["target_modules"])
    if method == "ia3":
        return IA3Config(
            target_modules=targets, feedforward_modules=list(opts["feedforward_modules"]), task_type="CAUSAL_LM"
        )
    if method == "adalora":
        return AdaLoraConfig(
            init_r=opts["init_r"],
            target_r=opts["target_r"],
            total_step=opts["total_step"],
            lora_alpha=opts["alpha"],
            lora_dropout=opts["dropout"],
            target_modules=targets,
            orth_reg_weight=opts["orth_reg_weight"],
            task_type="CAUSAL_LM",
        )
    return LoraConfig(
        r=opts["rank"],
        lora_alpha=opts["alpha"],
        lora_dropout=opts["dropout"],
        target_modules=targets,
        use_dora=method == "dora",
        bias="none",
        task_type="CAUSAL_LM",
    )


def _fit(
    peft_model, tokenizer, examples: list[Example], opts: dict, progress: bool, old=None
) -> tuple[list[float], int]:
    """The training loop. `old` (MUSCLE): per example, the old model's
    log-probabilities at the completion tokens it got right and their mask,
    else None (training_compat.old_predictions); the loss then adds
    flip_weight * KL(old || new) on those tokens."""
    import torch

    from .training_compat import compat_term

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(peft_model.parameters()).device
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts["lr"], weight_decay=0.0)
    generator = torch.Generator().manual_seed(opts["seed"])
    torch.manual_seed(opts["seed"])  # dropout
    batch = opts["batch_size"]
    per_epoch = math.ceil(len(examples) / batch)
    total = per_epoch * opts["epochs"]
    sample = tuple(t.to(device) for t in collate(examples[:batch], pad_id))
    loss_fn = _head_on_labels_only(peft_model, sample) or _full_logits_loss(peft_model)
    # AdaLoRA moves its rank budget after each step, from the gradients (before
    # they are cleared), and its loss keeps P and Q orthogonal (orth_reg_weight):
    # PEFT adds that term only to a loss the model computes from labels, and this
    # loop computes its own loss, so it adds the term itself.
    adalora = opts.get("method") == "adalora"
    allocate = peft_model.base_model.update_and_allocate if adalora else None
    orth_weight = float(opts["orth_reg_weight"]) if adalora else 0.0
    import torch.nn.functional as F

    peft_model.train()
    epoch_losses: list[float] = []
    step = 0
    with _Progress(total, progress, opts.get("method", "lora")) as bar:
        for _epoch in range(opts["epochs"]):
            order = torch.randperm(len(examples), generator=generator).tolist()
            running = 0.0
            for i in range(0, len(order), batch):
                rows = order[i : i + batch]
                ids, mask, labels = (
                    t.to(device, non_blocking=True) for t in collate([examples[j] for j in rows], pad_id)
                )
                logits, targets = loss_fn(ids, mask, labels)
                loss = F.cross_entropy(logits.float(), targets)
                if old is not None:
                    loss = loss + opts["flip_weight"] * compat_term(
                        logits, [old[j] for j in rows], [examples[j] for j in rows]
                    )
                if orth_weight:
                    loss = loss + orth_weight * adalora_orth_penalty(peft_model)
                loss.backward()
                optimizer.step()
                if allocate is not None:
                    # PEFT's step count: the steps done. The last call is step
                    # total_step, where PEFT fixes the budget at target_r (with a
                    # 0-based count that step never comes: the saved ranks stay
                    # above the target).
                    allocate(step + 1)
                optimizer.zero_grad(set_to_none=True)
                step += 1
                value = float(loss.detach())
                running += value
                bar.advance(value)
            epoch_losses.append(running / per_epoch)
    peft_model.eval()
    return epoch_losses, step


def adalora_orth_penalty(peft_model):
    """AdaLoRA's orthogonality regularizer (Zhang et al. 2023, eq. 4), as
    PEFT's AdaLoraModel.forward computes it: the mean over the adapter's P
    (lora_B) and Q (lora_A) matrices of ||Q Q^T - I||_F and ||P^T P - I||_F,
    which keeps the update in SVD form so pruning a singular value (lora_E)
    removes one rank."""
    import torch

    total, count = None, 0
    for name, p in peft_model.named_parameters():
        if not p.requires_grad or not ("lora_A" in name or "lora_B" in name):
            continue
        cov = p @ p.T if "lora_A" in name else p.T @ p
        term = torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype))
        total = term if total is None else total + term
        count += 1
    if total is None:
        raise LmlangRuntimeError("AdaLoRA: the model has no trainable lora_A/lora_B matrices to regularize")
    return total / count


def _full_logits_loss(peft_model):
    """(logits, targets) at the label positions, row by row (as _head_on_labels_only)."""

    def loss_fn(ids, mask, labels):
        logits = peft_model(input_ids=ids, attention_mask=mask).logits
        keep = labels[:, 1:] != -100
        return logits[:, :-1][keep], labels[:, 1:][keep]

    return loss_fn


def _head_on_labels_only(peft_model, sample):
    """A loss that runs the output head only where there is a label (the
    completion): most positions are prompt, and the vocabulary-wide head and its
    backward dominate a small model's step. Used only if, on a sample batch, it
    reproduces the model's own logits (no soft-capping, scaling, ... in between)."""
    import torch

    model = peft_model.get_base_model()
    try:
        decoder, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or head is None or decoder is model:
        return None

    def selected_logits(ids, mask, labels):
        hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != -100
        return head(hidden[:, :-1][keep]), targets[keep]

    ids, mask, labels = sample
    try:
        with torch.no_grad():
            fast, _ = selected_logits(ids, mask, labels)
            full = peft_model(input_ids=ids, attention_mask=mask).logits[:, :-1][labels[:, 1:] != -100]
    except Exception:
        return None
    if fast.shape != full.shape or not torch.allclose(fast, full, rtol=1e-4, atol=1e-4):
        return None

    return selected_logits


_METHOD_NAMES = {"lora": "LoRA", "dora": "DoRA", "ia3": "IA3", "adalora": "AdaLoRA"}  # as the papers write them


class _Progress:
    """A rich bar (steps, loss, ETA) on stderr, or nothing."""

    def __init__(self, total: int, enabled: bool, method: str = "lora"):
        self.total, self.enabled, self.method = total, enabled, method
        self._progress = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn(f"training {_METHOD_NAMES.get(self.method, self.method)}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=Console(file=sys.stderr),
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("train", total=self.total, loss="-")
        return self

    def advance(self, loss: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, loss=f"{loss:.4f}")

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False
