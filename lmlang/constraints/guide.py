"""Guide: one decoding of one hole, layered over a backend Matcher.

The backend knows the *shape*; the Guide adds what lmlang promises on top:

* special tokens other than EOS are never allowed;
* Stop: a token may complete a stop string only at its own end (so the value
  ends on a token boundary and the KV cache holds exactly value + stop); once a
  stop is complete the value is finished. include=False trims it off `value()`;
* MaxChars: tokens whose code-point length exceeds the remaining budget are
  masked (one numpy comparison);
* MaxTokens / MaxChars on a shape: the Guide keeps a *closing path*, a short
  token sequence that completes the shape from the current state (forced
  bytes first, then a greedy walk preferring closing bytes `} ] "` and short
  literals). When the remaining budget gets within a small slack of the path's
  length, only the path is allowed, so the value ends complete and valid.
  Guarantee: if the budget at the start covers the closing path (the shortest
  valid value the greedy walk finds, plus the slack), the value is valid when
  the budget runs out; otherwise `truncated` is set (the runtime reports it).
  For a regex or Choice with MaxChars the bound is lowered exactly (lower.py).

Masks are int32 bitmask words filled natively by the backend, unpacked once
with numpy and applied to the logits with one `masked_fill_`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .backends import Matcher
from .lower import CLOSING_PRIORITY, CLOSING_PRIORITY_IN_STRING, json_string_state

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .engine import CompiledConstraint

# Greedy closing prefers bytes that end structures, then short scalars.
_SLACK_TOKENS = 2
_SLACK_CHARS = 2


class ValueTruncated(Exception):
    pass


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
        self._chars = 0
        self._finished = False
        self.ended_by: str | None = None   # "eos" | "stop" | "max_tokens" | "max_chars" | "complete"
        self.stop_matched: str | None = None
        self.truncated = False
        self._closing: list[int] | None = None
        self._closing_chars = 0
        self._closing_at = -1
        self._closing_mode = False

    # ------------------------------------------------------------------ state
    def clone(self) -> "Guide":
        g = Guide.__new__(Guide)
        g.__dict__.update(self.__dict__)
        g._m = self._m.clone() if self._m is not None else None
        g._words = self._words.copy()
        g._text = bytearray(self._text)
        g._closing = list(self._closing) if self._closing is not None else None
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

    @property
    def backend(self) -> str:
        return self._c.backend

    # ------------------------------------------------------------------ masks
    def _fill(self) -> None:
        if not self._words_fresh:
            self._m.fill(self._words)
            self._words_fresh = True

    def _has_non_eos(self, words: np.ndarray) -> bool:
        eos = self._tok.eos_token_id
        w = eos // 32
        if np.any(words[:w]) or np.any(words[w + 1:]):
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
        if plan.max_chars is not None:
            eos_ok = out[eos]
            limit = plan.max_chars - self._chars
            if self._closing is not None and plan.has_shape and plan.options is None:
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

    def apply(self, logits: "torch.Tensor") -> None:
        """In place: disallowed tokens -> -inf (logits may be wider than the vocabulary)."""
        import torch

        V = self._V
        if logits.shape[-1] > V:
            logits[V:] = float("-inf")
        c = self._c
        if not self._finished and c.unmasked and (c.plan.max_chars is None):
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
            raise ValueError("advance() on a finished guide")
        tok = self._tok
        if token_id == tok.eos_token_id:
            if self._m is not None and not self._m.accepting():
                raise ValueError("EOS before the value is complete")
            self._finish("eos")
            return
        b = tok.token_bytes[token_id] if 0 <= token_id < self._V else b""
        if not b:
            raise ValueError(f"token {token_id} is special and never part of a value")
        if self._m is not None and not self._m.consume(token_id):
            raise ValueError(f"token {token_id} ({b!r}) is not allowed here")
        self._words_fresh = False
        before = len(self._text)
        self._text += b
        self.tokens_generated += 1
        self._chars += int(tok.char_len[token_id])
        if self._closing is not None:
            if self._closing and self._closing[0] == token_id:
                self._closing.pop(0)
                self._closing_chars -= int(tok.char_len[token_id])
            else:
                self._closing = None
        plan = self._c.plan
        for stop_b, include in self._c.stop_bytes:
            i = self._text.find(stop_b, max(0, before - len(stop_b) + 1))
            if i >= 0:
                self._value_end = i + len(stop_b) if include else i
                self.stop_matched = stop_b.decode("utf-8", errors="replace")
                self._finish("stop")
                return
        if plan.max_tokens is not None and self.tokens_generated >= plan.max_tokens:
            self._finish("max_tokens")
        elif plan.max_chars is not None and self._chars >= plan.max_chars:
            self._finish("max_chars")

    def _finish(self, why: str) -> None:
        self._finished = True
        self.ended_by = why
        if why in ("max_tokens", "max_chars") and self._m is not None and not self._m.accepting():
            self.truncated = True

    # ------------------------------------------------------------------ forced
    def forced_tokens(self) -> list[int]:
        """The unique continuation, as tokens, when the constraint allows exactly one; [] otherwise."""
        if self.is_finished():
            return []
        self._update_closing()
        if self._closing_mode:
            # The closing path can be longer than what the budget has left
            # (a budget below the shortest value): force only what fits, so
            # the value ends as `truncated` instead of overrunning the guide.
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
        return self._within_limits(out)

    def _verified_prefix(self, forced: bytes) -> list[int]:
        """Tokenize forced bytes canonically; drop the last token unless it ends the value (it might merge
        with what follows); keep the prefix the shape accepts."""
        try:
            ids = self._tok.encode(forced.decode("utf-8"))
        except UnicodeDecodeError:
            return []
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
        m = self._m.clone()
        w = np.zeros_like(self._words)
        out: list[int] = []
        while t is not None and len(out) < limit and m.consume(t):
            out.append(t)
            m.fill(w)
            t = self._only_token(w)
        return out

    def _within_limits(self, ids: list[int]) -> list[int]:
        plan = self._c.plan
        if plan.max_tokens is not None:
            ids = ids[: max(0, plan.max_tokens - self.tokens_generated)]
        if plan.stops:
            g = self.clone()
            g._m = None  # stops only depend on the text
            kept = []
            for t in ids:
                g.advance(t)
                kept.append(t)
                if g._finished:
                    break
            ids = kept
        return ids

    # ------------------------------------------------------------------ budgets
    def _update_closing(self) -> None:
        plan = self._c.plan
        if self._m is None or (plan.max_tokens is None and plan.max_chars is None):
            return
        exact_chars = plan.options is not None or (plan.kind == "lark" and plan.source.endswith("&len"))
        if exact_chars and plan.max_tokens is None:
            return  # the length bound is inside the shape already (filtered options / lexeme `&`): exact
        rem_t = None if plan.max_tokens is None else plan.max_tokens - self.tokens_generated
        rem_c = None if plan.max_chars is None else plan.max_chars - self._chars
        step = self.tokens_generated
        if self._closing is None or self._closing_at != step:
            est = len(self._closing) if self._closing is not None else 0
            near = (rem_t is not None and rem_t <= 2 * est + 16) or \
                   (rem_c is not None and rem_c <= 2 * self._closing_chars + 32)
            if self._closing is None or near or step - self._closing_at >= 16:
                path = self._closing_path()
                if path is not None:
                    self._closing = path
                    self._closing_chars = int(sum(int(self._tok.char_len[t]) for t in path))
                self._closing_at = step
        if self._closing is None:
            self._closing_mode = False
            return
        n = len(self._closing)
        slack = _SLACK_TOKENS if n else 1
        self._closing_mode = (rem_t is not None and n + slack >= rem_t) or \
                             (rem_c is not None and not exact_chars and self._closing_chars > 0 and
                              self._closing_chars >= rem_c)

    def _closing_path(self, limit: int = 256) -> list[int] | None:
        m = self._m.clone()
        tok = self._tok
        singles = tok.single_byte_tokens()
        orders = [[singles[b] for b in prio if b in singles] for prio in (CLOSING_PRIORITY, CLOSING_PRIORITY_IN_STRING)]
        is_json = self._c.plan.kind == "json"
        state = json_string_state(bytes(self._text)) if is_json else (False, False)
        w = np.zeros_like(self._words)
        path: list[int] = []
        while len(path) < limit:
            if m.accepting():
                return self._compress(path)
            steps = m.forced_tokens() or []
            if not steps:
                m.fill(w)
                order = orders[1] if state[0] else orders[0]
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

    def _compress(self, path: list[int]) -> list[int]:
        if len(path) < 2:
            return path
        data = b"".join(self._tok.token_bytes[t] for t in path)
        try:
            ids = self._tok.encode(data.decode("utf-8"))
        except UnicodeDecodeError:
            return path
        if len(ids) >= len(path):
            return path
        m = self._m.clone()
        for t in ids:
            if not m.consume(t):
                return path
        return ids if m.accepting() else path
