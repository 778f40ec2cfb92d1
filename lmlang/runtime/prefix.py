"""Prefill with KV prefix reuse.

Rows of one batch that share a prefix (the system prompt, a few-shot block,
the chat template's header) compute it once and fan out; rows that go on
alike past it (several calls over one row's text) share that part too, one
padded forward per level (_fan_out). Across queries, a
small LRU of prefix caches per model (the LM's `prefix_cache` field) lets the
next query skip whatever it shares with an earlier one (the same system
prompt, row after row).

A small batch (at most ROW_ENTRIES rows: one row's independent calls, run
together as parallel steps) also keeps each row's whole prompt, as a
one-row batch does, and takes each row's own entry back when that feeds
fewer token slots than sharing the batch's common start (_own_entries): a
call repeated in a parallel batch then costs what it costs alone.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - lm.py imports this module
    from .lm import LM, Batch

MIN_REUSE = 8  # shorter shared prefixes are not worth a cache copy
MAX_ENTRIES = 8  # per model
ROW_ENTRIES = MAX_ENTRIES // 2  # a batch of at most this many rows caches each row's prompt
# A forward pass costs about this many token slots on top of the slots it
# feeds (a CPU reads every weight once per pass: one 1-token pass of the
# bundled model took the time of ~20 slots of a wide prefill, bench/scale.py).
FORWARD_SLOTS = 20


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
        best, best_n = self._best(ids)
        if best is None or best_n < MIN_REUSE:
            return None, 0
        self.entries.move_to_end(best)
        batch = self.entries[best].fork()
        if best_n == len(best) and best_n == len(ids):
            return batch, best_n
        keep = min(best_n, len(ids) - 1)
        batch.crop(keep)
        return batch, keep

    def covered(self, ids: list[int]) -> int:
        """How many of `ids` lookup would cover (0 below MIN_REUSE); no copy."""
        best, best_n = self._best(ids)
        if best is None or best_n < MIN_REUSE:
            return 0
        return best_n if best_n == len(best) == len(ids) else min(best_n, len(ids) - 1)

    def _best(self, ids: list[int]) -> tuple[tuple | None, int]:
        """The entry sharing the longest start with ids, and that length."""
        best, best_n = None, 0
        for key in self.entries:
            n = _match(key, ids)
            if n > best_n or (n == best_n == len(key)):  # an exact entry beats a longer one: it has the logits
                best, best_n = key, n
        return best, best_n

    def store(self, ids: list[int], batch: Batch, copy: bool = True, prune: bool = True) -> None:
        """Keep `batch` (one row holding `ids`, dense) as the entry for ids;
        copy=False hands over a batch nobody else holds. prune=False keeps
        the entries this one extends (see prefill)."""
        key = tuple(ids)
        if len(key) < MIN_REUSE or key in self.entries:
            return
        # A longer entry makes its own prefixes redundant (a lookup of one
        # gets it from the longer entry, cropped, less its last token).
        for k in [k for k in self.entries if prune and len(k) < len(key) and key[: len(k)] == k]:
            del self.entries[k]
        self.entries[key] = batch.fork() if copy else batch
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
    if not reuse or not 1 < len(first_chunks) <= ROW_ENTRIES:
        return _prefill(lm, first_chunks, reuse)
    batch = _own_entries(lm, first_chunks)
    if batch is None:
        batch = _prefill(lm, first_chunks, reuse)
    # Each row's prompt, as a one-row batch keeps it; the batch's common
    # start stays too: the next such batch asks for exactly that start, and
    # a longer entry would leave its last token to feed in a forward alone.
    for r, ids in enumerate(first_chunks):
        if len(ids) >= MIN_REUSE and tuple(ids) not in lm.prefix_cache.entries:
            row = batch.row_copy(r)
            if row is not None:
                lm.prefix_cache.store(ids, row, copy=False, prune=False)
    return batch


def _prefill(lm: LM, first_chunks: list[list[int]], reuse: bool) -> Batch:
    """prefill's shared path: the common start (from the cache where it
    holds it), then the rest as a radix tree (_fan_out)."""
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
        if reuse and _fold(len(first_chunks), covered, len(common)):
            return _fan_out(lm, batch, [c[covered:] for c in first_chunks])
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


def _fold(rows: int, covered: int, common: int) -> bool:
    """Whether the uncached end of a cached common start (typically its last
    token: the cache held it only inside a longer entry) goes with each
    row's rest instead of a forward of its own: when repeating it per row
    costs fewer slots than that forward."""
    return 0 < covered < common and rows > 1 and (rows - 1) * (common - covered) < FORWARD_SLOTS


def _own_entries(lm: LM, seqs: list[list[int]]) -> Batch | None:
    """Every row from its own cache entry (merged into one batch, the rows'
    tails fed in one padded forward), when every row has an entry and that
    feeds fewer slots, forwards counted, than the shared path would: the
    common start's uncached part, then the radix tree's levels. None
    otherwise, or where the backend cannot merge batches."""
    pc = lm.prefix_cache
    own = [pc.covered(s) for s in seqs]
    if min(own) < MIN_REUSE:
        return None
    tail = max(len(s) - n for s, n in zip(seqs, own))
    own_cost = (FORWARD_SLOTS + len(seqs) * tail) if tail else 0
    if own_cost >= _shared_cost(pc, seqs):
        return None
    parts = [pc.lookup(s) for s in seqs]
    merge = getattr(type(parts[0][0]), "merged", None)
    if merge is None:
        return None
    try:
        batch = merge(lm, [b for b, _ in parts])
    except TypeError:  # a cache that does not merge
        return None
    pc.hits += len(seqs)
    pc.tokens_saved += sum(n for _, n in parts)
    if tail:
        batch.feed([s[n:] for s, (_, n) in zip(seqs, parts)])
    return batch


def _shared_cost(pc: PrefixCache, seqs: list[list[int]]) -> int:
    """Token slots (forwards counted as FORWARD_SLOTS each) that _prefill
    feeds for these rows."""
    common = _common_prefix(seqs)
    if len(common) < MIN_REUSE:
        common = []
    cost, start = 0, len(common)
    if common:
        covered = pc.covered(common)
        if _fold(len(seqs), covered, len(common)):
            start = covered
        elif covered < len(common):
            cost += FORWARD_SLOTS + len(common) - covered
    levels = _levels([s[start:] for s in seqs])
    by_level = _level_cost(levels)
    packed = common and len(levels) > 1 and _packable(levels)  # as _packed decides (with a root)
    return cost + (min(by_level, _tree_cost(_tree_nodes(levels)[0])) if packed else by_level)


def _level_cost(levels: list) -> int:
    """Token slots (forwards counted) of feeding the radix tree level by level."""
    return sum(FORWARD_SLOTS + len(level) * max((len(block) for _, block, _ in level), default=0) for level in levels)


def _tree_cost(nodes: list[tuple[int, list[int]]]) -> int:
    """Token slots (forwards counted) of feeding the tree's nodes (_tree_nodes) in one packed forward (tree_feed.py)."""
    from .tree_feed import cost

    rows, width = cost(nodes)
    return FORWARD_SLOTS + rows * width


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
    levels = _levels(seqs)
    packed = _packed(root, levels, len(seqs))
    if packed is not None:
        return packed
    batch = root
    for level in levels:
        if batch is None:
            batch = lm.new_batch(len(level))  # the first level's rows share nothing before it
        else:
            batch.select([parent for parent, _, _ in level])
        batch.feed([block for _, block, _ in level])
    assert batch is not None  # seqs is not empty: a level ran, or root was given
    last = levels[-1] if levels else [(0, [], list(range(len(seqs))))]
    where = {r: i for i, (_, _, members) in enumerate(last) for r in members}
    batch.select([where[r] for r in range(len(seqs))])
    return batch


def _packed(root: Batch | None, levels: list, rows: int) -> Batch | None:
    """The whole tree under `root` in one forward (tree_feed.py: each of
    the root's subtrees packed into one row, a tree attention mask), when
    that feeds fewer slots than the levels do (two levels or more: one
    level is one padded forward either way) and the backend takes it;
    None otherwise."""
    if root is None or len(levels) < 2 or not _packable(levels):
        return None
    nodes, at = _tree_nodes(levels)  # built once: the cost and the feed both read it
    if _tree_cost(nodes) >= _level_cost(levels):
        return None
    last = len(levels) - 1
    where = {r: at[(last, i)] for i, (_, _, members) in enumerate(levels[-1]) for r in members}
    return root.feed_tree(nodes, [where[r] for r in range(rows)])


def _packable(levels: list) -> bool:
    """Every row feeds at least one token past the root (a row that ends at
    the root would need the root's own logits, which a packed forward does
    not compute)."""
    return bool(levels) and all(block for _, block, _ in levels[0])


def _tree_nodes(levels: list) -> tuple[list[tuple[int, list[int]]], dict]:
    """The levels as tree_feed's nodes (parent index or -1, tokens), each
    node's subtree in one run (depth first: tree_feed packs a subtree in node
    order), and where each (level, index) went."""
    children: dict = {}
    for d, level in enumerate(levels[1:], start=1):
        for i, (parent, _, _) in enumerate(level):
            children.setdefault((d - 1, parent), []).append((d, i))
    nodes: list[tuple[int, list[int]]] = []
    at: dict = {}
    stack = [((0, i), -1) for i in reversed(range(len(levels[0])))]
    while stack:
        (d, i), parent = stack.pop()
        at[(d, i)] = len(nodes)
        nodes.append((parent, levels[d][i][1]))
        stack += [(child, at[(d, i)]) for child in reversed(children.get((d, i), []))]
    return nodes, at


def _levels(seqs: list[list[int]]) -> list[list[tuple[int, list[int], list[int]]]]:
    """The radix tree's levels, each a list of nodes (parent node's index
    in the level before, the tokens the node feeds, the rows it holds)."""
    nodes = [(list(range(len(seqs))), 0)]  # (rows, tokens of their seqs already in the node's batch row)
    levels = []
    while not all(_finished(members, end, seqs) for members, end in nodes):
        level, ends = [], []
        for p, (members, start) in enumerate(nodes):
            groups = [(members, start)] if _finished(members, start, seqs) else _groups(members, start, seqs)
            for group, end in groups:
                level.append((p, seqs[group[0]][start:end], group))
                ends.append((group, end))
        levels.append(level)
        nodes = ends
    return levels


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
