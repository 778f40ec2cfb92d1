"""Prefill with KV prefix reuse.

Rows of one batch that share a prefix (the system prompt, a few-shot block,
the chat template's header) compute it once and fan out; rows that go on
alike past it (several calls over one row's text) share that part too, one
padded forward per level (_fan_out). Across queries, a
small LRU of prefix caches per model (the LM's `prefix_cache` field) lets the
next query skip whatever it shares with an earlier one (the same system
prompt, row after row).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - lm.py imports this module
    from .lm import LM, Batch

MIN_REUSE = 8  # shorter shared prefixes are not worth a cache copy
MAX_ENTRIES = 8  # per model


def _common_prefix(seqs: list[list[int]]) -> list[int]:
    first = seqs[0]
    return first[: min((_match(tuple(first), s) for s in seqs[1:]), default=len(first))]


def _match(a: tuple, b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixCache:
    """Forked batch states keyed by the token prefix they hold, most recent last."""

    def __init__(self):
        self.entries: OrderedDict[tuple, Batch] = OrderedDict()
        self.hits = 0
        self.tokens_saved = 0

    def lookup(self, ids: list[int]) -> tuple[Batch | None, int]:
        """A private copy of the best cached prefix state and how many of
        `ids` it covers (always leaves at least one token to feed unless the
        entry ends exactly at the end of `ids`)."""
        best, best_n = None, 0
        for key, batch in self.entries.items():
            n = _match(key, ids)
            if n > best_n:
                best, best_n = key, n
        if best is None or best_n < MIN_REUSE:
            return None, 0
        self.entries.move_to_end(best)
        batch = self.entries[best].fork()
        if best_n == len(best) and best_n == len(ids):
            return batch, best_n
        keep = min(best_n, len(ids) - 1)
        batch.crop(keep)
        return batch, keep

    def store(self, ids: list[int], batch: Batch) -> None:
        key = tuple(ids)
        if len(key) < MIN_REUSE or key in self.entries:
            return
        # A longer entry makes its own prefixes redundant.
        for k in [k for k in self.entries if len(k) < len(key) and key[: len(k)] == k]:
            del self.entries[k]
        self.entries[key] = batch.fork()
        while len(self.entries) > MAX_ENTRIES:
            self.entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry (the counters stay)."""
        self.entries.clear()


def prefill(lm: LM, first_chunks: list[list[int]], reuse: bool | None = None) -> Batch:
    """A batch with row r holding first_chunks[r], logits ready.

    reuse defaults to the model's `prefix_reuse` field (True), which
    bench/prefix.py turns off to measure what reuse buys."""
    if reuse is None:
        reuse = lm.prefix_reuse
    pc = lm.prefix_cache
    common = _common_prefix(first_chunks) if first_chunks else []
    if len(first_chunks) > 1 and (len(common) < MIN_REUSE or not reuse):
        common = []
    batch, covered = pc.lookup(common) if reuse and common else (None, 0)
    if batch is None:
        batch, covered = lm.new_batch(1), 0
    else:
        pc.hits += 1
        pc.tokens_saved += covered * len(first_chunks)
    if common:
        if covered < len(common):
            batch.feed([common[covered:]])
        if reuse:
            pc.store(common, batch)
        rest = [c[len(common) :] for c in first_chunks]
        if len(first_chunks) > 1 and reuse:
            return _fan_out(lm, batch, rest)
        if len(first_chunks) > 1:
            batch.select([0] * len(first_chunks))
        if any(rest):
            batch.feed(rest)
        return batch
    if reuse and len(first_chunks) > 1:
        return _fan_out(lm, None, first_chunks)
    # Nothing shared: one padded prefill.
    batch = lm.new_batch(len(first_chunks))
    batch.feed(first_chunks)
    return batch


# ---------------------------------------------------------------- shared starts inside one batch

SHARE_MIN = 8  # tokens a group must save ((members - 1) x its length) to get a forward row of its own


def _fan_out(lm: LM, root: Batch | None, seqs: list[list[int]]) -> Batch:
    """Row r of the result holds (root +) seqs[r], rows that start alike
    computing their shared start once (a radix tree fed level by level: one
    padded forward per level, each node a batch row selected from its
    parent). Independent calls of one row (parallel steps) open with the
    same text (the row's argument after the same header); without this every
    call would compute it again. root: a one-row batch holding what every
    row starts with, or None."""
    nodes = [(list(range(len(seqs))), 0)]  # (rows, tokens of their seqs already in the node's batch row)
    batch = root
    while not all(_finished(members, end, seqs) for members, end in nodes):
        parents, blocks, level = [], [], []
        for p, (members, start) in enumerate(nodes):
            groups = [(members, start)] if _finished(members, start, seqs) else _groups(members, start, seqs)
            for group, end in groups:
                parents.append(p)
                blocks.append(seqs[group[0]][start:end])
                level.append((group, end))
        if batch is None:
            batch = lm.new_batch(len(blocks))  # the first level's rows share nothing before it
        else:
            batch.select(parents)
        batch.feed(blocks)
        nodes = level
    assert batch is not None  # seqs is not empty: the loop ran, or root was given
    where = {r: i for i, (members, _) in enumerate(nodes) for r in members}
    batch.select([where[r] for r in range(len(seqs))])
    return batch


def _finished(members: list[int], end: int, seqs: list[list[int]]) -> bool:
    return all(len(seqs[m]) == end for m in members)


def _groups(rows: list[int], start: int, seqs: list[list[int]], at: int | None = None) -> list[tuple[list[int], int]]:
    """The children of a node whose rows hold seqs[:start]: rows that go on
    alike for long enough share a child (their common part, then more
    levels); every other row gets its whole remaining text; rows that end
    here keep the node's state. `at`: the rows agree on seqs[start:at]
    (a split below a common part too short to share)."""
    at = start if at is None else at
    ended: list[int] = []
    by_token: dict[int, list[int]] = {}
    for r in rows:
        if len(seqs[r]) == at:
            ended.append(r)
        else:
            by_token.setdefault(seqs[r][at], []).append(r)
    out = [(ended, at)] if ended else []
    for members in by_token.values():
        if len(members) == 1:
            out.append((members, len(seqs[members[0]])))
            continue
        end = at + len(_common_prefix([seqs[m][at:] for m in members]))
        if (len(members) - 1) * (end - start) >= SHARE_MIN or _finished(members, end, seqs):
            out.append((members, end))
        else:
            out += _groups(members, start, seqs, end)
    return out
