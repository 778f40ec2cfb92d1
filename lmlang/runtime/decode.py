"""The decoding loop: queries x input rows x any decoder, over one Batch.

The loop owns the KV cache. Per row it feeds the literal chunk before a hole,
decodes the hole token by token under the hole's Guide (fast-forwarding, in
one forward pass, whatever the constraint forces), then feeds the next chunk
into the same cache. Rows advance independently inside one batched forward
pass per step. A value ends on EOS, when its guide finishes, or when the
model writes the first token of the literal text that follows the hole (so
`[n].` ends n at the period without asking the model for EOS).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from ..constraints import spec as C
from ..constraints.alternatives import union_value
from ..constraints.hole import FEED, SAMPLE, HoleGuide, HolePlan, any_allowed, host_view, seam_to_heal
from ..errors import LmlangError, LmlangRuntimeError
from ..source import span_of
from .lm import LM, Batch
from .prefix import prefill
from . import samples
from .prompt import RenderedPrompt

NEG_INF = float("-inf")


@dataclass
class HoleTrace:
    name: str
    backend: str
    compile_seconds: float
    generated: int = 0
    forced: int = 0
    ended_by: str = ""
    leak_masked: int = 0  # tokens the leak guard masked (runtime/leak_guard.py); 0 without a guard


@dataclass
class Decoded:
    values: dict  # hole -> typed value
    texts: dict  # hole -> raw text
    logprob: float = 0.0  # of the sampled tokens; 0.0 for argmax (nothing ranks it)
    forward_passes: int = 0
    holes: list = field(default_factory=list)
    distribution: dict | None = None
    token_ids: list = field(
        default_factory=list
    )  # the row's tokens in order: its cache, then the last value's unfed tail
    details: dict = field(default_factory=dict)  # vote's samples/votes, best_of's scores (runtime/samples.py)


class Sampler:
    """argmax, or seeded sampling with temperature / top-k / top-p.

    Sampling happens where the logits are: the generator lives on their
    device, so a GPU run never copies a probability vector to the host; only
    the chosen token id comes back (the guide needs it). The same seed gives
    the same draws on one device; CPU and CUDA generators draw differently."""

    def __init__(
        self, greedy: bool = True, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0
    ):
        self.greedy = greedy
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.seed = seed
        self.generator: torch.Generator | None = None
        if not greedy:
            self.generator = torch.Generator(device="cpu")
            self.generator.manual_seed(seed)

    def _generator(self, device: torch.device) -> torch.Generator:
        assert self.generator is not None  # sampling (not greedy) made one
        if self.generator.device != device:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(self.seed)
        return self.generator

    def pick(self, masked: torch.Tensor) -> int:
        if self.greedy:
            host = host_view(masked)
            return int(host.argmax()) if host is not None else int(torch.argmax(masked))
        logits = masked / self.temperature
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k).values[-1]
            logits = torch.where(logits < kth, torch.full_like(logits, NEG_INF), logits)
        probs = torch.softmax(logits, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            drop = torch.cumsum(sorted_p, dim=-1) - sorted_p > self.top_p
            sorted_p = torch.where(drop, torch.zeros_like(sorted_p), sorted_p)
            probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
        return int(torch.multinomial(probs, 1, generator=self._generator(probs.device)))


def sampler_for(decoder: tuple, k: int = 0, seed: int | None = None) -> Sampler:
    """k: the sample's index (best_of / vote); seed overrides the script's
    seed (`lmlang run --seed`)."""
    name, opts = decoder
    opts = dict(opts)
    if name in ("argmax", "beam"):
        return Sampler(True)
    return Sampler(
        False, opts["temperature"], opts["top_p"], opts["top_k"], (opts["seed"] if seed is None else seed) + k
    )


def typed_value(text: str, constraint) -> object:
    for part in C.flatten(constraint):
        try:
            if isinstance(part, C.IntType):
                return int(text)
            if isinstance(part, C.FloatType):
                return float(text)
            if isinstance(part, C.BoolType):
                return text == "true"
            if isinstance(part, C.JsonSchema):
                return json.loads(text)
            if isinstance(part, C.AnyOf):  # `x is int or x in [...]`: the alternative the text is
                return union_value(text, part)
        except ValueError as e:
            raise LmlangRuntimeError(f"decoded value {text!r} does not parse: {e}") from None
    return text


def positioned(e: LmlangError, query: str, span) -> LmlangError:
    """e, at the query's position (unless it has its own) and naming the query (once)."""
    if not e.span.line and span.line:
        e.span = span
    if query and not getattr(e, "_query_named", False):
        e.message = f"query {query}, {e.message}"
        e.args = (e.message,)
        setattr(e, "_query_named", True)  # a marker, read with getattr above
    return e


class QueryRun:
    """One rendered prompt: its chunks as token ids, and one HolePlan per hole
    (constraints/hole.py), which owns everything about the hole's mask.
    `query` and `loc` (the query's name and "file:line:col") position the
    errors a hole raises while decoding."""

    def __init__(self, lm: LM, prompt: RenderedPrompt, constraints: dict, query: str = "", loc: str = "", guard=None):
        """guard: a LeakGuard for this call (runtime/leak_guard.py) or None."""
        self.lm = lm
        self.guard = guard
        self.prompt = prompt
        self.query, self.span = query, span_of(loc)
        self.chunk_ids = [prompt.chunk_ids(lm, i) for i in range(len(prompt.chunks))]
        if not self.chunk_ids[0]:
            self.chunk_ids[0] = [next(iter(lm.eos_ids))]  # a prompt that opens with a hole starts after EOS
        # Token healing: a chunk that ends in a bare space token would make the
        # model write "42" after " " instead of its natural " 42". Hold the
        # space back; the hole's first token must start with it.
        heal = []
        for i in range(len(prompt.holes)):
            heal.append(seam_to_heal(self.chunk_ids[i], lm.decode, lm.eos_ids, lm.tok_info))
            if heal[-1]:
                self.chunk_ids[i] = self.chunk_ids[i][:-1]
        try:
            self.holes = [
                HolePlan(h, constraints.get(h), lm.tok_info, lm.eos_ids, heal[i], self._next_token(i))
                for i, h in enumerate(prompt.holes)
            ]
        except LmlangError as e:
            raise self.positioned(e) from None

    def positioned(self, e: LmlangError) -> LmlangError:
        return positioned(e, self.query, self.span)

    def row_decoder(self, sampler: "Sampler", on_text=None) -> "RowDecoder":
        return RowDecoder(self, sampler, on_text)

    def _next_token(self, i: int) -> int | None:
        """The first token of the text after hole i (it ends the hole)."""
        nxt = self.chunk_ids[i + 1] if i + 1 < len(self.chunk_ids) else []
        return nxt[0] if nxt else None


class RowDecoder:
    """The per-row state machine: which hole, its guide, what was generated."""

    def __init__(self, run: QueryRun, sampler: Sampler, on_text=None):
        self.run, self.sampler = run, sampler
        self.on_text = on_text  # (hole, text piece) as the value grows: streaming
        self._streamed = 0
        self.hole = -1
        self.values: dict[str, object] = {}
        self.texts: dict[str, str] = {}
        self.logprob = 0.0
        self.traces = [HoleTrace(p.name, p.backend, p.compile_seconds) for p in run.holes]
        self.done = False
        self.unfed: list[int] = []  # the last hole's final tokens, never fed (no logits needed after them)
        self._start_hole()

    def _start_hole(self) -> None:
        self.hole += 1
        if self.hole >= len(self.run.holes):
            self.done = True
            return
        self.current = self.run.holes[self.hole].start()
        self._streamed = 0
        self.leak = self.run.guard.start() if self.run.guard is not None else None

    def step(self, logits: torch.Tensor, batch: Batch, row: int) -> list[int]:
        """Decide this row's next block of tokens to feed ([] when done)."""
        try:
            block = self._step(logits, batch, row)
        except LmlangError as e:
            raise self.run.positioned(e) from None
        if not self.done:
            self._stream()
        return block

    def _stream(self) -> None:
        if self.on_text is not None:
            text = self.current.text()
            if len(text) > self._streamed:
                self.on_text(self.current.plan.name, text[self._streamed :])
                self._streamed = len(text)

    def _step(self, logits: torch.Tensor, batch: Batch, row: int) -> list[int]:
        hole = self.current
        kind = hole.next(logits)
        if kind == FEED:
            if self.leak is not None:
                for t in hole.block:
                    self.leak.take(t)
            return hole.block
        if kind != SAMPLE:
            return self._finish_hole(batch, row)
        tok = self._pick(hole)
        if self.leak is not None:
            self.leak.take(tok)
        if hole.take(tok):
            return self._finish_hole(batch, row)
        # One forward pass per sampled token, as generate pays: the run the
        # constraint forces after it rides in the same pass, and a value that
        # ends here hands its unfed tokens to the next chunk's feed (or, for
        # the last hole, never feeds them: nothing reads their logits).
        block = [tok] + hole.take_forced()
        if self.leak is not None:
            for t in block[1:]:
                self.leak.take(t)
        if hole.ended():
            return self._finish_hole(batch, row, unfed=len(block))
        return block

    def _pick(self, hole: HoleGuide) -> int:
        masked = hole.masked
        assert masked is not None  # SAMPLE: hole.next set it
        if self.leak is not None:
            self._mask_leaks(masked)
        tok = self.sampler.pick(masked)
        while not hole.fits(tok):
            # The value could not be completed within its budget after
            # tok: pick again without it (the guide's witness always fits).
            masked[tok] = NEG_INF
            if not any_allowed(masked):
                raise hole._error("no token leaves room to complete the value within its budget")
            tok = self.sampler.pick(masked)
        if not self.sampler.greedy:  # best_of ranks samples by it; argmax runs (like generate) skip the softmax
            self.logprob += float(torch.log_softmax(masked, dim=-1)[tok])
        return tok

    def _mask_leaks(self, masked: torch.Tensor) -> None:
        """The leak guard's mask over the hole's (runtime/leak_guard.py): the
        tokens that would copy one system-prompt n-gram too many, unless that
        leaves no token (then the constraint wins)."""
        assert self.leak is not None
        banned = self.leak.banned()
        if not banned:
            return
        ids = torch.tensor(banned, device=masked.device)
        kept = masked[ids].clone()
        masked[ids] = NEG_INF
        if not any_allowed(masked):
            masked[ids] = kept
            self.leak.overridden += 1
            return
        self.leak.masked += int(torch.isfinite(kept).sum())

    def _finish_hole(self, batch: Batch, row: int, unfed: int = 0) -> list[int]:
        """Close the current hole; the tokens to feed next. unfed: how many
        of the hole's last tokens were decided but not fed yet."""
        self._stream()
        run, lm, hole = self.run, self.run.lm, self.current
        trace = self.traces[self.hole]
        trace.generated, trace.forced, trace.ended_by = hole.generated, hole.forced, hole.ended_by
        trace.leak_masked = self.leak.masked if self.leak is not None else 0
        name = hole.plan.name
        value = hole.value()
        self.texts[name] = value
        self.values[name] = typed_value(value, hole.plan.constraint)
        i = self.hole
        last = i + 1 >= len(run.holes)
        gen = hole.gen
        fed = len(gen) - unfed
        feed: list[int] = []
        if last:
            self.unfed = gen[fed:]
        else:
            # The cache must hold the canonical tokens of value + next chunk:
            # forget generated tokens past the value (a `stops before`
            # string, text after a stop) or across a seam that tokenizes
            # differently as one text. Unfed tokens that agree with the
            # canonical ones are fed with the chunk; the others never are.
            target = hole.heal_text + value
            canon = run.prompt.chunk_ids(lm, i + 1, before=target)
            keep = 0
            while keep < len(gen) and keep < len(canon) and gen[keep] == canon[keep]:
                keep += 1
            keep = min(keep, fed)
            batch.drop_last(row, fed - keep)
            feed = canon[keep:]
            if run.holes[i + 1].heal and feed:
                feed = feed[:-1]  # the next hole heals its own seam

        self._start_hole()
        if not self.done and not feed:
            raise LmlangRuntimeError(
                "two holes touch with no text between them",
                hint="put literal text between holes so the first one can end",
            )
        return feed

    def result(self, passes: int) -> Decoded:
        return Decoded(dict(self.values), dict(self.texts), self.logprob, passes, self.traces)


def decode_rows(
    lm: LM, runs: list[QueryRun], samplers: list[Sampler], batch: Batch | None = None, on_token=None
) -> list[Decoded]:
    """Decode every row to the end of its last hole, batched.
    on_token(row, hole, text) streams each value's text as it grows."""
    if batch is None:
        batch = prefill(lm, [r.chunk_ids[0] for r in runs])
    rows = [
        run.row_decoder(s, (lambda h, t, r=r: on_token(r, h, t)) if on_token else None)
        for r, (run, s) in enumerate(zip(runs, samplers))
    ]
    while True:
        blocks = [[] if row.done else row.step(batch.logits[r], batch, r) for r, row in enumerate(rows)]
        if all(row.done for row in rows) and not any(blocks):
            break
        if any(blocks):
            batch.feed(blocks)
    out = [row.result(batch.forward_passes) for row in rows]
    for r, d in enumerate(out):
        d.token_ids = list(batch.ids[r]) + rows[r].unfed
    return out


# ---------------------------------------------------------------- decoders


def run_decoder(
    lm: LM, runs: list[QueryRun], decoder: tuple, distribution: tuple | None, seed: int | None = None, on_token=None
) -> list[Decoded]:
    name, opts = decoder
    opts = dict(opts)
    if distribution is not None:
        return [score_distribution(run, distribution) for run in runs]
    if name == "argmax" or (name == "sample" and samples.sample_count(decoder) == 1):
        return decode_rows(lm, runs, [sampler_for(decoder, seed=seed) for _ in runs], on_token=on_token)
    if name in ("best_of", "vote", "sample"):
        return [_draw_samples(lm, run, decoder, seed) for run in runs]
    if name == "beam":
        return [beam_search(run, opts["width"]) for run in runs]
    raise LmlangRuntimeError(f"unknown decoder {name}")


def _draw_samples(lm: LM, run: QueryRun, decoder: tuple, seed: int | None) -> Decoded:
    """n samples of one row (seeds seed+k), as one batch; then sample(n: k)
    lists every hole's values, best_of and vote keep one sample and say why
    (runtime/samples.py)."""
    name, opts = decoder
    n = dict(opts)["n"]
    results = decode_rows(lm, [run] * n, [sampler_for(decoder, k, seed) for k in range(n)])
    if name == "sample":
        holes = run.prompt.holes
        merged = Decoded(
            samples.as_lists([r.values for r in results], holes),
            samples.as_lists([r.texts for r in results], holes),
            sum(r.logprob for r in results),
            results[0].forward_passes,
            [h for r in results for h in r.holes],
        )
        merged.token_ids = results[0].token_ids
        return merged
    if name == "best_of":
        k, details = samples.best_of([r.logprob for r in results])
    else:
        k, details = samples.vote([r.values for r in results], run.prompt.holes[-1])
    best = results[k]
    best.details = details
    return best


def score_distribution(run: QueryRun, distribution: tuple) -> Decoded:
    """Exact probabilities of whole options: P(option's tokens, then the end
    of the value) under the model, normalised over the options. The holes
    before it are decoded greedily first."""
    hole, options = distribution
    lm = run.lm
    idx = run.prompt.holes.index(hole)
    batch = prefill(lm, [run.chunk_ids[0]])
    values, texts = {}, {}
    if idx > 0:
        raise LmlangRuntimeError("distribution must be over the last hole")  # the checker enforces it
    end_ids = sorted(run.holes[idx].ends)
    prefix_logp = torch.log_softmax(batch.logits[0], -1)
    # With a held-back seam space the options are scored as " option" (their
    # natural tokenization after the prompt text).
    opt_ids = [lm.tok_info.encode(run.holes[idx].heal + o) for o in options]
    batch.select([0] * len(options))
    block = batch.feed(opt_ids, all_logits=True)
    width = block.shape[1]
    scores = []
    for r, ids in enumerate(opt_ids):
        lp = float(prefix_logp[ids[0]])
        start = width - len(ids)
        logps = torch.log_softmax(block[r, start:], -1)
        for j in range(1, len(ids)):
            lp += float(logps[j - 1, ids[j]])
        lp += float(torch.logsumexp(logps[-1, end_ids], 0))
        scores.append(lp)
    t = torch.tensor(scores)
    probs = torch.softmax(t, 0).tolist()
    best = options[int(torch.argmax(t))]
    values[hole], texts[hole] = best, best
    return Decoded(values, texts, float(max(scores)), batch.forward_passes, [], dict(zip(options, probs)))


def _beam_candidates(h: HoleGuide, logp: torch.Tensor, lp: float, row: int, width: int) -> list:
    """A beam's `width` best next tokens that leave room to complete the
    value, each with its own copy of the hole guide (a few more are looked at
    when some do not fit; the guide's witness always does)."""
    out: list[tuple[float, int, int, HoleGuide]] = []
    finite = int(torch.isfinite(logp).sum())
    for t in torch.topk(logp, min(finite, width + 16)).indices.tolist():
        if len(out) >= width:
            break
        c = h.clone()
        if c.fits(t):
            out.append((lp + float(logp[t]), row, t, c))
    return out


def beam_search(run: QueryRun, width: int) -> Decoded:
    """Beam search per hole, beams as batch rows. The best finished beam
    (length-normalised log-probability) of a hole continues: the cache is
    re-anchored from the hole's start on value + next chunk."""
    lm = run.lm
    batch = prefill(lm, [run.chunk_ids[0]])
    values, texts, total = {}, {}, 0.0
    traces = [HoleTrace(p.name, p.backend, p.compile_seconds) for p in run.holes]
    passes = 0
    for i, plan in enumerate(run.holes):
        if plan.heal:
            batch.feed([lm.encode(plan.heal)])  # beams start on a token boundary: give the seam space back
        at_start = batch.fork()
        beams = [(0.0, plan.start(seam=False))]  # (logprob, hole guide), one per batch row
        finished: list[tuple[float, HoleGuide]] = []
        for _ in range(plan.budget):
            cands = []
            for r, (lp, h) in enumerate(beams):
                logp = torch.log_softmax(h.mask(batch.logits[r]), -1)
                cands += _beam_candidates(h, logp, lp, r, width)
            cands.sort(key=lambda c: -c[0])
            keep: list[tuple[float, HoleGuide, int]] = []
            for lp, r, t, h in cands:
                if len(keep) + len(finished) >= width * 2 or len(keep) >= width:
                    break
                if h.take(t) or h.guide.is_finished():
                    finished.append((lp, h))
                else:
                    keep.append((lp, h, r))
            best_open = max((b[0] for b in keep), default=NEG_INF)
            best_done = max((b[0] for b in finished), default=NEG_INF)
            # Log-probabilities only fall: once a finished beam beats every open one, stop.
            if not keep or len(finished) >= width or best_done >= best_open:
                break
            batch.select([r for *_, r in keep])
            beams = [(lp, h) for lp, h, _ in keep]
            batch.feed([[h.gen[-1]] for _, h in beams])
        pool = finished or beams
        lp, h = max(pool, key=lambda b: b[0] / max(len(b[1].gen), 1))
        passes += batch.forward_passes
        total += lp
        value = h.value()
        texts[plan.name] = value
        values[plan.name] = typed_value(value, plan.constraint)
        traces[i].generated = len(h.gen)
        traces[i].ended_by = h.guide.ended_by or "beam"
        if i + 1 < len(run.holes):
            batch = at_start
            nxt = run.prompt.chunk_ids(lm, i + 1, before=value)
            if run.holes[i + 1].heal:
                nxt = nxt[:-1]
            batch.feed([nxt])
    return Decoded(values, texts, total, passes, traces)  # the last hole's passes are counted in the loop
