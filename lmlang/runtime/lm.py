"""The model backend interface the decoding loop talks to.

A backend owns a tokenizer and a forward pass over a growing KV cache. The
loop never calls `generate()`: it feeds prompt chunks and chosen tokens
itself, so literal text after a hole extends the same cache and fast-forwarded
tokens go through in one forward pass. A serving engine (vLLM) could sit
behind this interface; HFModel is the transformers implementation.
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class State:
    """One sequence's decoding state: token ids fed so far and the KV cache."""
    ids: list[int] = field(default_factory=list)
    cache: Any = None
    last_logits: torch.Tensor | None = None   # next-token logits after `ids`
    forward_passes: int = 0


class LM(ABC):
    tokenizer: Any
    tok_info: Any          # constraints.TokenizerInfo
    device: str
    name: str

    @property
    def eos_ids(self) -> set[int]:
        return self._eos_ids

    @abstractmethod
    def new_state(self) -> State: ...

    @abstractmethod
    def feed(self, state: State, ids: list[int]) -> torch.Tensor:
        """Extend the state by `ids` in one forward pass; return next-token logits (fp32, 1-D)."""

    @abstractmethod
    def crop(self, state: State, length: int) -> None:
        """Forget everything after the first `length` tokens."""

    @abstractmethod
    def fork(self, state: State) -> State:
        """An independent copy (beams, samples sharing a prefix)."""

    def encode(self, text: str, first: bool = False) -> list[int]:
        return self.tokenizer(text, add_special_tokens=first).input_ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


def _cache_kwarg(model) -> str:
    """transformers 5.x renamed past_key_values to cache; accept both."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class HFModel(LM):
    def __init__(self, loaded, name: str = ""):
        from ..constraints.vocab import TokenizerInfo

        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device = str(loaded.device)
        self.name = name or loaded.name
        self.tok_info = TokenizerInfo.from_hf(self.tokenizer)
        self._kw = _cache_kwarg(self.model)
        eos = {self.tokenizer.eos_token_id}
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(gen_eos, int):
            eos.add(gen_eos)
        elif isinstance(gen_eos, (list, tuple)):
            eos.update(gen_eos)
        self._eos_ids = {e for e in eos if e is not None}
        self.vocab_size = self.model.get_output_embeddings().weight.shape[0]

    def new_state(self) -> State:
        from transformers import DynamicCache

        return State(cache=DynamicCache(config=self.model.config))

    @torch.inference_mode()
    def feed(self, state: State, ids: list[int]) -> torch.Tensor:
        if not ids:
            if state.last_logits is None:
                raise ValueError("nothing fed yet")
            return state.last_logits
        x = torch.tensor([ids], device=self.device)
        out = self.model(input_ids=x, use_cache=True, logits_to_keep=1, **{self._kw: state.cache})
        state.ids.extend(ids)
        state.forward_passes += 1
        state.last_logits = out.logits[0, -1].float()
        return state.last_logits

    def crop(self, state: State, length: int) -> None:
        if length >= len(state.ids):
            return
        if length <= 0:
            fresh = self.new_state()
            state.ids, state.cache, state.last_logits = [], fresh.cache, None
            return
        state.cache.crop(length - 1)
        tail = state.ids[length - 1]
        state.ids = state.ids[:length - 1]
        self.feed(state, [tail])     # recompute logits at the new end

    def fork(self, state: State) -> State:
        import copy

        return State(list(state.ids), copy.deepcopy(state.cache),
                     state.last_logits.clone() if state.last_logits is not None else None, 0)
