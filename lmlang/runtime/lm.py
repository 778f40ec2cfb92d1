"""The model backend interface the decoding loop talks to.

A backend hands out Batches: rows that decode together over one KV cache.
The loop never calls `generate()`: it feeds prompt chunks, chosen tokens and
fast-forwarded runs itself, so literal text after a hole extends the same
cache. Rows advance by different amounts each step (one sampled token here,
a forced run or the next prompt chunk there): each step's block is padded on
the left, per row, and an attention mask plus explicit position ids keep
every row's view exact. Dropping tokens from one row (text generated past a
`stops before` string) masks them out instead of rewriting the cache.

HFModel is the transformers implementation; a serving engine (vLLM) could
implement the same two classes.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any

import torch

from .prefix import PrefixCache


class Batch(ABC):
    rows: int
    ids: list[list[int]]  # real tokens per row, for traces and tests
    _passes: int  # forward passes run (a subclass that counts otherwise overrides forward_passes)

    @abstractmethod
    def feed(self, blocks: list[list[int]], all_logits: bool = False) -> torch.Tensor:
        """Extend row r by blocks[r] (may be empty) in one forward pass.
        Returns next-token logits [rows, V] (fp32) after each row's last real
        token, or [rows, L, V] for the whole block when all_logits."""

    @abstractmethod
    def drop_last(self, row: int, n: int) -> None:
        """Forget row's last n real tokens (masked out; the next feed re-anchors)."""

    @abstractmethod
    def select(self, indices: list[int]) -> None:
        """Keep (and reorder / duplicate) these rows."""

    @abstractmethod
    def fork(self) -> "Batch":
        """An independent copy."""

    @abstractmethod
    def crop(self, length: int) -> None:
        """Keep the first `length` positions of every row (prefix caching)."""

    @property
    @abstractmethod
    def logits(self) -> torch.Tensor:
        """Latest next-token logits per row [rows, V]."""

    @property
    def forward_passes(self) -> int:
        return self._passes

    def row_copy(self, row: int) -> "Batch | None":
        """A dense one-row copy of `row` (its real tokens only), for the
        prefix cache; None where the backend cannot make one."""
        return None

    def feed_tree(self, nodes: list[tuple[int, list[int]]], leaves: list[int]) -> "Batch | None":
        """A new batch, one row per leaf, holding this one-row batch's
        tokens + the tokens on the leaf's path through `nodes` ((parent
        index or -1, tokens), parents first), logits ready, the whole tree
        fed in one forward pass (prefix.py's radix prefill); None where the
        backend cannot (the caller feeds the tree level by level)."""
        return None


class LM(ABC):
    tokenizer: Any
    tok_info: Any  # constraints.TokenizerInfo
    device: str
    name: str
    vocab_size: int
    prefix_cache: PrefixCache  # prefixes this model computed, for the next prefill (prefix.py)
    prefix_reuse: bool  # False: every prefill starts from scratch (bench/prefix.py)
    _eos_ids: set[int]

    def __init__(self) -> None:
        self.prefix_cache = PrefixCache()
        self.prefix_reuse = True

    @property
    def eos_ids(self) -> set[int]:
        return self._eos_ids

    @abstractmethod
    def new_batch(self, rows: int) -> Batch: ...

    def encode(self, text: str, first: bool = False) -> list[int]:
        return self.tokenizer(text, add_special_tokens=first).input_ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


def _cache_kwarg(model) -> str:
    """transformers 5.x renamed past_key_values to cache; accept both."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class HFModel(LM):
    def __init__(self, loaded, name: str = "", forward_hook=None):
        super().__init__()
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device = str(loaded.device)
        self.name = name or loaded.name
        self.tok_info = loaded.tok_info  # one per loaded model, shared by its HFModels
        self.cache_kw = _cache_kwarg(self.model)
        self.forward_hook = forward_hook  # context manager factory (adapters)
        eos = {self.tokenizer.eos_token_id}
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(gen_eos, int):
            eos.add(gen_eos)
        elif isinstance(gen_eos, (list, tuple)):
            eos.update(gen_eos)
        self._eos_ids = {e for e in eos if e is not None}
        head = self.model.get_output_embeddings().weight
        self.vocab_size = (head() if callable(head) else head).shape[0]  # int8 Linear: weight() unpacks
        self.pad_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else next(iter(self._eos_ids))
        )

    def new_batch(self, rows: int) -> "HFBatch":
        return HFBatch(self, rows)

    def with_hook(self, name: str, hook) -> "HFModel":
        """The same weights, forward passes wrapped in `hook()` (adapter stacks)."""
        clone = object.__new__(HFModel)
        clone.__dict__.update(self.__dict__)
        clone.name, clone.forward_hook = name, hook
        clone.prefix_cache = PrefixCache()  # other weights in effect: the base's cached prefixes do not apply
        return clone


class HFBatch(Batch):
    def __init__(self, lm: HFModel, rows: int):
        from transformers import DynamicCache

        self.lm = lm
        self.rows = rows
        self.cache = DynamicCache(config=lm.model.config)
        self.mask = torch.zeros((rows, 0), dtype=torch.long, device=lm.device)
        self.next_pos = [0] * rows
        self.ids: list[list[int]] = [[] for _ in range(rows)]  # real tokens per row, for traces and tests
        self.dense = True  # no pad or dropped position anywhere: plain causal attention applies
        self._logits: torch.Tensor | None = None
        self._passes = 0

    @property
    def logits(self) -> torch.Tensor:
        assert self._logits is not None, "logits read before the batch was fed"
        return self._logits

    @torch.no_grad()  # not inference_mode: masks and caches are edited in place later
    def feed(self, blocks: list[list[int]], all_logits: bool = False) -> torch.Tensor:
        lm = self.lm
        width = max((len(b) for b in blocks), default=0)
        if width == 0:
            return self.logits
        feeding = [r for r, b in enumerate(blocks) if b]
        if not all_logits and len(feeding) * SIT_OUT <= self.rows and self._sits_out():
            return self._feed_rows(feeding, blocks)
        ids = torch.full((self.rows, width), lm.pad_id, dtype=torch.long)
        block_mask = torch.zeros((self.rows, width), dtype=torch.long)
        pos = torch.zeros((self.rows, width), dtype=torch.long)
        for r, b in enumerate(blocks):
            n = len(b)
            if n:
                ids[r, width - n :] = torch.tensor(b, dtype=torch.long)
                block_mask[r, width - n :] = 1
                pos[r, width - n :] = torch.arange(self.next_pos[r], self.next_pos[r] + n)
                self.next_pos[r] += n
                self.ids[r].extend(b)
            else:
                # A row with nothing to feed keeps a pad; give it a harmless position.
                pos[r, :] = max(self.next_pos[r] - 1, 0)
        dev = lm.device
        self.mask = torch.cat([self.mask, block_mask.to(dev)], dim=1)
        self.dense = self.dense and bool(block_mask.all())
        kwargs: dict[str, Any] = {lm.cache_kw: self.cache}
        if not self.dense:
            attention = self.mask.clone()
            # A fully padded row (nothing fed yet) would attend to nothing; let
            # it see its own pad so softmax stays finite. Those keys stay
            # masked for every real query.
            empty = attention.sum(dim=1) == 0
            if empty.any():
                attention[empty, -1] = 1
            kwargs.update(attention_mask=attention, position_ids=pos.to(dev))
        # Dense batches (one row, or rows in lockstep) take the plain causal
        # path: no mask tensor, the fast attention kernel.
        hook = lm.forward_hook() if lm.forward_hook else _null()
        with hook:
            out = lm.model(input_ids=ids.to(dev), use_cache=True, logits_to_keep=0 if all_logits else 1, **kwargs)
        self._passes += 1
        last = out.logits[:, -1].float()
        if self._logits is not None and not all(blocks):  # a row fed nothing keeps its logits
            fed = torch.tensor([len(b) > 0 for b in blocks], device=last.device)
            last = torch.where(fed[:, None], last, self._logits)
        self._logits = last
        return out.logits.float() if all_logits else last

    def _sits_out(self) -> bool:
        """Whether rows with nothing to feed may sit a forward out: the
        batch has logits already, plain key/value layers, and no forward
        hook (a hook may index its adapter deltas by batch row)."""
        return (
            self._logits is not None
            and self.lm.forward_hook is None
            and all(_plain_layer(layer) for layer in self.cache.layers)
        )

    def _feed_rows(self, fed: list[int], blocks: list[list[int]]) -> torch.Tensor:
        """One forward over the rows in `fed` only (most rows have nothing
        to feed this step: finished calls, calls waiting in a parallel
        batch); the others get masked pad positions, as a full forward
        would give them, without computing them. On a CPU the time follows
        the token slots fed, so this saves (rows - fed) slots per step."""
        idx = torch.tensor(fed, dtype=torch.long, device=self.lm.device)
        sub = HFBatch(self.lm, len(fed))
        mask = self.mask.index_select(0, idx)
        real = mask.sum(dim=1)
        # Rows with as many real positions (one row, say) leave their pads
        # behind: the sub-batch is dense and takes the plain causal path.
        same = bool((real == real[0]).all()) and int(real[0]) > 0
        keep = mask.nonzero()[:, 1].view(len(fed), -1) if same else None
        for mine, theirs in zip(_layers(self), _layers(sub)):
            k, v = mine.keys.index_select(0, idx), mine.values.index_select(0, idx)
            if keep is not None:
                at = keep[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[-1])
                k, v = k.gather(2, at), v.gather(2, at)
            _set_kv(theirs, k, v)
        sub.mask = mask if keep is None else torch.ones_like(keep)
        sub.next_pos = [self.next_pos[r] for r in fed]
        sub.ids = [self.ids[r] for r in fed]  # the same lists: the sub-batch extends them
        sub.dense = bool(sub.mask.all())
        sub._logits = self.logits.index_select(0, idx)
        before = sub.mask.shape[1]
        last = sub.feed([blocks[r] for r in fed])
        width = sub.mask.shape[1] - before  # the positions this forward added
        for mine, theirs in zip(_layers(self), _layers(sub)):
            k, v = mine.keys, mine.values
            k = torch.cat([k, k.new_zeros(*k.shape[:-2], width, k.shape[-1])], dim=-2)
            v = torch.cat([v, v.new_zeros(*v.shape[:-2], width, v.shape[-1])], dim=-2)
            k[idx, :, -width:] = theirs.keys[:, :, -width:]
            v[idx, :, -width:] = theirs.values[:, :, -width:]
            mine.keys, mine.values = k, v
        mask = torch.nn.functional.pad(self.mask, (0, width))
        mask[idx, -width:] = sub.mask[:, -width:]
        self.mask = mask
        for j, r in enumerate(fed):
            self.next_pos[r] = sub.next_pos[j]
        self.dense = False
        logits = self.logits.clone()
        logits[idx] = last
        self._logits = logits
        self._passes += 1
        return logits

    def feed_tree(self, nodes: list[tuple[int, list[int]]], leaves: list[int]) -> "HFBatch | None":
        from .tree_feed import feed_tree

        return feed_tree(self, nodes, leaves)

    def row_copy(self, row: int) -> "HFBatch | None":
        """Row `row` alone, its pad and dropped positions removed (the keys
        keep the positions they were computed at, which are the row's token
        indices): a dense batch the prefix cache can crop by tokens."""
        if not all(_plain_layer(layer) for layer in self.cache.layers):
            return None
        real = (self.mask[row] == 1).nonzero().flatten()
        out = HFBatch(self.lm, 1)
        for mine, theirs in zip(_layers(self), _layers(out)):
            _set_kv(theirs, mine.keys[row : row + 1, :, real].clone(), mine.values[row : row + 1, :, real].clone())
        out.mask = torch.ones((1, len(real)), dtype=torch.long, device=self.lm.device)
        out.next_pos = [len(real)]
        out.ids = [list(self.ids[row])]
        out._logits = None if self._logits is None else self._logits[row : row + 1].clone()
        return out

    def drop_last(self, row: int, n: int) -> None:
        if n <= 0:
            return
        real = (self.mask[row] == 1).nonzero().flatten()
        self.mask[row, real[-n:]] = 0
        self.dense = False
        self.next_pos[row] -= n
        del self.ids[row][-n:]

    def select(self, indices: list[int]) -> None:
        idx = torch.tensor(indices, dtype=torch.long, device=self.lm.device)
        self.cache.batch_select_indices(idx)
        self.mask = self.mask[idx]
        self.next_pos = [self.next_pos[i] for i in indices]
        self.ids = [list(self.ids[i]) for i in indices]
        if self._logits is not None:
            self._logits = self._logits[idx]
        self.rows = len(indices)

    def fork(self) -> "HFBatch":
        import copy

        other = object.__new__(HFBatch)
        other.lm, other.rows = self.lm, self.rows
        other.cache = copy.deepcopy(self.cache)
        other.mask = self.mask.clone()
        other.next_pos = list(self.next_pos)
        other.ids = [list(x) for x in self.ids]
        other.dense = self.dense
        other._logits = None if self._logits is None else self._logits.clone()
        other._passes = 0
        return other

    @classmethod
    def merged(cls, lm: HFModel, parts: list[Batch]) -> "HFBatch":
        """One batch of `lm` holding the rows of every part in order (parts
        prefilled by other HFModels over the same weights, each with its
        own adapter stack and prefix cache: a mixed-adapter batch). Shorter
        parts are padded on the left with masked positions. Plain key/value
        caches only (a layer of another kind raises TypeError). A part
        without logits yet (a cropped prefix-cache entry, prefix.py) gets
        zeros: its caller feeds it before anything reads them."""
        hf = [p for p in parts if isinstance(p, HFBatch)]
        if len(hf) != len(parts):
            raise TypeError("only HFBatches merge")
        width = max(p.mask.shape[1] for p in hf)
        out = cls(lm, sum(p.rows for p in hf))
        for i, layer in enumerate(out.cache.layers):
            kvs = [_left_padded(p.cache.layers[i], width) for p in hf]
            _set_kv(layer, torch.cat([k for k, _ in kvs]), torch.cat([v for _, v in kvs]))
        out.mask = torch.cat([torch.nn.functional.pad(p.mask, (width - p.mask.shape[1], 0)) for p in hf])
        out.next_pos = [n for p in hf for n in p.next_pos]
        out.ids = [list(x) for p in hf for x in p.ids]
        out.dense = all(p.dense for p in hf) and bool(out.mask.all())
        like = next((p._logits for p in hf if p._logits is not None), None)
        blank = {"device": lm.device} if like is None else {"device": like.device, "dtype": like.dtype}
        out._logits = torch.cat(
            [p._logits if p._logits is not None else torch.zeros(p.rows, lm.vocab_size, **blank) for p in hf]
        )
        out._passes = sum(p._passes for p in hf)
        return out

    def crop(self, length: int) -> None:
        """Keep the first `length` positions of every row (prefix caching)."""
        cur = self.mask.shape[1]
        if length >= cur:
            return
        self.cache.crop(length - cur)  # negative: tokens to remove (all transformers 5.x)
        self.mask = self.mask[:, :length]
        self.next_pos = [int(m.sum()) for m in self.mask]
        self.ids = [x[:n] for x, n in zip(self.ids, self.next_pos)]
        self.dense = bool(self.mask.all())
        self._logits = None


SIT_OUT = 2  # rows sit a forward out when at most 1 / SIT_OUT of them have tokens to feed


def _layers(batch: "HFBatch") -> list[Any]:
    """The cache's layers (plain key/value ones where _plain_layer says so)."""
    return list(batch.cache.layers)


def _plain_layer(layer: Any) -> bool:
    """A cache layer holding plain [rows, heads, positions, dim] keys and values."""
    k, v = getattr(layer, "keys", None), getattr(layer, "values", None)
    return (
        isinstance(k, torch.Tensor)
        and isinstance(v, torch.Tensor)
        and k.dim() == 4
        and not getattr(layer, "is_sliding", False)
    )


def _set_kv(layer: Any, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Give a (possibly fresh) plain cache layer these keys and values."""
    if not getattr(layer, "is_initialized", False):
        layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values


def _left_padded(layer: Any, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's keys and values, zero-padded on the left to `width` positions."""
    k, v = getattr(layer, "keys", None), getattr(layer, "values", None)
    if not isinstance(k, torch.Tensor) or not isinstance(v, torch.Tensor) or k.dim() != 4:
        raise TypeError(f"cannot merge a {type(layer).__name__} cache layer")
    pad = width - k.shape[-2]
    if pad:
        k = torch.cat([k.new_zeros(*k.shape[:-2], pad, k.shape[-1]), k], dim=-2)
        v = torch.cat([v.new_zeros(*v.shape[:-2], pad, v.shape[-1]), v], dim=-2)
    return k, v


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
