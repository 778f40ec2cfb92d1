"""A radix tree of prompt continuations fed in one forward pass (tree attention).

prefix.py's radix prefill feeds a batch's shared text level by level: the
rows' texts in one padded forward, then every call's own tail in another.
Each forward costs a pass over the weights on top of its token slots, and a
level is as wide as its widest node. Here every subtree under the root
(one row's text and the tails of all the calls that share it) is packed
into one batch row, its nodes one after the other, and a 4D attention mask
lets each token see the root, its ancestors' tokens and the tokens before
it in its own node, nothing else; position ids restart at each node's
place in its path. The logits are those of feeding each path alone. After
the forward, each leaf's keys and values (root + its path) are gathered
into one row of an ordinary batch.

Only plain key/value caches (no sliding-window layer, whose window a custom
mask would bypass), attention that reads such a mask (sdpa, eager) and
models without a forward hook (an adapter hook may index its deltas by
batch row) take this path; `feed_tree` returns None
otherwise and the caller feeds the levels instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover - lm.py imports this module
    from .lm import HFBatch


# Attention implementations that read a custom 4D additive mask (flash attention does not).
MASKED_ATTENTION = ("sdpa", "eager")


@dataclass
class Layout:
    """Where each node's tokens go: packed rows of width `width`, tokens
    right-aligned (pads on the left), and per node its row and the block
    columns of its path (its ancestors' tokens, then its own)."""

    rows: list[list[int]]  # tokens per packed row
    width: int
    row_of: list[int]  # per node
    path: list[list[int]]  # per node: block columns, root excluded
    own: list[tuple[int, int]]  # per node: its own columns [start, end)


def layout(nodes: list[tuple[int, list[int]]]) -> Layout:
    """nodes: (parent index, or -1 for a child of the root; tokens), every
    parent before its children. Each child of the root opens a packed row;
    its descendants follow it in the row in node order."""
    rows: list[list[int]] = []
    row_of: list[int] = []
    path: list[list[int]] = []
    own: list[tuple[int, int]] = []
    for parent, tokens in nodes:
        if parent < 0:
            row, above = len(rows), []
            rows.append([])
        else:
            row, above = row_of[parent], path[parent]
        start = len(rows[row])
        rows[row].extend(tokens)
        row_of.append(row)
        own.append((start, start + len(tokens)))
        path.append(above + list(range(start, start + len(tokens))))
    width = max((len(r) for r in rows), default=0)
    # right-align every row: shift its columns by its left padding
    shift = [width - len(r) for r in rows]
    path = [[c + shift[row_of[i]] for c in p] for i, p in enumerate(path)]
    own = [(a + shift[row_of[i]], b + shift[row_of[i]]) for i, (a, b) in enumerate(own)]
    return Layout(rows, width, row_of, path, own)


def cost(nodes: list[tuple[int, list[int]]]) -> tuple[int, int]:
    """(packed rows, their width): the token slots the packed forward feeds
    are their product."""
    lay = layout(nodes)
    return len(lay.rows), lay.width


def feed_tree(root: HFBatch, nodes: list[tuple[int, list[int]]], leaves: list[int]) -> HFBatch | None:
    """A new batch with one row per leaf (a node index; one may repeat):
    root's one row + the tokens on the leaf's path, logits ready, from one
    forward pass over the packed tree. None where this backend state cannot
    take a custom mask (see the module docstring), or where a leaf's path
    holds no token (its logits would be the root's). `root` is left as it
    was."""
    from .lm import _layers, _plain_layer, _set_kv

    lm = root.lm
    lay = layout(nodes)
    if (
        root.rows != 1
        or lm.forward_hook is not None
        or not lay.rows
        or any(not lay.path[n] for n in leaves)
        or not root.cache.layers
        or not all(_plain_layer(layer) for layer in root.cache.layers)
        or getattr(lm.model.config, "_attn_implementation", None) not in MASKED_ATTENTION
    ):
        return None
    with torch.no_grad():
        work, logits = _packed_forward(root, lay, leaves)
        out = type(root)(lm, len(leaves))
        prior = root.mask.shape[1]
        longest = max(len(lay.path[n]) for n in leaves)
        dev = root.mask.device
        cols = torch.zeros((len(leaves), prior + longest), dtype=torch.long)
        mask = torch.zeros((len(leaves), prior + longest), dtype=torch.long)
        for j, n in enumerate(leaves):
            p = lay.path[n]
            cols[j, :prior] = torch.arange(prior)
            cols[j, prior + longest - len(p) :] = torch.tensor(p) + prior
            mask[j, prior + longest - len(p) :] = 1
        mask[:, :prior] = root.mask[0].cpu()
        rows = torch.tensor([lay.row_of[n] for n in leaves], dtype=torch.long)
        flat = (rows[:, None] * (prior + lay.width) + cols).flatten().to(dev)  # (packed row, position) -> one index
        for mine, theirs in zip(_layers(work), _layers(out)):
            _set_kv(theirs, _gathered(mine.keys, flat, len(leaves)), _gathered(mine.values, flat, len(leaves)))
        out.mask = mask.to(dev)
        start = root.next_pos[0]
        out.next_pos = [start + len(lay.path[n]) for n in leaves]
        out.ids = [list(root.ids[0]) + [lay.rows[lay.row_of[n]][c - _pad(lay, n)] for c in lay.path[n]] for n in leaves]
        out.dense = bool(out.mask.all())
        out._logits = logits
        out._passes = root._passes + 1
    return out


def _gathered(kv: torch.Tensor, flat: torch.Tensor, rows: int) -> torch.Tensor:
    """kv [packed rows, heads, positions, dim] -> [rows, heads, len(flat) / rows, dim]
    at the flat (packed row x positions + position) indices: one index_select."""
    n, heads, width, dim = kv.shape
    picked = kv.transpose(1, 2).reshape(n * width, heads * dim).index_select(0, flat)
    return picked.view(rows, -1, heads, dim).transpose(1, 2).contiguous()


def _pad(lay: Layout, node: int) -> int:
    """The left padding of the node's packed row."""
    return lay.width - len(lay.rows[lay.row_of[node]])


def _packed_forward(root: HFBatch, lay: Layout, leaves: list[int]) -> tuple[HFBatch, torch.Tensor]:
    """The forward over the packed rows (root's cache under each): the
    batch holding it, and the next-token logits [leaves, V] after each
    leaf's last token (the hidden states there alone go through the output
    layer: the other positions' logits are never read)."""
    from .lm import _layers, _set_kv

    lm = root.lm
    n, width, prior = len(lay.rows), lay.width, root.mask.shape[1]
    dev = root.mask.device
    work = type(root)(lm, n)
    for mine, theirs in zip(_layers(root), _layers(work)):
        _set_kv(theirs, mine.keys.expand(n, -1, -1, -1), mine.values.expand(n, -1, -1, -1))
    ids = torch.full((n, width), lm.pad_id, dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    allowed = torch.zeros((n, width, prior + width), dtype=torch.bool)
    allowed[:, :, :prior] = root.mask[0].bool().cpu()
    allowed[:, torch.arange(width), prior + torch.arange(width)] = True  # a pad sees itself: softmax stays finite
    start = root.next_pos[0]
    for r, tokens in enumerate(lay.rows):
        if tokens:
            ids[r, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
    for i, (a, b) in enumerate(lay.own):
        if a == b:
            continue
        r, p = lay.row_of[i], lay.path[i]
        above = torch.tensor(p[: len(p) - (b - a)], dtype=torch.long) + prior
        allowed[r, a:b][:, above] = True
        allowed[r, a:b, prior + a : prior + b] = torch.ones((b - a, b - a), dtype=torch.bool).tril()
        pos[r, a:b] = torch.arange(start + len(p) - (b - a), start + len(p))
    dtype = _layers(root)[0].keys.dtype  # the activations' (a quantized model's weights may be int8)
    bias = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    where = torch.tensor([[lay.row_of[j], lay.path[j][-1]] for j in leaves], dtype=torch.long, device=dev)

    picked: list[bool] = []

    def pick(_module, args):  # the output layer sees the leaves' last hidden states only
        if not args:
            return None
        picked.append(True)
        return (args[0][where[:, 0], where[:, 1]][None],) + tuple(args[1:])

    head = lm.model.get_output_embeddings()
    handle = head.register_forward_pre_hook(pick)
    try:
        out = lm.model(
            input_ids=ids.to(dev),
            attention_mask=bias[:, None].to(dev),
            position_ids=pos.to(dev),
            use_cache=True,
            logits_to_keep=0,
            **{lm.cache_kw: work.cache},
        )
    finally:
        handle.remove()
    logits = out.logits.float()
    # the output layer called without positional arguments: every position's logits came back
    logits = logits[0] if picked else logits[where[:, 0], where[:, 1]]
    return work, logits
