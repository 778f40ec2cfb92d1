"""Guide: one decoding of one hole, layered over a backend Matcher.

The backend knows the *shape*; the Guide adds what lmlang promises on top:

* special tokens other than EOS are never allowed;
* Stop: a token may complete a stop string only at its own end (so the value
  ends on a token boundary and the KV cache holds exactly value + stop); once a
  stop is complete the value is finished. include=False trims it off `value()`;
* MaxChars: tokens whose code-point length exceeds the remaining budget are
  masked (one numpy comparison);
* MaxTokens / MaxChars on a shape: the Guide keeps a *witness*, a token
  sequence that completes the shape from the current state within what the
  budget has left (found by a greedy walk preferring closing bytes `} ] "`
  and short literals: the *closing path*). The invariant is that a witness
  always exists: it is found at the start (`CompiledConstraint.start_path`;
  when none fits, the hole fails before decoding), and every token the
  decoder takes keeps one: the witness's own next token does, and any other
  token is checked first (`fits`: the closing path from the state after it
  must fit in what is left; the decoder masks a token that does not and
  picks again). When the budget gets within a small slack of the witness,
  only the witness is allowed, so the value ends complete and valid: a
  budget never cuts a shaped value. For a regex or Choice with MaxChars the
  bound is lowered exactly (lower.py).
* Free text ends on a UTF-8 character boundary: near the token budget only
  tokens after which the text's unfinished character can still be finished
  are allowed, and EOS only between characters (utf8.py).
* A forced run (fast-forward) stops at the first token that finishes the
  value (a stop, the token or character budget): the guide is never asked
  to go past its end.

Masks are int32 bitmask words filled natively by the backend, unpacked once
with numpy and applied to the logits with one `masked_fill_`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .backends import Matcher
from .lower import CLOSING_PRIORITY, CLOSING_PRIORITY_IN_STRING, json_string_state

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .engine import CompiledConstraint

# Closing mode starts this close to the witness's length, so the value ends a
# little before the budget instead of after many refused picks.
_SLACK_TOKENS = 2
_SLACK_CHARS = 2
# Free text: a character owes at most 3 continuation bytes, so only the last
# few tokens of the budget need the UTF-8 mask.
_UTF8_ZONE = 4
# The greedy walk's step limit: at least 256 steps, else 4 per token of budget.
_WALK_MIN, _WALK_MAX = 256, 4096
_LOOP = 6  # the walk's loop window (tokens)


class GuideError(ValueError):
    """A token the guide cannot take, or a backend that gave up (the
    decoding loop reports it as a runtime error naming the hole)."""


class Guide:
    """See engine.py for the contract. Not thread-safe; clone() for beams."""

    def __init__(self, compiled: "CompiledConstraint", matcher: Matcher | None):
        self._c = compiled
        tok = compiled.tok
        self._tok = tok
        self._m = matcher
        self._V = tok.vocab_size
        self._words = np.zeros((self._V + 31) // 32, dtype=np.int32)
        self._words_fresh = False
        self._text = bytearray()
        self._value_end: int | None = None
        self.tokens_generated = 0
        self._spent = 0  # budget tokens spent outside the value (a healed seam's bare space)
        self._chars = 0
        self._finished = False
        self.ended_by: str | None = None  # "eos" | "stop" | "max_tokens" | "max_chars" | "complete"
        self.stop_matched: str | None = None
        self.truncated = False
        plan = compiled.plan
        self._exact_chars = plan.options is not None or (plan.kind == "lark" and plan.source.endswith("&len"))
        # A shape held to a budget keeps a witness (see the module docstring).
        # A choice's budget is exact in its canonical paths (hole.py) instead.
        self._bounded = (
            matcher is not None
            and plan.options is None
            and (plan.max_tokens is not None or (plan.max_chars is not None and not self._exact_chars))
        )
        self._closing: list[int] | None = None
        self._closing_chars = 0
        self._closing_at = -1
        self._closing_mode = False
        self._pending: list[int] = []  # tokens fits() checked, still to be taken ...
        self._pending_path: list[int] | None = None  # ... and the witness after them
        if self._bounded:
            start = compiled.start_path()
            if start is not None:
                self._closing = list(start)
                self._closing_chars = self._chars_of(start)
                self._closing_at = 0
        # Free text owes continuation bytes while a character is unfinished.
        self._utf8 = 0
        self._utf8_table = compiled.utf8_table() if matcher is None and plan.max_tokens is not None else None
        self._fast_until = (
            (plan.max_tokens - _UTF8_ZONE) if self._utf8_table is not None and plan.max_tokens is not None else 1 << 62
        )

    # ------------------------------------------------------------------ state
    def clone(self) -> "Guide":
        g = Guide.__new__(Guide)
        g.__dict__.update(self.__dict__)
        g._m = self._m.clone() if self._m is not None else None
        g._words = self._words.copy()
        g._text = bytearray(self._text)
        g._closing = list(self._closing) if self._closing is not None else None
        g._pending = list(self._pending)
        return g

    def is_finished(self) -> bool:
        if self._finished:
            return True
        if self._m is not None and self._m.accepting():
            stopped = self._m.stopped()
            if stopped is None:
                self._fill()
                stopped = not self._has_non_eos(self._words)
            if stopped:
                self._finish("complete")
        return self._finished

    def value(self) -> str:
        end = len(self._text) if self._value_end is None else self._value_end
        return bytes(self._text[:end]).decode("utf-8", errors="replace")

    def text(self) -> str:
        """Everything generated (including a stop string trimmed from value())."""
        return bytes(self._text).decode("utf-8", errors="replace")

    def complete(self) -> bool:
        """Whether the text so far is a whole value: the shape accepts it (or
        a stop ended it, which a stop may do early), and no character is left
        unfinished."""
        if self.truncated:
            return False
        if self.ended_by == "stop":
            return True
        if self._m is not None:
            return self._m.accepting()
        return self._utf8 == 0

    @property
    def backend(self) -> str:
        return self._c.backend

    def remaining_tokens(self) -> int | None:
        mt = self._c.plan.max_tokens
        return None if mt is None else mt - self.tokens_generated - self._spent

    def _remaining_chars(self) -> int | None:
        mc = self._c.plan.max_chars
        return None if mc is None else mc - self._chars

    def _chars_of(self, ids) -> int:
        cl = self._tok.char_len
        return int(sum(int(cl[t]) for t in ids))

    # ------------------------------------------------------------------ masks
    def _fill(self) -> None:
        if not self._words_fresh:
            assert self._m is not None
            self._m.fill(self._words)
            self._words_fresh = True

    def _has_non_eos(self, words: np.ndarray) -> bool:
        eos = self._tok.eos_token_id
        w = eos // 32
        if np.any(words[:w]) or np.any(words[w + 1 :]):
            return True
        return bool(int(words[w]) & ~(1 << (eos % 32)) & 0xFFFFFFFF)

    def allowed_mask(self) -> np.ndarray:
        """Boolean numpy array [vocab_size]: the tokens allowed next (EOS included iff the value may end)."""
        tok = self._tok
        V = self._V
        eos = tok.eos_token_id
        if self._finished:
            out = np.zeros(V, dtype=bool)
            out[eos] = True
            return out
        plan = self._c.plan
        self._update_closing()
        if self._closing_mode:
            out = np.zeros(V, dtype=bool)
            if self._closing:
                out[self._closing[0]] = True
            else:
                out[eos] = True
            return out
        if self._m is not None:
            self._fill()
            out = np.unpackbits(self._words.view(np.uint8), bitorder="little", count=V).view(bool)
        else:
            out = self._c.free_base.copy()
            if self._utf8_table is not None:
                self._utf8_mask(out)
        if plan.max_chars is not None:
            eos_ok = out[eos]
            limit = plan.max_chars - self._chars
            # A grammar that bounds the characters itself (`&len`) allows only
            # tokens some short-enough value continues: no slack to keep there.
            if self._closing is not None and plan.has_shape and plan.options is None and not self._exact_chars:
                limit -= self._closing_chars + _SLACK_CHARS
                if self._closing:
                    keep = self._closing[0]
                    was = out[keep]
                    out &= tok.char_len <= limit
                    out[keep] = was
                else:
                    out &= tok.char_len <= limit
            else:
                out &= tok.char_len <= limit
            out[eos] = eos_ok
        if plan.stops:
            for stop_b, include in self._c.stop_bytes:
                k = self._stop_state(stop_b)
                out &= ~self._c.stop_crossing(stop_b, k)
        return out

    def _utf8_mask(self, out: np.ndarray) -> None:
        """Free text: EOS only between characters; near the budget, only
        tokens after which the unfinished character can still be finished."""
        eos = self._tok.eos_token_id
        rem = self.remaining_tokens()
        assert self._utf8_table is not None  # free text under a token budget (set up in __init__)
        if rem is not None and rem <= _UTF8_ZONE:
            out &= self._utf8_table.fits(self._utf8, rem)
        else:
            out &= self._utf8_table.valid[self._utf8]
        out[eos] = self._utf8 == 0

    def apply(self, logits: "torch.Tensor") -> None:
        """In place: disallowed tokens -> -inf (logits may be wider than the vocabulary)."""
        import torch

        V = self._V
        if logits.shape[-1] > V:
            logits[V:] = float("-inf")
        c = self._c
        if (
            not self._finished
            and c.unmasked
            and c.plan.max_chars is None
            and not self._utf8
            and self.tokens_generated + self._spent < self._fast_until
        ):
            logits[c.special_index_t] = float("-inf")
            return
        allowed = self.allowed_mask()
        if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.is_contiguous():
            # numpy is single-threaded: no OpenMP spin-up competing with the backends' threads
            arr = logits.detach().numpy()[:V]
            if np.count_nonzero(allowed) * 16 < V:  # sparse: blank everything, restore the few allowed
                idx = np.flatnonzero(allowed)
                keep = arr[idx]
                arr.fill(-np.inf)
                arr[idx] = keep
            else:
                np.putmask(arr, ~allowed, -np.inf)
        else:
            blocked = np.logical_not(allowed)
            logits[:V].masked_fill_(torch.from_numpy(blocked).to(logits.device), float("-inf"))

    def _stop_state(self, stop_b: bytes) -> int:
        """Longest suffix of the text that is a proper prefix of the stop."""
        t = self._text
        for k in range(min(len(stop_b) - 1, len(t)), 0, -1):
            if t.endswith(stop_b[:k]):
                return k
        return 0

    # ------------------------------------------------------------------ advance
    def advance(self, token_id: int) -> None:
        if self._finished:
            raise GuideError("advance() on a finished guide")
        tok = self._tok
        if token_id == tok.eos_token_id:
            if self._m is not None and not self._m.accepting():
                raise GuideError("EOS before the value is complete")
            self._finish("eos")
            return
        b = tok.token_bytes[token_id] if 0 <= token_id < self._V else b""
        if not b:
            raise GuideError(f"token {token_id} is special and never part of a value")
        if self._m is not None and not self._m.consume(token_id):
            reason = backend_reason(self._m)
            raise GuideError(
                f"token {token_id} ({b!r}) is not allowed here"
                + (f": the constraint engine gave up ({reason})" if reason else "")
            )
        self._words_fresh = False
        before = len(self._text)
        self._text += b
        self.tokens_generated += 1
        self._chars += int(tok.char_len[token_id])
        if self._utf8_table is not None:
            self._utf8 = self._utf8_table.next(self._utf8, token_id)
        if self._bounded:
            self._step_witness(token_id)
        plan = self._c.plan
        for stop_b, include in self._c.stop_bytes:
            i = self._text.find(stop_b, max(0, before - len(stop_b) + 1))
            if i >= 0:
                self._value_end = i + len(stop_b) if include else i
                self.stop_matched = stop_b.decode("utf-8", errors="replace")
                self._finish("stop")
                return
        if plan.max_tokens is not None and self.tokens_generated + self._spent >= plan.max_tokens:
            self._finish("max_tokens")
        elif plan.max_chars is not None and self._chars >= plan.max_chars and not self._utf8:
            self._finish("max_chars")  # (free text first finishes its last character: continuations count 0)

    def spend(self, n: int = 1) -> None:
        """Count n tokens against the budget that are not part of the value
        (the bare space of a healed seam: the model's cache holds it)."""
        self._spent += n
        rem = self.remaining_tokens()
        if rem is not None and rem <= 0 and not self._finished:
            self._finish("max_tokens")

    def _step_witness(self, token_id: int) -> None:
        """Keep the witness after taking token_id: the checked one, the old
        one's tail, or none (recomputed before the next mask)."""
        if self._pending:
            if self._pending[0] == token_id:
                self._pending.pop(0)
                if not self._pending:
                    self._closing = self._pending_path
                    self._closing_chars = self._chars_of(self._closing)
                    self._closing_at = self.tokens_generated
                else:
                    self._closing = None
                return
            self._pending = []
        if self._closing:
            if self._closing[0] == token_id:
                self._closing.pop(0)
                self._closing_chars -= int(self._tok.char_len[token_id])
                return
        self._closing = None

    def _finish(self, why: str) -> None:
        self._finished = True
        self.ended_by = why
        if why in ("max_tokens", "max_chars") and self._m is not None and not self._m.accepting():
            self.truncated = True

    # ------------------------------------------------------------------ the budget invariant
    def fits(self, token_id: int) -> bool:
        """Whether the value can still be completed within its limits after
        token_id (a token the mask allowed). False: mask it and pick again.
        Only a shape held to a budget has anything to check (free text's
        UTF-8 rule is exact in its mask); the witness's own next token
        always fits, so a pick is always possible."""
        if not self._bounded or self._finished or token_id == self._tok.eos_token_id:
            return True
        self._update_closing()
        w = self._closing
        if w and w[0] == token_id:
            self._pending = []
            return True
        return self._check([token_id])

    def fits_spending(self, n: int) -> bool:
        """Whether n budget tokens outside the value (spend) still leave room for the witness."""
        if not self._bounded:
            return True
        self._update_closing()
        rem = self.remaining_tokens()
        return rem is None or (self._closing is not None and len(self._closing) <= rem - n)

    def _check(self, ids: list[int]) -> bool:
        """Take ids on a copy of the matcher; True (and the witness after them
        remembered for advance) when a closing path then fits what is left."""
        assert self._m is not None  # a bounded/choice value always has a matcher
        m = self._m.clone()
        for t in ids:
            if not m.consume(t):
                return False
        text = bytes(self._text) + b"".join(self._tok.token_bytes[t] for t in ids)
        rem_t = self.remaining_tokens()
        rem_c = self._remaining_chars()
        if rem_t is not None:
            rem_t -= len(ids)
        if rem_c is not None:
            rem_c -= self._chars_of(ids)
        path = self._closing_path(m, text, rem_t)
        if path is None or not self._within(path, rem_t, rem_c):
            return False
        self._pending = list(ids)
        self._pending_path = path
        return True

    def _within(self, path: list[int], rem_t: int | None, rem_c: int | None) -> bool:
        if rem_t is not None and len(path) > rem_t:
            return False
        return rem_c is None or self._exact_chars or self._chars_of(path) <= rem_c

    # ------------------------------------------------------------------ forced
    def forced_tokens(self) -> list[int]:
        """The unique continuation, as tokens, when the constraint allows exactly one; [] otherwise.
        It ends at the first token that would finish the value (a stop, a budget)."""
        if self.is_finished():
            return []
        self._update_closing()
        if self._closing_mode:
            return self._within_limits(list(self._closing or []))
        if self._m is None:
            return []
        out: list[int] = []
        native = self._m.forced_tokens()
        if native is not None:
            out = native
        else:
            forced = self._m.forced_bytes() or self._c.forced_choice_bytes(bytes(self._text))
            if forced:
                out = self._verified_prefix(forced)
        if not out:
            out = self._unique_tokens()
        out = self._within_limits(out)
        if out and self._bounded:
            w = self._closing
            if w is not None and w[: len(out)] == out:
                self._pending = []
            elif not self._check(out):
                return []  # its tokenization would not leave room: the mask picks token by token
        return out

    def _verified_prefix(self, forced: bytes) -> list[int]:
        """Tokenize forced bytes canonically; drop the last token unless it ends the value (it might merge
        with what follows); keep the prefix the shape accepts."""
        try:
            ids = self._tok.encode(forced.decode("utf-8"))
        except UnicodeDecodeError:
            return []
        assert self._m is not None  # a bounded/choice value always has a matcher
        m = self._m.clone()
        out: list[int] = []
        for t in ids:
            if not m.consume(t):
                break
            out.append(t)
        if len(out) == len(ids) and m.accepting():
            stopped = m.stopped()
            if stopped is None:
                w = np.zeros_like(self._words)
                m.fill(w)
                stopped = not self._has_non_eos(w)
            if stopped:
                return out
        return out[:-1] if len(out) == len(ids) else out

    def _only_token(self, w: np.ndarray) -> int | None:
        """The single allowed token of mask words w (None: EOS allowed, or not exactly one)."""
        eos = self._tok.eos_token_id
        if (int(w[eos // 32]) >> (eos % 32)) & 1:
            return None
        nz = np.flatnonzero(w)
        if len(nz) != 1 or (int(w[nz[0]]) & (int(w[nz[0]]) - 1)):
            return None
        return int(nz[0]) * 32 + (int(w[nz[0]]) & 0xFFFFFFFF).bit_length() - 1

    def _unique_tokens(self, limit: int = 16) -> list[int]:
        # The first look uses the guide's own mask, which apply() then reuses:
        # on the usual step (several tokens allowed) nothing is cloned or
        # filled twice.
        self._fill()
        t = self._only_token(self._words)
        if t is None:
            return []
        assert self._m is not None  # a bounded/choice value always has a matcher
        m = self._m.clone()
        w = np.zeros_like(self._words)
        out: list[int] = []
        while t is not None and len(out) < limit and m.consume(t):
            out.append(t)
            m.fill(w)
            t = self._only_token(w)
        return out

    def _within_limits(self, ids: list[int]) -> list[int]:
        """ids up to and including the first token that would finish the
        value: the token budget, the character budget, or a stop string
        (the same rules advance() applies)."""
        plan = self._c.plan
        if plan.max_tokens is None and plan.max_chars is None and not plan.stops:
            return ids
        rem_t = self.remaining_tokens()
        rem_c = self._remaining_chars()
        text = bytearray(self._text) if plan.stops else None
        cl = self._tok.char_len
        kept: list[int] = []
        if (rem_t is not None and rem_t <= 0) or (rem_c is not None and rem_c <= 0):
            return kept
        for t in ids:
            if rem_c is not None:
                rem_c -= int(cl[t])
                if rem_c < 0:
                    break  # this token alone would overrun the characters left
            kept.append(t)
            if rem_c is not None and rem_c == 0:
                break
            if rem_t is not None:
                rem_t -= 1
                if rem_t <= 0:
                    break
            if text is not None:
                before = len(text)
                text += self._tok.token_bytes[t]
                if any(text.find(s, max(0, before - len(s) + 1)) >= 0 for s, _ in self._c.stop_bytes):
                    break
        return kept

    # ------------------------------------------------------------------ budgets
    def _update_closing(self) -> None:
        if not self._bounded:
            return
        rem_t = self.remaining_tokens()
        rem_c = self._remaining_chars()
        exact_chars = self._exact_chars
        step = self.tokens_generated
        if self._closing is None or self._closing_at != step:
            est = len(self._closing) if self._closing is not None else 0
            near = (rem_t is not None and rem_t <= 2 * est + 16) or (
                rem_c is not None and rem_c <= 2 * self._closing_chars + 32
            )
            if self._closing is None or near or step - self._closing_at >= 16:
                assert self._m is not None  # a bounded/choice value always has a matcher
                path = self._closing_path(self._m.clone(), bytes(self._text), rem_t)
                self._closing = path
                self._closing_chars = self._chars_of(path) if path is not None else 0
                self._closing_at = step
        if self._closing is None:
            self._closing_mode = False
            return
        n = len(self._closing)
        # Before the first value token only a witness that needs the whole
        # budget forces: with slack there, `x is int and tokens(x) <= 3`
        # (witness "0") was forced to 0 before the model picked a digit.
        slack = 0 if not step else _SLACK_TOKENS if n else 1
        self._closing_mode = (rem_t is not None and n + slack >= rem_t) or (
            rem_c is not None and not exact_chars and self._closing_chars > 0 and self._closing_chars >= rem_c
        )

    def _closing_path(self, m: Matcher, text: bytes, rem_t: int | None = None) -> list[int] | None:
        return closing_path(self._c, m, text, rem_t)


def closing_path(c: "CompiledConstraint", m: Matcher, text: bytes, rem_t: int | None = None) -> list[int] | None:
    """A greedy completion of the shape from matcher m (consumed: pass a
    clone) whose text so far is `text`: forced tokens first, else the first
    allowed byte in closing priority; then tokenized canonically when that is
    shorter. None when the walk finds no end within its step limit."""
    limit = _WALK_MIN if rem_t is None else min(_WALK_MAX, max(_WALK_MIN, 4 * rem_t))
    tok = c.tok
    singles = tok.single_byte_tokens()
    orders = [[singles[b] for b in prio if b in singles] for prio in (CLOSING_PRIORITY, CLOSING_PRIORITY_IN_STRING)]
    is_json = c.plan.kind == "json"
    state = json_string_state(text) if is_json else (False, False)
    w = np.zeros((tok.vocab_size + 31) // 32, dtype=np.int32)
    base = m.clone()
    path: list[int] = []
    while len(path) < limit:
        if m.accepting():
            return _compress(tok, path, base)
        steps = m.forced_tokens() or []
        if not steps:
            m.fill(w)
            order = orders[1] if state[0] else orders[0]
            # The first allowed byte in priority, but not one of a loop: when
            # the last few tokens are at most two distinct ones (`a*b` would
            # take `a` for ever, `(0|1)*2` 0 and 1), another allowed byte first.
            loop = set(path[-_LOOP:]) if len(path) >= _LOOP and len(set(path[-_LOOP:])) <= 2 else ()
            chosen = next((t for t in order if (int(w[t // 32]) >> (t % 32)) & 1 and t not in loop), None)
            if chosen is None:
                chosen = next((t for t in order if (int(w[t // 32]) >> (t % 32)) & 1), None)
            if chosen is None:
                for word in np.flatnonzero(w):
                    bits = int(w[word]) & 0xFFFFFFFF
                    t = int(word) * 32 + (bits & -bits).bit_length() - 1
                    if t != tok.eos_token_id:
                        chosen = t
                        break
            if chosen is None:
                return None
            steps = [chosen]
        for t in steps:
            if not m.consume(t):
                return None
            path.append(t)
            if is_json:
                state = json_string_state(tok.token_bytes[t], state)
    return None


def _compress(tok, path: list[int], base: Matcher) -> list[int]:
    """The path's text tokenized canonically, when that is shorter and the
    shape takes it from `base` (the state the path starts from)."""
    if len(path) < 2:
        return path
    data = b"".join(tok.token_bytes[t] for t in path)
    try:
        ids = tok.encode(data.decode("utf-8"))
    except UnicodeDecodeError:
        return path
    if len(ids) >= len(path):
        return path
    for t in ids:
        if not base.consume(t):
            return path
    return ids if base.accepting() else path


def backend_reason(m: Matcher) -> str:
    """The first line of the backend's own error, when it has one ("" otherwise)."""
    err = getattr(m, "error", None)
    msg = (err() if callable(err) else "") or ""
    return next((ln.strip() for ln in msg.splitlines() if ln.strip()), "")
