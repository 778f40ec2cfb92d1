"""Where a value may end: UTF-8 character boundaries, token by token.

A byte-level vocabulary splits some characters over several tokens, so a
value cut after an arbitrary token can end inside a character (`"🌟🌟\\xf0\\x9f"`
decodes to `"🌟🌟�"`). A shape's matcher (regex, JSON, grammar) only accepts
whole characters, so a shaped value that ends complete ends on a boundary;
free text has no matcher, and its guide asks this table instead: a UTF-8
validator's state after each token (how many continuation bytes the text
still owes, and in what range), which tokens keep the text well-formed
(never a stray continuation byte, an overlong form or a surrogate), and which
keep the debt payable within the tokens the budget has left (one
continuation byte per token: byte-level vocabularies have a token for every
byte).

Built once per tokenizer (a loop over the non-ASCII tokens), kept with it.
"""

from __future__ import annotations

import numpy as np

INVALID = 8  # the token cannot follow: it breaks the character the text has started (or starts mid-character)

# The states of a UTF-8 validator between bytes: 0 between characters;
# 1-3 owing that many continuation bytes (80-BF); 4-7 after a lead byte whose
# next byte has a narrower range (no overlong form, no surrogate, nothing
# past U+10FFFF), owing 2, 2, 3, 3 bytes.
_OWED = np.array([0, 1, 2, 3, 2, 2, 3, 3, 8], dtype=np.int8)  # bytes owed per state (INVALID: 8)
_NEXT_RANGE = {
    1: (0x80, 0xBF, 0),
    2: (0x80, 0xBF, 1),
    3: (0x80, 0xBF, 2),
    4: (0xA0, 0xBF, 1),
    5: (0x80, 0x9F, 1),
    6: (0x90, 0xBF, 2),
    7: (0x80, 0x8F, 2),
}


def _lead(b: int) -> int:
    """The state after byte b between characters (INVALID for a continuation or a never-valid byte)."""
    if b < 0x80:
        return 0
    if 0xC2 <= b <= 0xDF:
        return 1
    if b == 0xE0:
        return 4
    if b == 0xED:
        return 5
    if 0xE1 <= b <= 0xEF:
        return 2
    if b == 0xF0:
        return 6
    if 0xF1 <= b <= 0xF3:
        return 3
    if b == 0xF4:
        return 7
    return INVALID


def _step(state: int, b: int) -> int:
    if state == 0:
        return _lead(b)
    lo, hi, then = _NEXT_RANGE[state]
    return then if lo <= b <= hi else INVALID


def _run(state: int, data: bytes, reset: bool = False) -> int:
    """The state after data from state; reset: start over at a broken byte (as a decoder's replacement does)."""
    for b in data:
        nxt = _step(state, b)
        if nxt == INVALID:
            if not reset:
                return INVALID
            nxt = _lead(b)
            nxt = 0 if nxt == INVALID else nxt
        state = nxt
    return state


class Utf8Table:
    """after[state, t]: the validator's state after token t from `state`
    (0-7); INVALID where t cannot follow."""

    def __init__(self, token_bytes: list[bytes]):
        V = len(token_bytes)
        after = np.full((8, V), INVALID, dtype=np.int8)
        alone = np.zeros(V, dtype=np.int8)  # the state after t when the text before it was broken anyway
        for i, b in enumerate(token_bytes):
            if not b:
                continue  # special tokens and EOS: the guide decides those
            if b.isascii():
                after[0, i] = 0
                continue
            starts = range(1, 8) if 0x80 <= b[0] <= 0xBF else (0,)  # only a continuation can pay a debt
            for state in starts:
                after[state, i] = _run(state, b)
            alone[i] = _run(0, b, reset=True)
        self.after = after
        self.alone = alone
        # valid[state]: the tokens that keep the text well-formed UTF-8.
        self.valid = after != INVALID
        self.owed_after = _OWED[after]  # continuation bytes owed after t (INVALID: 8)
        self.broken_start = np.flatnonzero(~self.valid[0] & np.array([bool(b) for b in token_bytes]))

    def next(self, state: int, token: int) -> int:
        """The state after `token` (a broken sequence starts over)."""
        v = int(self.after[state, token])
        return v if v != INVALID else int(self.alone[token])

    def fits(self, state: int, remaining: int) -> np.ndarray:
        """Boolean [V]: tokens after which the debt can be paid with the
        tokens left after this one (one continuation byte per token)."""
        return self.owed_after[state] <= remaining - 1


def table_for(tok) -> Utf8Table:
    """The tokenizer's table, built on first use and kept with it."""
    return tok.backend_object("utf8-boundaries", lambda: Utf8Table(tok.token_bytes))
