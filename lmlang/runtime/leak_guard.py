"""`guard leak(max_overlap: F, ngram: K)`: keep a query's values from copying
its system prompt (seed: "Why Are My Prompts Leaked?", which finds that
extraction attacks mostly make a model repeat its instructions verbatim or
nearly so).

The system prompt is known per call (its values interpolated), so the guard
is built per call: the K-grams of the system message's tokens, each token
read as its key (its text, trimmed and lowercased: " Acme" and "Acme" are one
key, whitespace tokens none), so where a copy's word boundaries fall does not
matter. While one value is decoded, the guard follows the keys of the value's
last K-1 tokens; every token whose key would complete a K-gram of the system
prompt is a candidate. A value may copy at most floor(F x N) distinct K-grams (N: the
system prompt's distinct K-grams; F = 0 allows none); once it has, every
candidate that would copy a new one is masked.

The mask composes with the hole's own mask (the constraint, the budget,
canonical choices): it is applied to the logits the hole has masked already,
and where it would leave no token at all the constraint wins (a choice whose
only option is a copy is the author's to make) and the trace counts it.
Lookups are one dict access per step; nothing scans the vocabulary.
"""

from __future__ import annotations

import math
import threading
from typing import Hashable

_KEYS: dict[str, tuple[list[str], dict[str, list[int]]]] = {}  # tokenizer hash -> (key per token, ids per key)
_KEYS_LOCK = threading.Lock()


def token_keys(tok) -> tuple[list[str], dict[str, list[int]]]:
    """Each token's key (its text without surrounding whitespace, lowercased;
    "" for whitespace and special tokens) and the tokens of each key, once
    per tokenizer. A copy spelled " Acme" or "Acme", "4417" or " 4 4 1 7",
    is one run of keys, so the guard does not depend on where a word falls."""
    with _KEYS_LOCK:
        hit = _KEYS.get(tok.hash)
        if hit is None:
            keys = [b.decode("utf-8", errors="replace").strip().lower() for b in tok.token_bytes]
            ids: dict[str, list[int]] = {}
            for i, k in enumerate(keys):
                if k:
                    ids.setdefault(k, []).append(i)
            hit = _KEYS[tok.hash] = (keys, ids)
        return hit


class LeakGuard:
    """The system prompt's key n-grams for one call, and the overlap budget.

    Symbols are token keys (token_keys); `key_of` maps a token id to its key
    and `ids_of` a key to its tokens. Without them (tests) a symbol is a
    token id."""

    def __init__(
        self,
        sequences: list[list[Hashable]],
        ngram: int,
        max_overlap: float,
        key_of: list | None = None,
        ids_of: dict | None = None,
    ):
        self.k = ngram
        self.key_of, self.ids_of = key_of, ids_of
        grams: set[tuple] = set()
        for seq in sequences:
            grams.update(tuple(seq[i : i + ngram]) for i in range(len(seq) - ngram + 1))
        primary = sequences[0] if sequences else []
        n = len({tuple(primary[i : i + ngram]) for i in range(len(primary) - ngram + 1)})
        self.budget = math.floor(max_overlap * n + 1e-9)
        self.grams = grams
        self.next_of: dict[tuple, set] = {}
        for g in grams:
            self.next_of.setdefault(g[:-1], set()).add(g[-1])

    @classmethod
    def for_call(cls, guard: tuple, system_text: str, tok) -> "LeakGuard | None":
        """The guard for one call over tokenizer `tok` (None when there is no
        system text to guard)."""
        _name, opts = guard
        o = dict(opts)
        if not system_text.strip():
            return None
        key_of, ids_of = token_keys(tok)
        keys = [key_of[t] for t in tok.encode(system_text)]
        return cls([[k for k in keys if k]], int(o["ngram"]), float(o["max_overlap"]), key_of, ids_of)

    def symbol(self, token: int) -> Hashable:
        return token if self.key_of is None else self.key_of[token]

    def tokens(self, symbols) -> list[int]:
        if self.ids_of is None:
            return list(symbols)
        return [t for s in symbols for t in self.ids_of.get(s, ())]

    def start(self) -> "LeakState":
        return LeakState(self)


class LeakState:
    """One value's copied n-grams and its last n-1 symbols."""

    def __init__(self, guard: LeakGuard):
        self.guard = guard
        self.tail: tuple = ()
        self.copied: set[tuple] = set()
        self.masked = 0  # candidates masked (trace)
        self.overridden = 0  # steps where masking would have left no token (the constraint won)

    def banned(self) -> list[int]:
        """The tokens that would copy one n-gram too many, this step."""
        g = self.guard
        if len(self.copied) < g.budget or len(self.tail) < g.k - 1:
            return []
        return g.tokens(s for s in g.next_of.get(self.tail, ()) if self.tail + (s,) not in self.copied)

    def take(self, token: int) -> None:
        g = self.guard
        s = g.symbol(token)
        if s == "":
            return  # whitespace between words: not a symbol
        window = self.tail + (s,)
        if len(window) == g.k and window in g.grams:
            self.copied.add(window)
        self.tail = window[-(g.k - 1) :] if g.k > 1 else ()


def system_text(segments: tuple, env: dict, loc: str = "") -> str:
    """The system messages' text for this call (literal text and values)."""
    from ..builtins import value_text
    from .prompt import lookup

    out = []
    for role, parts in segments:
        if role != "system":
            continue
        text = []
        for kind, val in parts:
            if kind == "text":
                text.append(val)
            elif kind == "interp":
                text.append(value_text(lookup(tuple(val), env, loc)))
        out.append("".join(text))
    return "\n".join(out)
