"""`guard leak(max_overlap: F, ngram: K)`: keep a query's values from copying
its system prompt (seed: "Why Are My Prompts Leaked?", which finds that
extraction attacks mostly make a model repeat its instructions verbatim or
nearly so).

The system prompt is known per call (its values interpolated), so the guard
is built per call: the system message's token K-grams, under the two
tokenizations a copy starts with (the text as it is, and after a space).
While one value is decoded, the guard follows the value's last K-1 tokens;
the tokens that would complete a K-gram of the system prompt are its
candidates. A value may copy at most floor(F x N) distinct K-grams (N: the
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


class LeakGuard:
    """The system prompt's K-grams for one call, and the overlap budget."""

    def __init__(self, tokenizations: list[list[int]], ngram: int, max_overlap: float):
        self.k = ngram
        grams: set[tuple[int, ...]] = set()
        for ids in tokenizations:
            grams.update(tuple(ids[i : i + ngram]) for i in range(len(ids) - ngram + 1))
        primary = tokenizations[0] if tokenizations else []
        n = len({tuple(primary[i : i + ngram]) for i in range(len(primary) - ngram + 1)})
        self.budget = math.floor(max_overlap * n + 1e-9)
        self.grams = grams
        self.next_of: dict[tuple[int, ...], set[int]] = {}
        for g in grams:
            self.next_of.setdefault(g[:-1], set()).add(g[-1])

    @classmethod
    def for_call(cls, guard: tuple, system_text: str, encode) -> "LeakGuard | None":
        """The guard for one call (None when there is no system text to guard)."""
        _name, opts = guard
        o = dict(opts)
        if not system_text.strip():
            return None
        ids = [encode(system_text), encode(" " + system_text.lstrip())]
        return cls(ids, int(o["ngram"]), float(o["max_overlap"]))

    def start(self) -> "LeakState":
        return LeakState(self)


class LeakState:
    """One value's copied K-grams and its last K-1 tokens."""

    def __init__(self, guard: LeakGuard):
        self.guard = guard
        self.tail: tuple[int, ...] = ()
        self.copied: set[tuple[int, ...]] = set()
        self.masked = 0  # candidates masked (trace)
        self.overridden = 0  # steps where masking would have left no token (the constraint won)

    def banned(self) -> list[int]:
        """The tokens that would copy one K-gram too many, this step."""
        g = self.guard
        if len(self.copied) < g.budget or len(self.tail) < g.k - 1:
            return []
        return [t for t in g.next_of.get(self.tail, ()) if self.tail + (t,) not in self.copied]

    def take(self, token: int) -> None:
        g = self.guard
        window = self.tail + (token,)
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
