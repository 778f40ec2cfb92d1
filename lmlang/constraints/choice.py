"""Canonical decoding of a choice hole.

The backends accept every tokenization of an option ("L" + "ondon" as well
as "London"). Under greedy decoding an odd split's first token can outscore
the whole right answer, and the model never saw such splits in training, so
a choice is decoded along its options' canonical tokenizations only: after
the tokens generated so far, the next token must continue one of those
token paths, and EOS is allowed once a path is complete.
"""

from __future__ import annotations

from typing import Iterable

from .spec import Choice, Constraint, flatten

NEG_INF = float("-inf")


class CanonicalChoice:
    def __init__(self, paths: list[list[int]], eos_ids: Iterable[int], shortest: int = 0):
        self.paths = paths
        self.eos_ids = sorted(set(eos_ids))
        self.shortest = shortest  # tokens of the shortest option, kept or not

    @classmethod
    def of(
        cls,
        constraint: Constraint | None,
        tok_info,
        eos_ids: Iterable[int],
        prefix: str = "",
        budget: int | None = None,
    ) -> "CanonicalChoice | None":
        """For a hole whose constraint includes a choice (None otherwise).
        `prefix` is text held back by token healing, which every option's
        first token must then carry. With a token `budget`, only the options
        whose spelling fits it are kept (`paths` may then be empty)."""
        choice = next((p for p in flatten(constraint) if isinstance(p, Choice)), None)
        if choice is None:
            return None
        paths = [tok_info.encode(prefix + o) for o in choice.options]
        shortest = min((len(p) for p in paths), default=0)
        if budget is not None:
            paths = [p for p in paths if len(p) <= budget]
        return cls(paths, eos_ids, shortest)

    def allowed(self, generated: list[int]) -> tuple[list[int], bool]:
        """(next tokens that continue a path, whether `generated` is a whole option)."""
        n = len(generated)
        nxt = sorted({p[n] for p in self.paths if len(p) > n and p[:n] == generated})
        return nxt, any(p == generated for p in self.paths)

    def restrict(self, generated: list[int], scores) -> None:
        """Set every score (a 1-D torch tensor, changed in place) that leaves
        the canonical paths to -inf."""
        import torch

        nxt, complete = self.allowed(generated)
        if complete:
            nxt += [e for e in self.eos_ids if e < scores.shape[0]]
        if not nxt:
            scores.fill_(NEG_INF)
            return
        idx = torch.tensor(nxt, dtype=torch.long)
        kept = scores[idx]  # a copy: indexing by a tensor gathers
        scores.fill_(NEG_INF)
        scores[idx] = kept
