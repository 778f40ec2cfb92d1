"""Adapter pools: route each row among any number of PEFT LoRA folders, and
decode rows with different adapter mixtures in one batch.

`route pool "adapters/*" { base: base, top_k: 2, by: embedding }` names a
glob of adapter folders over one base. Each row gets a score per adapter;
the top_k adapters are mixed for that row with weights softmax(score /
temperature) over the chosen ones (top_k = 1: the best adapter at weight 1).

**by: embedding** (LoraRetriever / Tryage style): an adapter is represented
by a few of its own training prompts (read through the `data` path its
lmlang_adapter.json records), or by examples the caller gives, or, failing
both, by its README model card's description. Its score for a row is the
cosine of the row's text to the best-matching example, with the MiniLM
sentence encoder or the base's mean hidden state (runtime/routing.py's
encoders). Embeddings are computed once per (encoder, texts) and cached on
disk by content as safetensors under LMLANG_HOME/pool.

**by: gate** (PHATGOOSE, Muqeeth et al. 2024, at sequence level): after an
adapter is trained, a gate vector g_m per adapted module m is trained on the
adapter's own training data with everything else frozen: the module's LoRA
output is multiplied by sigmoid(g_m . x) (g starts at 0, i.e. half
strength), and only the gates get gradients from the usual completion
loss. The gates are cached by content (adapter, data, base, options). To
route a row, the base runs once over its text with hooks that collect each
module's inputs; with x_hat the inputs standardized over the hidden
dimension and g_hat = g / |g|, an adapter's score is the mean over its
modules and the row's tokens of x_hat . g_hat / sqrt(d). PHATGOOSE routes
every token at every module; lmlang routes the row once (one mixture per
row, all modules), so that rows decode in one batch with the adapter host's
row-indexed deltas: what is feasible without a per-module, per-token
routing kernel.

**Mixing** (`RowMixedLM`): the routed rows decode as ONE batch over the
base: row i's forward adds sum_j w_ij * delta_j through
`AdapterHost.activate_rows` (row-indexed scales; models/adapters.py). The
same LM serves Twin-Merging (merge/twin.py), whose exclusive parts are
adapters on the merged core.

Proposed wiring: grammar `router NAME = route pool STRING { base: MODEL,
top_k: INT, by: embedding|gate, encoder: minilm|base, temperature: NUMBER,
examples: { "folder name": [STRING, ...] } }`; checker: the glob is
resolved at run time (a check-time warning if it matches nothing in the
script's folder); graph: a RouterSpec with mode "pool" and options
(pattern, top_k, by, ...); runtime: Executor._route asks
`AdapterPool.route(texts)` for weights, and `_decode_group` decodes each
batch of rows with `pool.lm_for_rows(base_lm, host, weights)` (the chosen
adapters per row go into the trace as "expert").
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..errors import LmlangRuntimeError
from .lm import LM, Batch

BY = ("embedding", "gate")
ENCODERS = ("minilm", "base")
GATE_FORMAT = 1


# ---------------------------------------------------------------- mixing rows


class RowMixedLM(LM):
    """A base model whose row i runs with adapter stack stacks[i] (one batch).

    Prefix reuse is off: a prefix computed under one row's adapters is not
    the prefix of another row's (its keys and values differ)."""

    def __init__(self, base, host, stacks: Sequence[Sequence[tuple[str, float]]], name: str = "pool"):
        super().__init__()
        self.base, self.host = base, host
        self.stacks = [tuple(s) for s in stacks]
        self.tokenizer, self.tok_info, self.device = base.tokenizer, base.tok_info, base.device
        self.name = name
        self._eos_ids = base.eos_ids
        self.vocab_size = base.vocab_size
        self.prefix_reuse = False

    def new_batch(self, rows: int) -> "RowMixedBatch":
        stacks = self.stacks
        if rows != len(stacks):
            if len(set(stacks)) != 1:
                raise LmlangRuntimeError(
                    f"{self.name}: adapters were chosen for {len(stacks)} rows, "
                    f"but a batch of {rows} rows was asked for"
                )
            stacks = [stacks[0]] * rows
        return RowMixedBatch(self, self.base.new_batch(rows), list(stacks))


class RowMixedBatch(Batch):
    def __init__(self, lm: RowMixedLM, inner: Batch, stacks: list):
        self.lm, self.inner, self.stacks = lm, inner, stacks

    @property
    def rows(self) -> int:  # type: ignore[override]  # a read-only view of inner.rows; only a batch sets its own rows
        return self.inner.rows

    def feed(self, blocks, all_logits: bool = False):
        with self.lm.host.activate_rows(self.stacks):
            return self.inner.feed(blocks, all_logits=all_logits)

    @property
    def logits(self):
        return self.inner.logits

    @property
    def ids(self):
        return self.inner.ids

    @property
    def forward_passes(self) -> int:
        return self.inner.forward_passes

    def drop_last(self, row: int, n: int) -> None:
        self.inner.drop_last(row, n)

    def select(self, indices: list[int]) -> None:
        self.inner.select(indices)
        self.stacks = [self.stacks[i] for i in indices]

    def fork(self) -> "RowMixedBatch":
        return RowMixedBatch(self.lm, self.inner.fork(), list(self.stacks))

    def crop(self, length: int) -> None:
        self.inner.crop(length)


def weights_from_scores(scores: torch.Tensor, top_k: int = 1, temperature: float = 0.05) -> torch.Tensor:
    """[rows, experts] mixing weights: per row, softmax(score / temperature)
    over its top_k scores (ties: the lower index), 0 elsewhere."""
    if top_k < 1:
        raise LmlangRuntimeError(f"top_k must be at least 1, got {top_k}")
    if not temperature > 0:
        raise LmlangRuntimeError(f"temperature must be positive, got {temperature}")
    k = min(top_k, scores.shape[1])
    # A stable descending sort keeps the lower index first among equal scores.
    order = torch.sort(scores.double(), dim=1, descending=True, stable=True).indices[:, :k]
    chosen = scores.double().gather(1, order)
    w = torch.softmax(chosen / temperature, dim=1)
    out = torch.zeros(scores.shape, dtype=torch.float64)
    out.scatter_(1, order, w)
    return out


def stacks_for(
    weights: torch.Tensor, names: Sequence[str], min_weight: float = 1e-4
) -> list[tuple[tuple[str, float], ...]]:
    """Adapter stacks ((name, weight), ...) per row; weights under min_weight are dropped."""
    out = []
    for row in weights.tolist():
        out.append(tuple((names[j], float(w)) for j, w in enumerate(row) if w >= min_weight))
    return out


# ---------------------------------------------------------------- embeddings


def _cache_file(kind: str, key: str) -> Path:
    from ..home import cache_dir

    return cache_dir("pool") / f"{kind}-{key[:40]}.safetensors"


def cached_embeddings(
    encoder_key: str, texts: Sequence[str], embed: Callable[[list[str]], torch.Tensor]
) -> torch.Tensor:
    """embed(texts), cached on disk by (encoder, texts): safetensors, no pickle."""
    from safetensors.torch import load_file, save_file

    key = hashlib.sha256(json.dumps([encoder_key, list(texts)], ensure_ascii=False).encode()).hexdigest()
    path = _cache_file("emb", key)
    if path.is_file():
        try:
            return load_file(str(path))["embeddings"]
        except Exception:  # a torn or foreign file: recompute
            pass
    vecs = embed(list(texts)).float().contiguous()
    tmp = path.with_name(f".{path.name}.{hashlib.sha1(str(id(vecs)).encode()).hexdigest()[:8]}")
    save_file({"embeddings": vecs}, str(tmp))
    tmp.replace(path)
    return vecs


class EmbeddingIndex:
    """Per-expert example embeddings; a row's score for an expert is the cosine
    to that expert's best-matching example (as runtime/routing.py does)."""

    def __init__(self, examples: Sequence[Sequence[str]], encoder: str = "minilm", base_lm=None, encoder_key: str = ""):
        if encoder not in ENCODERS:
            raise LmlangRuntimeError(f"unknown encoder '{encoder}'; use minilm or base")
        if encoder == "base" and base_lm is None:
            raise LmlangRuntimeError("encoder: base needs the base model")
        self.encoder, self.base_lm = encoder, base_lm
        self.encoder_key = encoder_key or (encoder if encoder == "minilm" else f"base:{getattr(base_lm, 'name', '')}")
        self.vectors = [cached_embeddings(self.encoder_key, list(ex), self._embed) for ex in examples]

    def _embed(self, texts: list[str]) -> torch.Tensor:
        from .routing import embed_hidden, embed_minilm

        return embed_hidden(self.base_lm, texts) if self.encoder == "base" else embed_minilm(texts)

    def scores(self, texts: Sequence[str]) -> torch.Tensor:
        q = self._embed(list(texts)).float()
        return torch.stack([(q @ v.T).max(dim=1).values for v in self.vectors], dim=1)


# ---------------------------------------------------------------- the pool


@dataclass(frozen=True)
class PoolMember:
    name: str  # the folder's name; unique in a pool
    path: Path


def discover(pattern: str, base_dir: Path | None = None) -> list[PoolMember]:
    """PEFT folders matched by a glob (relative to base_dir), sorted by name."""
    pat = pattern if Path(pattern).is_absolute() or base_dir is None else str(Path(base_dir) / pattern)
    found = sorted(Path(p) for p in globlib.glob(pat) if (Path(p) / "adapter_config.json").is_file())
    if not found:
        raise LmlangRuntimeError(
            f"route pool: no adapter folder matches {pattern!r}",
            hint="each match must be a PEFT folder with adapter_config.json",
        )
    names = [p.name for p in found]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LmlangRuntimeError(f"route pool: two matched folders are both named {dup[0]!r}")
    return [PoolMember(p.name, p.resolve()) for p in found]


def training_prompts(folder: Path, n: int) -> list[str]:
    """The first n prompts of the data an lmlang-trained adapter was trained on
    (lmlang_adapter.json records its path), or [] when unknown or gone."""
    from ..models.training import read_rows

    try:
        meta = json.loads((folder / "lmlang_adapter.json").read_text(encoding="utf-8"))
        rows = read_rows(Path(meta["data"]))
    except Exception:
        return []
    out = []
    for _, row in rows[:n]:
        if "prompt" in row:
            out.append(row["prompt"])
        else:
            users = [m["content"] for m in row["messages"] if m["role"] == "user"]
            if users:
                out.append(users[-1])
    return out


def card_description(folder: Path) -> str:
    """The first paragraph of an adapter's README.md that is not a heading,
    front matter or a template placeholder ("[More Information Needed]")."""
    try:
        text = (folder / "README.md").read_text(encoding="utf-8")
    except OSError:
        return ""
    if text.startswith("---"):
        end = text.find("\n---", 3)
        text = text[end + 4 :] if end >= 0 else ""
    for para in text.split("\n\n"):
        para = para.strip()
        # PEFT's save_pretrained writes a template card: its placeholders describe nothing.
        if para and not para.startswith(("#", "<!--", "```", "|")) and "More Information Needed" not in para:
            return " ".join(para.split())[:500]
    return ""


class AdapterPool:
    """Members of a pool, their routing evidence, and per-row weights.

    examples: {folder name: [texts]} overrides what a member's own data or
    card says. by: "embedding" (encoder "minilm" or "base") or "gate"
    (needs `base_path`; gates are trained on first use and cached)."""

    def __init__(
        self,
        pattern: str,
        *,
        base_dir: Path | None = None,
        examples: dict | None = None,
        n_examples: int = 8,
        by: str = "embedding",
        encoder: str = "minilm",
        top_k: int = 1,
        temperature: float = 0.05,
        base_lm=None,
        base_path: Path | None = None,
        gate_options: dict | None = None,
    ):
        if by not in BY:
            raise LmlangRuntimeError(f"unknown pool routing '{by}'; use embedding or gate")
        self.members = discover(pattern, base_dir)
        self.names = [m.name for m in self.members]
        self.by, self.top_k, self.temperature = by, int(top_k), float(temperature)
        self.base_lm = base_lm
        given = dict(examples or {})
        unknown = sorted(set(given) - set(self.names))
        if unknown:
            raise LmlangRuntimeError(
                f"route pool: examples for {unknown[0]!r}, which the pool does not hold",
                hint="pool members: " + ", ".join(self.names),
            )
        if by == "embedding":
            self.examples = [list(given.get(m.name) or self._evidence(m, n_examples)) for m in self.members]
            self.index = EmbeddingIndex(self.examples, encoder, base_lm)
        else:
            if base_lm is None or base_path is None:
                raise LmlangRuntimeError("route pool by: gate needs the base model (base: MODEL)")
            self.gates = GateRouter(self.members, base_lm, Path(base_path), gate_options or {})

    def _evidence(self, member: PoolMember, n: int) -> list[str]:
        texts = training_prompts(member.path, n)
        if texts:
            return texts
        card = card_description(member.path)
        if card:
            return [card]
        raise LmlangRuntimeError(
            f"route pool: nothing to route to adapter {member.name!r} by",
            hint="its training data is unknown and it has no README description; "
            "give examples for it in the pool's block",
        )

    def scores(self, texts: Sequence[str]) -> torch.Tensor:
        """[rows, members] routing scores."""
        if self.by == "embedding":
            return self.index.scores(texts)
        return self.gates.scores(texts)

    def route(self, texts: Sequence[str]) -> torch.Tensor:
        """[rows, members] mixing weights (top_k per row, softmax over them)."""
        return weights_from_scores(self.scores(texts), self.top_k, self.temperature)

    def top(self, weights: torch.Tensor) -> list[str]:
        """The highest-weighted member per row (what a trace records as the expert)."""
        return [self.names[int(i)] for i in weights.argmax(dim=1)]

    def attach(self, host) -> None:
        """Load every member into the base's adapter host (once; checked there)."""
        for m in self.members:
            if m.name not in host.names:
                host.add(m.name, m.path)

    def lm_for_rows(self, base_lm, host, weights: torch.Tensor, name: str = "pool") -> RowMixedLM:
        self.attach(host)
        return RowMixedLM(base_lm, host, stacks_for(weights, self.names), name=name)


# ---------------------------------------------------------------- gates (PHATGOOSE)


class _GateHooks:
    """Forward hooks that add sigmoid(x . g_m) * scale * B(A(x)) per module."""

    def __init__(self, model, loras: dict, gates: dict):
        modules = dict(model.named_modules())
        self.handles = [modules[m].register_forward_hook(self._hook(a, b, gates[m])) for m, (a, b) in loras.items()]

    @staticmethod
    def _hook(a, b, g):
        def hook(module, args, out):
            x = args[0]
            gate = torch.sigmoid(x @ g).unsqueeze(-1)
            return out + gate * torch.nn.functional.linear(torch.nn.functional.linear(x, a), b)

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _lora_factors(folder: Path) -> dict:
    """module -> (A, B * scale), linear LoRA modules only (gates need x . g)."""
    from ..merge.lora import load_lora

    out = {}
    for name, mod in load_lora(folder).modules.items():
        if mod.embedding or mod.fan_in_fan_out:
            continue
        out[name[: -len(".weight")]] = (mod.a, mod.b * mod.scale)
    return out


def train_gates(
    folder: Path,
    base_path: Path,
    rows_path: Path | None = None,
    steps: int | None = None,
    lr: float = 0.01,
    batch_size: int = 8,
    seed: int = 0,
    max_length: int = 512,
) -> dict[str, torch.Tensor]:
    """PHATGOOSE gates of one adapter: {module: g}, trained on the adapter's own
    training data (or rows_path) with the base and the adapter frozen. Cached."""
    from safetensors.torch import load_file, save_file

    from ..models.training import _load_base, base_content_key, collate, encode_rows, read_rows

    folder, base_path = Path(folder), Path(base_path)
    if rows_path is None:
        try:
            rows_path = Path(json.loads((folder / "lmlang_adapter.json").read_text())["data"])
        except (OSError, ValueError, KeyError):
            raise LmlangRuntimeError(
                f"adapter {folder.name}: its training data is unknown, so its gate cannot be trained",
                hint="route it by: embedding with examples instead",
            ) from None
    data = Path(rows_path).read_bytes()
    from ..merge.compress import content_key

    opts = {"steps": steps, "lr": lr, "batch_size": batch_size, "seed": seed, "max_length": max_length}
    key = hashlib.sha256(
        json.dumps(
            {
                "v": GATE_FORMAT,
                "adapter": content_key(folder),
                "base": base_content_key(base_path),
                "data": hashlib.sha256(data).hexdigest(),
                "options": opts,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    path = _cache_file("gate", key)
    if path.is_file():
        return load_file(str(path))
    model, tokenizer = _load_base(base_path)
    for p in model.parameters():
        p.requires_grad_(False)
    loras = _lora_factors(folder)
    if not loras:
        raise LmlangRuntimeError(f"adapter {folder.name}: no linear LoRA modules to gate")
    gates = {m: torch.zeros(a.shape[1], requires_grad=True) for m, (a, _) in loras.items()}
    examples = encode_rows(tokenizer, read_rows(Path(rows_path), data), max_length, Path(rows_path))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    optimizer = torch.optim.Adam(list(gates.values()), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    total = steps if steps is not None else math.ceil(len(examples) / batch_size)
    hooks = _GateHooks(model, loras, gates)
    try:
        model.eval()
        order: list[int] = []
        for _ in range(total):
            if len(order) < batch_size:
                order += torch.randperm(len(examples), generator=gen).tolist()
            batch, order = order[:batch_size], order[batch_size:]
            ids, mask, labels = collate([examples[j] for j in batch], pad)
            logits = model(input_ids=ids, attention_mask=mask).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
            )
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    finally:
        hooks.close()
    out = {m: g.detach().clone().contiguous() for m, g in gates.items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(out, str(tmp))
    tmp.replace(path)
    return out


def standardize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Zero mean, unit variance over the last dimension."""
    x = x.float()
    return (x - x.mean(-1, keepdim=True)) / (x.std(-1, unbiased=False, keepdim=True) + eps)


def gate_scores(inputs: dict[str, torch.Tensor], gates: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """[members] scores of one row: inputs {module: [tokens, d]}; member j's
    score is the mean over its gated modules of mean_t x_hat_t . g_hat / sqrt(d)."""
    out = []
    for g in gates:
        per = []
        for m, vec in g.items():
            x = inputs.get(m)
            if x is None:
                continue
            norm = float(vec.norm())
            if norm == 0:
                per.append(0.0)
                continue
            per.append(float((standardize(x) @ (vec / norm)).mean()) / math.sqrt(vec.numel()))
        out.append(sum(per) / len(per) if per else float("-inf"))
    return torch.tensor(out, dtype=torch.float64)


class GateRouter:
    """Scores rows against every member's trained gates (see the module docstring)."""

    def __init__(self, members: Sequence[PoolMember], base_lm, base_path: Path, options: dict):
        self.base_lm = base_lm
        self.gates = [train_gates(m.path, base_path, **options) for m in members]
        self.modules = sorted({m for g in self.gates for m in g})

    @torch.no_grad()
    def module_inputs(self, text: str) -> dict[str, torch.Tensor]:
        lm = self.base_lm
        modules = dict(lm.model.named_modules())
        seen: dict[str, torch.Tensor] = {}
        handles = [
            modules[m].register_forward_hook(lambda mod, args, out, m=m: seen.__setitem__(m, args[0][0].detach()))
            for m in self.modules
        ]
        try:
            ids = torch.tensor([lm.encode(text) or [next(iter(lm.eos_ids))]], device=lm.device)
            lm.model(input_ids=ids)
        finally:
            for h in handles:
                h.remove()
        return {m: x.cpu() for m, x in seen.items()}

    def scores(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.stack([gate_scores(self.module_inputs(t), self.gates) for t in texts]).float()
