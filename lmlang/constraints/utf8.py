"""Where a value may end: UTF-8 character boundaries, token by token.

A byte-level vocabulary splits some characters over several tokens, so a
value cut after an arbitrary token can end inside a character (`"🌟🌟\\xf0\\x9f"`
decodes to `"🌟🌟�"`). A shape's matcher (regex, JSON, grammar) only accepts
whole characters, so a shaped value that ends complete ends on a boundary;
free text has no matcher, and its guide asks this table instead: how many
continuation bytes the text still owes after a token, and which tokens keep
that debt payable within the tokens the budget has left (one continuation
byte per token: byte-level vocabularies have a token for every byte).

Built once per tokenizer (a loop over the non-ASCII tokens), kept with it.
"""
from __future__ import annotations

import numpy as np

INVALID = 8   # the token cannot follow: it breaks the character the text has started (or starts mid-character)


def _width(lead: int) -> int:
    """Bytes of the character a lead byte starts (1 for ASCII or a stray byte)."""
    if lead >> 5 == 0b110:
        return 2
    if lead >> 4 == 0b1110:
        return 3
    if lead >> 3 == 0b11110:
        return 4
    return 1


class Utf8Table:
    """after[owed, t]: the continuation bytes the text owes after token t,
    given it owed `owed` (0-3) before; INVALID where t cannot follow."""

    def __init__(self, token_bytes: list[bytes]):
        V = len(token_bytes)
        after = np.full((4, V), INVALID, dtype=np.int8)
        alone = np.zeros(V, dtype=np.int8)     # owed after t when the text before it was broken anyway
        for i, b in enumerate(token_bytes):
            if not b:
                continue                        # special tokens and EOS: the guide decides those
            if b.isascii():
                after[0, i] = 0
                continue
            n = len(b)
            k = 0
            while k < n and (b[k] & 0xC0) == 0x80:
                k += 1
            if k == n:                          # only continuation bytes: pays part of a debt
                for owed in range(1, 4):
                    if n <= owed:
                        after[owed, i] = owed - n
                continue
            j = n - 1
            while (b[j] & 0xC0) == 0x80:
                j -= 1
            need = max(0, _width(b[j]) - (n - j))
            alone[i] = need
            if k <= 3:
                after[k, i] = need
        self.after = after
        self.alone = alone

    def next(self, owed: int, token: int) -> int:
        """What the text owes after `token` (a broken sequence starts over)."""
        v = int(self.after[owed, token])
        return v if v != INVALID else int(self.alone[token])

    def fits(self, owed: int, remaining: int) -> np.ndarray:
        """Boolean [V]: tokens after which the debt can be paid with the
        tokens left after this one."""
        return self.after[owed] <= remaining - 1


def table_for(tok) -> Utf8Table:
    """The tokenizer's table, built on first use and kept with it."""
    return tok.backend_object("utf8-boundaries", lambda: Utf8Table(tok.token_bytes))
