r"""lmlang's constraint engine: constraint -> plan -> backend -> token masks.

Public API (what the runtime calls)
-----------------------------------

    TokenizerInfo.from_hf(hf_tokenizer) -> TokenizerInfo          # vocab.py
        .hash: str  .vocab_size: int  .eos_token_id: int  .token_bytes: list[bytes]
        .encode(text) -> list[int]
    compile_constraint(c: Constraint | None, tok: TokenizerInfo, backend: str | None = None)
        -> CompiledConstraint                                      # cached in memory + on disk
    CompiledConstraint
        .backend: str ("none" for free text)  .compile_seconds: float  .from_cache: str ("", "memory", "disk")
        .plan: Plan  .start() -> Guide
    Guide                                                          # guide.py; one decoding of one hole
        .apply(logits: torch.Tensor) -> None    1-D, len >= vocab_size, in place; EOS allowed iff the value may end
        .allowed_mask() -> np.ndarray[bool]     the same decision without torch
        .advance(token_id: int) -> None         EOS ends the value; a disallowed token raises ValueError
        .is_finished() -> bool                  EOS taken, stop seen, budget spent, or only EOS could follow
        .forced_tokens() -> list[int]           unique continuation (canonical tokenization) or []
        .value() -> str                         stop trimming applied;  .text() everything generated
        .clone() -> Guide                       for beams / best_of
        .tokens_generated: int  .ended_by: str | None  .stop_matched: str | None  .truncated: bool
    allowed_tokens_batch(guides, logits_2d) -> None                # apply row i of guides[i]
    HolePlan(name, c, tok, eos_ids, heal, next_token).start() -> HoleGuide     # hole.py
        what the decoding loop asks once per step: the guide plus canonical choices,
        terminators, seam healing and the token budget (see hole.py)

Backends and why (measured on SmolLM2's 49,152-token byte-level BPE, 2 CPU cores;
bench/maskbench.py and the numbers in the helper's report):

    kind     chain                                     reason
    regex    llguidance -> xgrammar -> outlines_core   llguidance compiles a choice/int/regex in ~1-5 ms
                                                       lazily; outlines_core's eager index costs
                                                       10 ms-5 s per regex (disk-cached) for masks no
                                                       faster here, and 0.2.14 drops transitions from
                                                       accepting states (`3(\.1)?` refuses "." after
                                                       "3"), so it is the last resort
    json     llguidance -> xgrammar -> outlines_core   llguidance passes the most MaskBench schemas;
                                                       fallbacks only for schemas whose keywords
                                                       they enforce (never silently ignore one)
    lark     llguidance -> xgrammar
    free     no backend: special tokens masked, plus Stop / MaxChars masks when present

Caching: compile results are keyed by (tokenizer hash, plan, backend) in memory
and, for backends whose artifacts are expensive (outlines_core indexes, xgrammar
compiled grammars), on disk under cache_dir("constraints"). The prepared
vocabulary is on disk too (vocab.py), so a new process pays: hashing the
tokenizer, one read of its data file, the backend's tokenizer setup, then a ms compile.

Token healing: a Guide starts at a token boundary. The runtime should end the
prompt on a boundary before a hole (the prompt text before a hole is tokenized
on its own), which every backend here assumes.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .. import cachefile
from ..errors import LmlangRuntimeError
from .backends import CHAINS, BackendCannot, get_backend
from .guide import Guide
from .lower import Plan, lower, with_stops_folded
from .spec import Constraint
from .vocab import TokenizerInfo

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "TokenizerInfo",
    "CompiledConstraint",
    "Guide",
    "compile_constraint",
    "allowed_tokens_batch",
    "ConstraintCompileError",
    "clear_memory_cache",
]

_CACHE_FORMAT = "2"  # 2: formats lowered, xgrammar gate refuses pattern with length bounds


class ConstraintCompileError(LmlangRuntimeError):
    """No backend could compile a constraint (each backend's reason is in the message)."""


class CompiledConstraint:
    def __init__(
        self, plan: Plan, tok: TokenizerInfo, backend: str, artifact: Any, compile_seconds: float, from_cache: str = ""
    ):
        self.plan = plan
        self.tok = tok
        self.backend = backend
        self.artifact = artifact
        self.compile_seconds = compile_seconds
        self.from_cache = from_cache
        self.stop_bytes: tuple[tuple[bytes, bool], ...] = tuple(
            (s.text.encode("utf-8"), s.include) for s in plan.stops if s.text
        )
        self.unmasked = plan.kind == "free" and not plan.stops
        self._free_base: np.ndarray | None = None
        self._special_index_t = None
        self._crossing: dict[tuple[bytes, int], np.ndarray] = {}
        self._lazy: dict[str, Any] = {}  # computed on first use, shared by every copy from the memory cache

    def start(self) -> Guide:
        matcher = None if self.backend == "none" else get_backend(self.backend).matcher(self.artifact, self.tok)
        return Guide(self, matcher)

    # helpers the Guide uses -------------------------------------------------
    @property
    def free_base(self) -> np.ndarray:
        """Free text: every non-special token, and EOS."""
        if self._free_base is None:
            base = np.ones(self.tok.vocab_size, dtype=bool)
            base[list(self.tok.special_ids)] = False
            base[self.tok.eos_token_id] = True
            self._free_base = base
        return self._free_base

    @property
    def special_index_t(self):
        """Free text between characters: the tokens never allowed (special
        tokens, and those that start with a stray UTF-8 continuation byte)."""
        if self._special_index_t is None:
            import torch

            ids = [i for i in self.tok.special_ids if i != self.tok.eos_token_id]
            ids += [int(i) for i in self.utf8_table().broken_start]
            self._special_index_t = torch.tensor(sorted(set(ids)), dtype=torch.long)
        return self._special_index_t

    def start_path(self) -> list[int] | None:
        """The witness a bounded shape starts from (guide.py): a greedy
        completion of the whole value within the plan's limits; None when the
        walk finds none (`start_problem` says why). Computed once."""
        if "start" not in self._lazy:
            self._lazy["start"] = self._find_start_path()
        return self._lazy["start"][0]

    @property
    def start_problem(self) -> str:
        self.start_path()
        return self._lazy["start"][1]

    def _find_start_path(self) -> tuple[list[int] | None, str]:
        from .guide import backend_reason, closing_path

        m = get_backend(self.backend).matcher(self.artifact, self.tok)
        plan = self.plan
        path = closing_path(self, m, b"", plan.max_tokens)
        if path is None:
            reason = backend_reason(m)
            if reason:
                return None, f"the constraint engine gave up ({reason})"
            what = "" if plan.max_tokens is None else f" within {plan.max_tokens} tokens"
            return None, f"no value of this constraint was found{what}"
        if plan.max_tokens is not None and len(path) > plan.max_tokens:
            return None, (f"its shortest value found needs {len(path)} tokens, over the budget of {plan.max_tokens}")
        chars = int(sum(int(self.tok.char_len[t]) for t in path))
        exact = plan.kind == "lark" and plan.source.endswith("&len")
        if plan.max_chars is not None and not exact and chars > plan.max_chars:
            return None, f"its shortest value found has {chars} characters, over len(x) <= {plan.max_chars}"
        return path, ""

    def utf8_table(self):
        from .utf8 import table_for

        return table_for(self.tok)

    def stop_crossing(self, stop: bytes, k: int) -> np.ndarray:
        """Tokens that would complete `stop` before their own end, when the text ends with stop[:k]."""
        key = (stop, k)
        arr = self._crossing.get(key)
        if arr is None:
            arr = self._crossing[key] = self.tok.stop_crossing(stop, k)
        return arr

    def forced_choice_bytes(self, text: bytes) -> bytes:
        """For a Choice: the common continuation of every option consistent with the text so far."""
        if self.plan.options is None:
            return b""
        rest = [o.encode("utf-8")[len(text) :] for o in self.plan.options if o.encode("utf-8").startswith(text)]
        if not rest or any(not r for r in rest):
            return b""
        return os.path.commonprefix(rest)  # type: ignore[return-value]  # typeshed: bytes in, bytes out ('' only for [])

    def __repr__(self) -> str:
        return f"CompiledConstraint(kind={self.plan.kind}, backend={self.backend}, {self.compile_seconds * 1e3:.1f} ms)"


_MEMORY: dict[str, CompiledConstraint] = {}


def clear_memory_cache() -> None:
    _MEMORY.clear()


def _key(tok: TokenizerInfo, plan: Plan, backend: str | None) -> str:
    h = hashlib.sha256(f"{_CACHE_FORMAT}|{tok.hash}|{backend}|".encode() + plan.key().encode())
    return h.hexdigest()[:32]


def compile_constraint(c: Constraint | None, tok: TokenizerInfo, backend: str | None = None) -> CompiledConstraint:
    """Compile a constraint for one tokenizer. `backend` forces one backend (no fallback)."""
    t0 = time.perf_counter()
    plan = with_stops_folded(lower(c))
    key = _key(tok, plan, backend)
    hit = _MEMORY.get(key)
    if hit is not None:
        out = CompiledConstraint(hit.plan, hit.tok, hit.backend, hit.artifact, time.perf_counter() - t0, "memory")
        out._free_base, out._crossing, out._lazy = hit._free_base, hit._crossing, hit._lazy
        return out
    if plan.kind == "free":
        out = CompiledConstraint(plan, tok, "none", None, time.perf_counter() - t0)
        _MEMORY[key] = out
        return out
    chain = (backend,) if backend else CHAINS[plan.kind]
    from ..home import cache_dir

    disk = cache_dir("constraints") / f"cc-{key}.bin"
    raw = cachefile.read(disk, "compiled-constraint")  # hashed data, never a pickle: a bad entry is a miss
    if raw is not None:
        try:
            head, _, body = raw.partition(b"\n")
            b = get_backend(head.decode())
            artifact = b.load(body, tok)
            out = CompiledConstraint(plan, tok, b.name, artifact, time.perf_counter() - t0, "disk")
            _MEMORY[key] = out
            return out
        except Exception:
            pass
    reasons = []
    for name in chain:
        b = get_backend(name)
        try:
            artifact = b.compile(plan, tok)
        except BackendCannot as e:
            reasons.append(f"{name}: {e}")
            continue
        out = CompiledConstraint(plan, tok, name, artifact, time.perf_counter() - t0)
        data = b.dump(artifact)
        if data is not None:
            cachefile.write(disk, "compiled-constraint", name.encode() + b"\n" + data)
        _MEMORY[key] = out
        return out
    raise ConstraintCompileError(
        "no constraint backend can enforce this constraint: " + "; ".join(reasons),
        hint="simplify the schema/grammar, or check it with `lmlang check`",
    )


def allowed_tokens_batch(guides: Sequence[Guide | None], logits: "torch.Tensor") -> None:
    """Mask a [B, V'] logits tensor in place, row i by guides[i] (None rows are left alone)."""
    for i, g in enumerate(guides):
        if g is not None:
            g.apply(logits[i])
