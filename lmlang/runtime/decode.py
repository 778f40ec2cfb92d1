"""The decoding loop: one query, one input row, any decoder.

The loop owns the KV cache: it feeds the literal chunk before a hole,
decodes the hole token by token under its Guide's mask (fast-forwarding
whatever the constraint forces, in one forward pass), then feeds the next
chunk into the same cache. A value ends on EOS, when its guide finishes, or
when the model writes the first token of the literal text that follows the
hole (so `[n].` ends n at the period without asking the model for EOS).
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from ..constraints.engine import compile_constraint
from ..errors import LmlangRuntimeError
from .lm import LM, State
from .prompt import RenderedPrompt

DEFAULT_MAX_TOKENS = 256     # a hole with no token budget stops here (reported in the trace)
NEG_INF = float("-inf")


@dataclass
class HoleTrace:
    name: str
    backend: str
    compile_seconds: float
    generated: int = 0
    forced: int = 0
    ended_by: str = ""


@dataclass
class Decoded:
    values: dict                         # hole -> typed value
    texts: dict                          # hole -> raw text
    logprob: float = 0.0
    forward_passes: int = 0
    holes: list = field(default_factory=list)
    distribution: dict | None = None


class Sampler:
    """argmax, or seeded sampling with temperature / top-k / top-p."""

    def __init__(self, greedy: bool, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0, device: str = "cpu"):
        self.greedy = greedy
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.generator = None
        if not greedy:
            self.generator = torch.Generator(device="cpu")
            self.generator.manual_seed(seed)

    def pick(self, masked: torch.Tensor) -> int:
        if self.greedy:
            return int(torch.argmax(masked))
        logits = masked / self.temperature
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k).values[-1]
            logits = torch.where(logits < kth, torch.full_like(logits, NEG_INF), logits)
        probs = torch.softmax(logits, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            cum = torch.cumsum(sorted_p, dim=-1)
            drop = cum - sorted_p > self.top_p
            sorted_p = torch.where(drop, torch.zeros_like(sorted_p), sorted_p)
            probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
        return int(torch.multinomial(probs.cpu(), 1, generator=self.generator))


def typed_value(text: str, constraint) -> object:
    from ..constraints import spec as C

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
        except ValueError as e:
            raise LmlangRuntimeError(f"decoded value {text!r} does not parse: {e}") from None
    return text


class QueryRun:
    """Everything one decoding of one rendered prompt needs."""

    def __init__(self, lm: LM, prompt: RenderedPrompt, constraints: dict):
        self.lm = lm
        self.prompt = prompt
        self.constraints = constraints
        self.compiled = {}
        self.hole_traces = []
        for h in prompt.holes:
            t0 = time.perf_counter()
            cc = compile_constraint(constraints.get(h), lm.tok_info)
            self.compiled[h] = cc
            self.hole_traces.append(HoleTrace(h, cc.backend, time.perf_counter() - t0))
        self.chunk_ids = [lm.encode(c, first=(i == 0)) if c else [] for i, c in enumerate(prompt.chunks)]
        # A choice is decoded along its options' canonical tokenizations only:
        # the backends also accept odd splits ("L" + "ondon"), whose first
        # token can outscore the whole right answer under greedy decoding.
        self.choice_paths = {h: _choice_paths(constraints.get(h), lm) for h in prompt.holes}

    def restrict_choice(self, hole: str, gen: list[int], masked: torch.Tensor) -> None:
        paths = self.choice_paths.get(hole)
        if not paths:
            return
        n = len(gen)
        nxt = {p[n] for p in paths if len(p) > n and p[:n] == gen}
        keep = torch.full_like(masked, NEG_INF)
        idx = torch.tensor(sorted(nxt), dtype=torch.long)
        if len(idx):
            keep[idx] = masked[idx]
        if any(p == gen for p in paths):
            for e in self.lm.eos_ids:
                if e < masked.shape[0]:
                    keep[e] = masked[e]
        masked.copy_(keep)

    def terminators(self, i: int) -> set[int]:
        """Tokens that end hole i: EOS, or the first token of the text after it."""
        ends = set(self.lm.eos_ids)
        nxt = self.chunk_ids[i + 1] if i + 1 < len(self.chunk_ids) else []
        if nxt:
            ends.add(nxt[0])
        return ends

    # -------------------------------------------------------------- one pass
    def decode(self, sampler: Sampler, state: State | None = None) -> Decoded:
        lm = self.lm
        if state is None:
            state = lm.new_state()
            logits = lm.feed(state, self.chunk_ids[0])
        else:
            logits = state.last_logits
        values, texts, total_lp = {}, {}, 0.0
        traces = [HoleTrace(t.name, t.backend, t.compile_seconds) for t in self.hole_traces]
        for i, hole in enumerate(self.prompt.holes):
            logits, text, lp = self.decode_hole(i, state, logits, sampler, traces[i])
            total_lp += lp
            texts[hole] = text
            values[hole] = typed_value(text, self.constraints.get(hole))
        return Decoded(values, texts, total_lp, state.forward_passes, traces)

    def decode_hole(self, i: int, state: State, logits, sampler: Sampler, trace: HoleTrace):
        lm = self.lm
        guide = self.compiled[self.prompt.holes[i]].start()
        ends = self.terminators(i)
        start_len = len(state.ids)
        gen: list[int] = []
        lp_total = 0.0
        budget = DEFAULT_MAX_TOKENS
        ended_by = "budget"
        while len(gen) < budget:
            if guide.is_finished():
                ended_by = guide.ended_by or "constraint"
                break
            forced = guide.forced_tokens()
            if forced:
                for t in forced:
                    guide.advance(t)
                gen.extend(forced)
                trace.forced += len(forced)
                logits = lm.feed(state, forced)
                continue
            masked = logits.clone()
            guide.apply(masked)
            self.restrict_choice(self.prompt.holes[i], gen, masked)
            eos_ok = any(masked[e] > NEG_INF for e in lm.eos_ids if e < masked.shape[0])
            if eos_ok:
                for t in ends:
                    if masked[t] == NEG_INF:
                        masked[t] = logits[t]
            if not torch.isfinite(masked).any():
                raise LmlangRuntimeError(f"hole [{self.prompt.holes[i]}]: no token satisfies the constraint here",
                                         hint=f"generated so far: {lm.decode(gen)!r}")
            tok = sampler.pick(masked)
            lp_total += float(torch.log_softmax(masked, dim=-1)[tok])
            if tok in lm.eos_ids or (tok in ends and eos_ok and guide_disallows(guide, tok)):
                ended_by = "eos" if tok in lm.eos_ids else "next-text"
                eos = next(iter(lm.eos_ids))
                guide.advance(eos if tok not in lm.eos_ids else tok)
                break
            guide.advance(tok)
            gen.append(tok)
            trace.generated += 1
            logits = lm.feed(state, [tok])
        else:
            ended_by = "budget"
        trace.ended_by = ended_by
        text = guide.text()
        value = guide.value()
        # Make the cache hold exactly value + the next chunk: drop tokens past
        # the value (a `stops before` string, text after a stop inside a token).
        nxt = self.chunk_ids[i + 1] if i + 1 < len(self.chunk_ids) else None
        if value != text and nxt is not None:
            keep, prefix = 0, ""
            for k in range(len(gen) + 1):
                piece = lm.decode(gen[:k])
                if len(piece) <= len(value) and value.startswith(piece):
                    keep, prefix = k, piece
                else:
                    break
            lm.crop(state, start_len + keep)
            rest = value[len(prefix):] + self.prompt.chunks[i + 1]
            logits = lm.feed(state, lm.encode(rest))
        elif nxt:
            logits = lm.feed(state, nxt)
        return logits, value, lp_total


def _choice_paths(constraint, lm) -> list[list[int]] | None:
    from ..constraints import spec as C

    parts = C.flatten(constraint)
    choice = next((p for p in parts if isinstance(p, C.Choice)), None)
    if choice is None:
        return None
    return [lm.tok_info.encode(o) for o in choice.options]


def guide_disallows(guide, tok: int) -> bool:
    m = guide.allowed_mask()
    return tok >= len(m) or not bool(m[tok])


# ---------------------------------------------------------------- decoders

def run_decoder(run: QueryRun, decoder: tuple, distribution: tuple | None) -> Decoded:
    name, opts = decoder
    opts = dict(opts)
    if distribution is not None:
        return score_distribution(run, distribution)
    if name == "argmax":
        return run.decode(Sampler(True))
    if name == "sample":
        return run.decode(Sampler(False, opts["temperature"], opts["top_p"], opts["top_k"], opts["seed"]))
    if name in ("best_of", "vote"):
        # One prefill shared by all samples: fork the cache after the first chunk.
        base = run.lm.new_state()
        run.lm.feed(base, run.chunk_ids[0])
        results = []
        for k in range(opts["n"]):
            sampler = Sampler(False, opts["temperature"], opts["top_p"], opts["top_k"], opts["seed"] + k)
            results.append(run.decode(sampler, run.lm.fork(base)))
        passes = sum(r.forward_passes for r in results) + base.forward_passes
        if name == "best_of":
            best = max(results, key=lambda r: r.logprob)
        else:
            last = run.prompt.holes[-1]
            counts = Counter(json.dumps(r.values[last], sort_keys=True) for r in results)
            winner = counts.most_common(1)[0][0]
            best = next(r for r in results if json.dumps(r.values[last], sort_keys=True) == winner)
        best.forward_passes = passes
        return best
    if name == "beam":
        return beam_search(run, opts["width"])
    raise LmlangRuntimeError(f"unknown decoder {name}")


def score_distribution(run: QueryRun, distribution: tuple) -> Decoded:
    """Exact probabilities of whole options: P(option tokens, then the end of
    the value) under the model, normalised over the options."""
    hole, options = distribution
    lm = run.lm
    idx = run.prompt.holes.index(hole)
    prefix = lm.new_state()
    logits = lm.feed(prefix, run.chunk_ids[0])
    earlier = None
    if idx > 0:   # decode the holes before it greedily, then score
        earlier = run.decode(Sampler(True), prefix)   # pragma: no cover - checker puts it last
    end_ids = sorted(run.terminators(idx))
    scores = []
    for opt in options:
        ids = lm.encode(opt)
        st = lm.fork(prefix)
        lp = float(torch.log_softmax(logits, -1)[ids[0]])
        for a, b in zip(ids, ids[1:]):
            step = lm.feed(st, [a])
            lp += float(torch.log_softmax(step, -1)[b])
        step = lm.feed(st, [ids[-1]])
        lps = torch.log_softmax(step, -1)
        lp += float(torch.logsumexp(lps[end_ids], 0))
        scores.append(lp)
    t = torch.tensor(scores)
    probs = torch.softmax(t, 0).tolist()
    dist = {o: p for o, p in zip(options, probs)}
    best = options[int(torch.argmax(t))]
    values = dict(earlier.values) if earlier else {}
    values[hole] = best
    return Decoded(values, {hole: best}, float(max(scores)), prefix.forward_passes + len(options) * 2, [], dist)


def beam_search(run: QueryRun, width: int) -> Decoded:
    """Beam search per hole: the best finished beam of one hole continues
    into the next chunk."""
    lm = run.lm
    state = lm.new_state()
    logits = lm.feed(state, run.chunk_ids[0])
    values, texts, total = {}, {}, 0.0
    passes = 0
    for i, hole in enumerate(run.prompt.holes):
        guide0 = run.compiled[hole].start()
        ends = run.terminators(i)
        beams = [(0.0, state, guide0, logits, [])]
        finished = []
        for _ in range(DEFAULT_MAX_TOKENS):
            cands = []
            for lp, st, g, lg, gen in beams:
                if g.is_finished():
                    finished.append((lp, st, g, gen))
                    continue
                masked = lg.clone()
                g.apply(masked)
                eos_ok = any(masked[e] > NEG_INF for e in lm.eos_ids if e < masked.shape[0])
                logp = torch.log_softmax(masked, -1)
                top = torch.topk(logp, min(width, int(torch.isfinite(logp).sum()))).indices.tolist()
                for t in top:
                    cands.append((lp + float(logp[t]), st, g, t, gen, eos_ok))
            if not cands:
                break
            cands.sort(key=lambda c: -c[0])
            beams = []
            for lp, st, g, t, gen, eos_ok in cands[:width]:
                if t in lm.eos_ids:
                    g2 = g.clone()
                    g2.advance(t)
                    finished.append((lp, st, g2, gen))
                    continue
                st2, g2 = lm.fork(st), g.clone()
                g2.advance(t)
                lg2 = lm.feed(st2, [t])
                passes += 1
                beams.append((lp, st2, g2, lg2, gen + [t]))
            if len(finished) >= width or not beams:
                break
        pool = finished or [(lp, st, g, gen) for lp, st, g, _lg, gen in beams]
        lp, st, g, gen = max(pool, key=lambda b: b[0] / max(len(b[3]), 1))
        total += lp
        value = g.value()
        texts[hole] = value
        values[hole] = typed_value(value, run.constraints.get(hole))
        state = st
        nxt = run.chunk_ids[i + 1] if i + 1 < len(run.chunk_ids) else None
        if nxt and i + 1 < len(run.prompt.holes):
            if value != g.text():
                lm.crop(state, len(state.ids) - len(gen))
                logits = lm.feed(state, lm.encode(value + run.prompt.chunks[i + 1]))
            else:
                logits = lm.feed(state, nxt)
    return Decoded(values, texts, total, passes + state.forward_passes)
