"""One hole's whole mask: what the model may write next, and when the value ends.

Everything that decides a hole's next token lives here, so the decoding loop
(runtime/decode.py) asks one object once per step instead of assembling the
mask itself:

* the constraint's Guide (guide.py): the shape, stop strings, length limits;
* canonical choices (choice.py): a choice follows its options' own
  tokenizations, never an odd split;
* terminators: EOS, or the first token of the literal text after the hole,
  which ends the value whenever the value may end (so `[n].` ends n at the
  period without asking the model for EOS);
* token healing: a prompt chunk that ends in a bare space holds the space back
  (the runtime decides that from the chunk's tokens), and the hole's first
  token must then start with it (" 42" rather than " " + "42");
* the token budget: `tokens(x) <= N`, else DEFAULT_MAX_TOKENS. A JSON or
  grammar hole carries the default inside its constraint, so its guide closes
  the value validly when the budget runs short instead of cutting it.

`HolePlan` is what does not change while one rendered prompt is decoded (one
per hole, built once per row); `HoleGuide` is one decoding of it (one row, or
one beam). The per-step protocol, with no per-step objects beyond the token
lists fed to the model:

    hole = plan.start()
    kind = hole.next(logits)        # ENDED: hole.ended_by says why
                                    # FEED:  feed hole.block (a forced run, or the space given back)
                                    # SAMPLE: pick a token from hole.masked, then
    ended = hole.take(token)        #   True when that token ended the value, else
    run = hole.take_forced()        #   the run it forces, fed with it in one pass
    hole.ended()                    #   True when the value is over (ended_by says why)

Beam search masks through `hole.mask(logits)` (no healing, no terminators:
beams start on a token boundary and end on EOS). Masks are applied to the
logits where they live; moving masks to the accelerator or batching them
across rows changes this module only.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

from ..errors import LmlangRuntimeError
from . import spec as C
from .choice import CanonicalChoice
from .engine import CompiledConstraint, ConstraintCompileError, compile_constraint
from .guide import Guide, GuideError
from .vocab import TokenizerInfo

DEFAULT_MAX_TOKENS = 256  # a hole with no token budget stops here (reported in the trace)
NEG_INF = float("-inf")

# What HoleGuide.next() says this step is.
ENDED, FEED, SAMPLE = 0, 1, 2


def with_default_budget(c: C.Constraint | None) -> C.Constraint:
    """Every hole gets a token budget, as a constraint: `tokens(x) <= N` when
    the script says so, else DEFAULT_MAX_TOKENS. The guide then owns it: a
    shape is closed validly before the budget runs out, free text ends on a
    character boundary, instead of a value cut wherever the count ran out."""
    parts = C.flatten(c)
    if c is not None and any(isinstance(p, C.MaxTokens) for p in parts):
        return c
    return C.All(parts + (C.MaxTokens(DEFAULT_MAX_TOKENS),))


def seam_to_heal(
    chunk_ids: list[int], decode: Callable[[list[int]], str], eos_ids: Iterable[int], tok: TokenizerInfo
) -> str:
    """The text to hold back from the prompt chunk before a hole: its last
    token, when that is a bare run of spaces (not a newline, not EOS, not the
    whole chunk) that some tokens can carry in front of a value; else ""."""
    tail = decode(chunk_ids[-1:]) if len(chunk_ids) > 1 else ""
    if (
        tail
        and tail.isspace()
        and "\n" not in tail
        and chunk_ids[-1] not in eos_ids
        and tok.heal_pairs(tail) is not None
    ):
        return tail
    return ""


class HolePlan:
    """One hole of one rendered prompt: its compiled constraint, budget,
    terminators, canonical choice paths and seam healing."""

    def __init__(
        self,
        name: str,
        constraint: C.Constraint | None,
        tok: TokenizerInfo,
        eos_ids: Iterable[int],
        heal: str = "",
        next_token: int | None = None,
    ):
        """heal: the seam text held back from the prompt before the hole
        (seam_to_heal; "" for none).
        next_token: the first token of the prompt text after the hole."""
        self.name = name
        self.tok = tok
        self.constraint = with_default_budget(constraint)
        try:
            self.compiled: CompiledConstraint = compile_constraint(self.constraint, tok)
        except ConstraintCompileError as e:
            raise LmlangRuntimeError(f"hole [{name}]: {e.message}", hint=e.hint, code="constraint-backend") from None
        # The one budget: the plan's `tokens(x) <= N` (the default when the
        # script sets none). It counts the tokens the model wrote for the
        # hole, a healed seam's bare space included (guide.spend).
        budget = self.compiled.plan.max_tokens
        assert budget is not None  # with_default_budget gave every hole one
        self.budget = budget
        self.eos_ids = frozenset(eos_ids)
        self.ends = self.eos_ids if next_token is None else self.eos_ids | {next_token}
        self.heal = heal
        # Healed: the options spelled after the held-back seam text; plain: for beams (no healing).
        # Either keeps only the options whose spelling fits the budget.
        options = self.compiled.plan.options  # a choice's options that survive its other parts
        choice = C.Choice(options) if options is not None else None
        self.plain_choice = CanonicalChoice.of(choice, tok, self.eos_ids, budget=self.budget)
        self.choice = (
            self.plain_choice if not heal else CanonicalChoice.of(choice, tok, self.eos_ids, heal, budget=self.budget)
        )
        self._check_a_value_fits()
        self.heal_healed = self.heal_rest = None
        self.heal_split = self.heal_split_first = None
        self.heal_space: list[int] = []
        self._split_rests: dict[int, list[int]] = {}
        if heal:
            pairs = tok.heal_pairs(heal)
            assert pairs is not None  # seam_to_heal holds back only a seam some tokens carry
            healed, rest = pairs
            self.heal_healed, self.heal_rest = torch.from_numpy(healed), torch.from_numpy(rest)
            split, first = tok.heal_splits(heal)
            self.heal_split, self.heal_split_first = torch.from_numpy(split), torch.from_numpy(first)
            self.heal_space = tok.encode(heal)

    def split_rest(self, token: int) -> list[int] | None:
        """For a healed token whose text after the seam is several tokens
        (" multiplication" -> "multi" "plication"): that text's canonical
        tokens, which the guide takes in its place; None for any other token."""
        rest = self._split_rests.get(token)
        if rest is None:
            b, seam = self.tok.token_bytes[token], self.heal.encode()
            if len(b) <= len(seam) or not b.startswith(seam) or b[len(seam) :] in self.tok.token_by_bytes():
                return None
            rest = self._split_rests[token] = self.tok.encode(b[len(seam) :].decode("utf-8"))
        return rest

    def _check_a_value_fits(self) -> None:
        """Before decoding: some value of the constraint fits the budget, or
        the hole fails here, by name, instead of being cut or crashing."""
        c = self.compiled
        if self.plain_choice is not None:
            if not self.plain_choice.paths:
                raise LmlangRuntimeError(
                    f"hole [{self.name}]: no option fits in {self.budget} tokens "
                    f"(the shortest takes {self.plain_choice.shortest} with this model's tokenizer)",
                    hint=f"raise tokens({self.name}) <= {self.budget}, or shorten the options",
                    code="no-value-fits",
                )
            if self.choice is not None and not self.choice.paths:
                self.choice = self.plain_choice  # no healed spelling fits: decode after the seam plainly
            return
        if c.plan.has_shape and c.start_path() is None:
            raise LmlangRuntimeError(
                f"hole [{self.name}]: {c.start_problem}",
                hint=f"raise tokens({self.name}) <= {self.budget}, or relax the constraint "
                "(its shortest value must fit)",
                code="no-value-fits",
            )

    @property
    def backend(self) -> str:
        return self.compiled.backend

    @property
    def compile_seconds(self) -> float:
        return self.compiled.compile_seconds

    def start(self, seam: bool = True) -> "HoleGuide":
        """A fresh decoding. seam=False (beam search): no healing, no
        terminators beyond EOS, the options' plain tokenizations."""
        return HoleGuide(self, seam)


class HoleGuide:
    """One decoding of one hole. Not thread-safe; clone() for beams."""

    def __init__(self, plan: HolePlan, seam: bool = True):
        self.plan = plan
        self.guide: Guide = plan.compiled.start()
        self.gen: list[int] = []  # tokens the model's cache got for this hole, in order
        self.ends = plan.ends if seam else frozenset()
        self._choice = plan.choice if seam else plan.plain_choice
        self.healing = plan.heal if seam else ""  # seam text still owed by the first token
        self.heal_text = self.healing  # what gen's text starts with beyond the value
        self.ended_by = ""  # "" while open; then the guide's reason, "budget", "eos", "next-text", ...
        self.generated = 0  # sampled tokens that are part of the value (trace)
        self.forced = 0  # fast-forwarded tokens (trace)
        self.block: list[int] = []  # FEED: the tokens to feed
        self.masked: torch.Tensor | None = None  # SAMPLE: the logits to pick from
        self._eos_ok = False  # the last mask allowed EOS (so a terminator may end the value)
        self._scratch: torch.Tensor | None = None  # reused across steps: no per-step logits copy

    def clone(self) -> "HoleGuide":
        other = HoleGuide.__new__(HoleGuide)
        other.__dict__.update(self.__dict__)
        other.guide = self.guide.clone()
        other.gen = list(self.gen)
        other._scratch = None  # each beam masks into its own buffer
        return other

    # ------------------------------------------------------------ state
    def value(self) -> str:
        return self.guide.value()

    def text(self) -> str:
        """Everything generated so far (a trimmed stop string included): for streaming."""
        return self.guide.text()

    # ------------------------------------------------------------ one step
    def next(self, logits: torch.Tensor) -> int:
        """What this step is, given the model's next-token logits (1-D):
        ENDED, FEED (self.block) or SAMPLE (self.masked, then take())."""
        if self.ended():
            return ENDED
        if self.healing:
            # The held-back seam text comes first, even before a forced run:
            # fed bare, a forced value would follow the prompt without its
            # space ("Answer:0"). The model picks " 0" or the bare space.
            return self._heal_mask(logits)
        forced = self.take_forced()
        if forced:
            self.block = forced
            return FEED
        masked = self.mask(logits)
        if not any_allowed(masked):
            raise self._error("no token satisfies the constraint here")
        self.masked = masked
        return SAMPLE

    def ended(self) -> bool:
        """Whether the value is over (its guide finished, or the budget spent);
        ended_by then says why."""
        guide, n = self.guide, len(self.gen)
        if not (guide.is_finished() or n >= self.plan.budget):
            return False
        self.ended_by = guide.ended_by or ("budget" if n >= self.plan.budget else "constraint")
        if not guide.complete():  # never returned cut short (the guide's witness prevents it)
            raise self._error("the token budget ran out before the value was complete")
        return True

    def take_forced(self) -> list[int]:
        """Take the run the constraint forces from here (fast-forward), up to
        the first token that ends the value; [] when the model has a choice.
        The decoding loop feeds it in one forward pass, together with the
        sampled token before it when there is one."""
        guide = self.guide
        if guide.is_finished() or len(self.gen) >= self.plan.budget:
            return []
        forced = guide.forced_tokens()
        if not forced:
            return []
        taken = 0
        try:
            for t in forced:
                guide.advance(t)
                taken += 1
                if guide.is_finished():
                    break
        except GuideError as e:
            raise self._error(str(e)) from None
        forced = forced[:taken]
        self.gen.extend(forced)
        self.forced += len(forced)
        return forced

    def fits(self, tok: int) -> bool:
        """Whether the value can still be completed within its budget after
        tok (picked from self.masked). False: set masked[tok] to -inf and pick
        again; some token always fits (the guide's witness)."""
        if self.healing:
            plan = self.plan
            if len(plan.heal_space) == 1 and tok == plan.heal_space[0]:
                return self.guide.fits_spending(1)
            split = plan.split_rest(tok)
            if split is not None:
                return self._split_fits(split)
            assert plan.heal_healed is not None and plan.heal_rest is not None  # healing: set with the seam
            idx = int((plan.heal_healed == tok).nonzero()[0])
            return self.guide.fits(int(plan.heal_rest[idx]))
        if tok in self.ends and self._eos_ok:
            return True  # EOS, or the text after the hole where the value may end
        return self.guide.fits(tok)

    def _error(self, what: str) -> LmlangRuntimeError:
        return LmlangRuntimeError(
            f"hole [{self.plan.name}]: {what}",
            hint=f"generated so far: {self.plan.tok.decode(self.gen)!r}",
            code="constraint-failed",
        )

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits with every token this hole cannot take next at -inf
        (a buffer owned by this guide, valid until its next mask)."""
        masked = self._copy(logits)
        self.guide.apply(masked)
        if self._choice is not None:
            self._choice.restrict(self.gen, masked)
        if self.ends:
            # Where the value may end, the text after the hole may start.
            dst, src = host_view(masked), host_view(logits)
            out = dst if dst is not None else masked
            raw = src if src is not None else logits
            width = out.shape[0]
            eos_ok = any(out[e] > NEG_INF for e in self.plan.eos_ids if e < width)
            if eos_ok:
                for t in self.ends:
                    if out[t] == NEG_INF:
                        out[t] = raw[t]
            self._eos_ok = bool(eos_ok)
        return masked

    def take(self, tok: int) -> bool:
        """Advance by the token picked from self.masked; True when it ended the value."""
        if self.healing:
            return self._take_healed(tok)
        guide = self.guide
        eos = tok in self.plan.eos_ids
        try:
            if eos or (tok in self.ends and self._eos_ok and not _allows(guide, tok)):
                self.ended_by = "eos" if eos else "next-text"
                guide.advance(self.plan.tok.eos_token_id)  # the guide's EOS, whichever end token was picked
                return True
            guide.advance(tok)
        except GuideError as e:
            raise self._error(str(e)) from None
        self.gen.append(tok)
        self.generated += 1
        return False

    # ------------------------------------------------------------ healing
    def _heal_mask(self, logits: torch.Tensor) -> int:
        """The first token after a held-back space: " 42" (healed) or the
        bare space itself, never a token the constraint could not continue."""
        plan = self.plan
        healed, rest, space = plan.heal_healed, plan.heal_rest, plan.heal_space
        assert healed is not None and rest is not None  # healing: set with the seam
        allowed = torch.from_numpy(self.guide.allowed_mask())
        ok = allowed[rest]
        masked = self._scratch_for(logits)
        masked.fill_(NEG_INF)
        masked[healed[ok]] = logits[healed[ok]]
        split, first = plan.heal_split, plan.heal_split_first
        if split is not None and len(split):
            # A token whose text after the seam is several tokens: admitted
            # when the guide allows its first byte; fits() checks the whole text.
            kept = split[allowed[first]]
            masked[kept] = logits[kept]
        if len(space) == 1:
            masked[space[0]] = logits[space[0]]
        if self._choice is not None:
            self._choice.restrict(self.gen, masked)
        if not any_allowed(masked):
            # Nothing healed fits (a choice whose options cannot follow a space
            # token): give the space back and decode plainly.
            self.healing, self.heal_text = "", ""
            self.block = space
            if self._choice is not None:
                self._choice = plan.plain_choice
            return FEED
        self.masked = masked
        return SAMPLE

    def _take_healed(self, tok: int) -> bool:
        plan = self.plan
        self.healing = ""
        self.gen.append(tok)
        if len(plan.heal_space) == 1 and tok == plan.heal_space[0]:
            self.guide.spend(1)  # the bare space: the value starts with the next token
            return False
        split = plan.split_rest(tok)
        if split is not None:
            try:
                _advance_split(self.guide, split)
            except GuideError as e:
                raise self._error(str(e)) from None
            self.generated += 1
            return False
        assert plan.heal_healed is not None and plan.heal_rest is not None  # healing: set with the seam
        idx = int((plan.heal_healed == tok).nonzero()[0])
        try:
            self.guide.advance(int(plan.heal_rest[idx]))
        except GuideError as e:
            raise self._error(str(e)) from None
        self.generated += 1
        return False

    def _split_fits(self, rest: list[int]) -> bool:
        """Whether the guide takes a split healed token's text (on a copy)."""
        guide = self.guide.clone()
        try:
            return _advance_split(guide, rest, check=True)
        except GuideError:
            return False

    # ------------------------------------------------------------ buffers
    def _scratch_for(self, logits: torch.Tensor) -> torch.Tensor:
        s = self._scratch
        if s is None or s.shape != logits.shape or s.dtype != logits.dtype or s.device != logits.device:
            s = self._scratch = torch.empty_like(logits, memory_format=torch.contiguous_format)
        return s

    def _copy(self, logits: torch.Tensor) -> torch.Tensor:
        s = self._scratch_for(logits)
        src, dst = host_view(logits), host_view(s)
        if src is not None and dst is not None:
            np.copyto(dst, src)
        else:
            s.copy_(logits)
        return s


def host_view(t: torch.Tensor) -> np.ndarray | None:
    """A numpy view of a CPU fp32 vector (no copy), else None. The per-token
    work on one row's logits (copy, mask, checks, argmax) runs in numpy there:
    single-threaded, where a torch op on a 49k vector wakes the intra-op
    thread pool every step, which costs milliseconds on a busy machine."""
    if t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() and not t.requires_grad:
        return t.numpy()
    return None


def any_allowed(masked: torch.Tensor) -> bool:
    """Whether some token is above -inf."""
    host = host_view(masked)
    if host is not None:
        return bool(np.isfinite(host).any())
    return bool(torch.isfinite(masked).any())


def _allows(guide: Guide, tok: int) -> bool:
    m = guide.allowed_mask()
    return tok < len(m) and bool(m[tok])


def _advance_split(guide: Guide, rest: list[int], check: bool = False) -> bool:
    """Advance the guide by the tokens of one healed model token's text after
    the seam. The budget counts the model's one token, not the len(rest)
    tokens the guide takes (the credit comes first, so no count runs over on
    the way). check: stop at the first token that would break the value or
    its budget (False)."""
    guide.spend(1 - len(rest))
    for t in rest:
        if guide.is_finished():
            break  # a stop string inside the token's text: the value ends there
        if check and not (_allows(guide, t) and guide.fits(t)):
            return False
        guide.advance(t)
    return True
