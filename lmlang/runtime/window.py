"""A model's context window, and refusing a prompt that cannot fit it.

A data row can hold a 10 MB string. Fed to the model as is, its prefill asks
for an attention matrix quadratic in its length (6.4 GB for a 40k-token row,
1.7 TB for 10 MB), so the prompt is measured first and a row that does not
fit is that row's error, before anything is allocated:

1. Before tokenizing: no token covers more characters than the longest entry
   in the vocabulary, so a prompt longer than `window * longest` characters
   has more tokens than the window holds; refused without tokenizing 10 MB.
2. After tokenizing (QueryRun does it anyway): the exact count.

The window is the model config's trained length (max_position_embeddings
and its aliases); a model whose config names none is not checked.
"""

from __future__ import annotations

import weakref

from ..errors import LmlangRuntimeError

_CONFIG_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
_LONGEST: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def config_window(config) -> int | None:
    """The context length a transformers config declares (None if none)."""
    for cfg in (config, getattr(config, "text_config", None)):
        for key in _CONFIG_KEYS:
            value = getattr(cfg, key, None) if cfg is not None else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def window(lm) -> int | None:
    """The most tokens `lm` takes: its model's, the smallest member's for a fusion."""
    members = getattr(lm, "members", None)
    if members:
        known = [w for w in (window(m) for m, _ in members) if w]
        return min(known) if known else None
    model = getattr(lm, "model", None)
    return config_window(getattr(model, "config", None)) if model is not None else None


def longest_token(tokenizer) -> int:
    """Characters in the longest vocabulary entry: no token covers more text.
    (Raw entries: a byte-level entry has one character per byte, which is
    at least one per text character.)"""
    try:
        return _LONGEST[tokenizer]
    except (KeyError, TypeError):
        pass
    longest = max((len(t) for t in tokenizer.get_vocab()), default=1) or 1
    try:
        _LONGEST[tokenizer] = longest
    except TypeError:
        pass
    return longest


def refuse_overlong(lm, query: str, chunks, token_ids=None, loc: str = "") -> None:
    """Raise a row error if the prompt (its literal `chunks`, or once
    tokenized its `token_ids` per chunk) cannot fit lm's window with room
    for at least one generated token."""
    size = window(lm)
    if not size:
        return
    where = f" (query at {loc})" if loc else ""
    if token_ids is None:
        chars = sum(len(c) for c in chunks)
        if chars <= size * longest_token(lm.tokenizer):
            return
        raise LmlangRuntimeError(
            f"the prompt of query '{query}' is {chars:,} characters, more than the {size:,}-token window "
            f"of model {lm.name} can hold{where}",
            hint="shorten this row's input; the other rows run",
        )
    tokens = sum(len(ids) for ids in token_ids)
    if tokens >= size:
        raise LmlangRuntimeError(
            f"the prompt of query '{query}' is {tokens:,} tokens; model {lm.name} takes at most {size:,}, "
            f"with room for the answer{where}",
            hint="shorten this row's input; the other rows run",
        )
