"""Decoding a grown prompt (issue 15): one row, one growing prompt, one KV
cache.

A `GrownRun` stands where a `QueryRun` stands (runtime/decode.py): it has
the first chunk's token ids (prefilled as usual) and hands `decode_rows` a
row decoder. The row decoder is the usual one (fast-forward, healing,
budgets: constraints/hole.py) except at the end of a hole: instead of a
fixed next chunk it asks the prompt's walk (runtime/prompt_flow.Growth) for
the text up to the next hole, which may depend on the value just decoded.
That text is appended to the same cache, so the prefix is never encoded
again: each iteration of a loop costs only its own new tokens.
"""

from __future__ import annotations

from ..constraints.hole import HolePlan, seam_to_heal
from ..errors import LmlangError, LmlangRuntimeError
from ..source import span_of
from .decode import HoleTrace, RowDecoder, positioned, typed_value
from .prompt import encode_text
from .prompt_flow import Growth, join


class GrownRun:
    """A grown prompt for one row: its walk, the first chunk's ids, and its
    hole plans, compiled once per (hole, seam, next token)."""

    def __init__(self, lm, growth: Growth, constraints: dict, query: str = "", loc: str = ""):
        self.lm = lm
        self.growth = growth
        self.prompt = growth  # what traces display
        self.constraints = constraints
        self.query, self.span = query, span_of(loc)
        self._plans: dict = {}
        try:
            pieces, hole, after = growth.advance()
            text, spans = join(pieces)
            ids = encode_text(lm.tokenizer, text, spans, first=True)
            if not ids:
                ids = [next(iter(lm.eos_ids))]  # a prompt that opens with a hole starts after EOS
            heal = seam_to_heal(ids, lm.decode, lm.eos_ids, lm.tok_info) if hole else ""
            if heal:
                ids = ids[:-1]
            self.chunk_ids = [ids]
            self.first = self.plan(hole, heal, after) if hole else None
        except LmlangError as e:
            raise self.positioned(e) from None

    def positioned(self, e: LmlangError) -> LmlangError:
        return positioned(e, self.query, self.span)

    def plan(self, name: str, heal: str, after: str) -> HolePlan:
        nxt = encode_text(self.lm.tokenizer, after) if after else []
        key = (name, heal, nxt[0] if nxt else None)
        if key not in self._plans:
            self._plans[key] = HolePlan(
                name, self.constraints.get(name), self.lm.tok_info, self.lm.eos_ids, heal, key[2]
            )
        return self._plans[key]

    def row_decoder(self, sampler, on_text=None) -> "GrownRowDecoder":
        return GrownRowDecoder(self, sampler, on_text)


class GrownRowDecoder(RowDecoder):
    """RowDecoder over a growing prompt: the next hole and the text before it
    come from the walk once the current value is known."""

    def __init__(self, run: GrownRun, sampler, on_text=None):
        self.run, self.sampler = run, sampler  # type: ignore[assignment]  # positioned() is all RowDecoder reads of it
        self.grown = run
        self.on_text = on_text
        self._streamed = 0
        self.hole = -1
        self.values: dict = {}
        self.texts: dict = {}
        self.logprob = 0.0
        self.traces: list[HoleTrace] = []
        self.done = False
        self.leak = None  # guard leak is refused on grown prompts at check time
        self.unfed: list[int] = []  # the last value's tokens decided but never fed
        self._begin(run.first)

    def _begin(self, plan: HolePlan | None) -> None:
        if plan is None:
            self.done = True
            return
        self.hole += 1
        self.current = plan.start()
        self.traces.append(HoleTrace(plan.name, plan.backend, plan.compile_seconds))
        self._streamed = 0

    def _finish_hole(self, batch, row: int, unfed: int = 0) -> list[int]:
        """Close the current hole; the next text's tokens to feed. unfed: how
        many of the hole's last tokens were decided but not fed yet (the
        cache holds gen[:-unfed]), as in RowDecoder._finish_hole."""
        self._stream()
        run, lm, hole = self.grown, self.grown.lm, self.current
        trace = self.traces[-1]
        trace.generated, trace.forced, trace.ended_by = hole.generated, hole.forced, hole.ended_by
        name = hole.plan.name
        value = hole.value()
        growth = run.growth
        growth.record(name, value, typed_value(value, hole.plan.constraint))
        pieces, nxt, after = growth.advance(growth.env[name])
        gen = hole.gen
        fed = len(gen) - unfed
        if nxt is None:
            self.unfed = gen[fed:]
            self.done = True
            return []
        # The cache must hold the canonical tokens of value + the text that
        # follows: forget generated tokens past the value or across a seam
        # that tokenizes differently as one text (as RowDecoder does).
        target = hole.heal_text + value
        text, spans = join(pieces, len(target))
        canon = encode_text(lm.tokenizer, target + text, ((0, len(target)), *spans) if target else spans)
        keep = 0
        while keep < len(gen) and keep < len(canon) and gen[keep] == canon[keep]:
            keep += 1
        keep = min(keep, fed)
        batch.drop_last(row, fed - keep)
        feed = canon[keep:]
        heal = seam_to_heal(canon, lm.decode, lm.eos_ids, lm.tok_info) if len(feed) > 1 else ""
        if heal:
            feed = feed[:-1]  # the next hole heals its own seam
        self._begin(run.plan(nxt, heal, after))
        if not feed:
            raise LmlangRuntimeError(
                "two holes touch with no text between them",
                hint="put literal text between holes so the first one can end",
            )
        return feed

    def result(self, passes: int):
        from .decode import Decoded

        g = self.grown.growth
        return Decoded(dict(g.values), dict(g.texts), self.logprob, passes, self.traces)
