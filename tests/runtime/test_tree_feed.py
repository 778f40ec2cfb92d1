"""The radix prefill's tree in one forward (runtime/tree_feed.py): every row
of the result holds what feeding its path alone would give (tokens, logits,
cache), and a parallel program that takes this path decodes exactly what
the sequential program decodes, row by row."""

import pytest
import torch

import lmlang
from lmlang.runtime import prefix as P
from lmlang.runtime import tree_feed as T


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    from lmlang.models.loader import load_model
    from lmlang.runtime.lm import HFModel

    return HFModel(load_model(tiny_model_dir, device="cpu"))


def flat(lm, seqs):
    """The reference: one padded prefill, no cache, no tree."""
    reuse = lm.prefix_reuse
    lm.prefix_reuse = False
    try:
        return P.prefill(lm, seqs)
    finally:
        lm.prefix_reuse = reuse


@pytest.fixture()
def masks(lm):
    """Per forward pass: its token slots and whether it took a 4D (tree) mask."""
    seen: list = []

    def record(mod, args, kwargs):
        mask = kwargs.get("attention_mask")
        seen.append((kwargs["input_ids"].numel(), mask is not None and mask.dim() == 4))

    hook = lm.model.register_forward_pre_hook(record, with_kwargs=True)
    yield seen
    hook.remove()


def test_the_layout_packs_each_subtree_into_a_right_aligned_row():
    # root's children: node 0 (2 tokens) and node 3 (1 token); 1, 2 under 0; 4 under 3
    nodes = [(-1, [1, 2]), (0, [3]), (0, [4, 5, 6]), (-1, [7]), (3, [8])]
    lay = T.layout(nodes)
    assert lay.rows == [[1, 2, 3, 4, 5, 6], [7, 8]]
    assert lay.width == 6 and lay.row_of == [0, 0, 0, 1, 1]
    assert lay.path == [[0, 1], [0, 1, 2], [0, 1, 3, 4, 5], [4], [4, 5]]  # row 1 padded by 4 on the left
    assert T.cost(nodes) == (2, 6)


def rows_of(lm):
    header = lm.encode("You answer questions about short reviews of restaurants. Review: ", first=True)
    texts = [lm.encode(t) for t in ("the pasta was perfect and cheap", "rude staff", "ok")]
    tails = [lm.encode(t) for t in ("\nLabel:", "\nTopic of it, in a word:", "\nStars:")]
    return header, texts, tails


def test_a_packed_tree_gives_each_row_its_flat_prefill(lm, masks):
    header, texts, tails = rows_of(lm)
    root = flat(lm, [header])
    nodes: list = []
    leaves, seqs = [], []
    for text in texts:  # subtrees of different sizes: the packed rows are padded
        nodes.append((-1, text))
        top = len(nodes) - 1
        for tail in tails:
            nodes.append((top, tail))
            leaves.append(len(nodes) - 1)
            seqs.append(header + text + tail)
        leaves.append(top)  # a leaf inside the tree: the row's text alone
        seqs.append(header + text)
    leaves.append(leaves[0])  # a leaf twice: two rows of one path
    seqs.append(seqs[0])
    masks.clear()
    tree = root.feed_tree(nodes, leaves)
    assert tree is not None and len(masks) == 1 and masks[0][1]  # one forward, with the tree mask
    width = max(len(t) for t in texts) + sum(len(t) for t in tails)  # the widest subtree: a text and its tails
    assert masks[0][0] == len(texts) * width
    ref = flat(lm, seqs)
    assert tree.ids == ref.ids == seqs
    assert tree.next_pos == [len(s) for s in seqs]
    assert torch.allclose(tree.logits, ref.logits, atol=1e-4)
    step = [[7, 8] for _ in seqs]  # the caches agree too: the next tokens see the same keys
    assert torch.allclose(tree.feed(step), ref.feed(step), atol=1e-4)
    assert root.rows == 1 and root.ids == [header]  # the root is left as it was
    assert torch.allclose(root.feed([[9]]), flat(lm, [header + [9]]).logits, atol=1e-4)


def test_the_prefill_packs_only_where_it_feeds_fewer_slots(lm, masks):
    header, texts, tails = rows_of(lm)
    shared = [header + t + tail for t in texts for tail in tails]
    lm.prefix_cache.clear()
    P.prefill(lm, [header])  # the header cached: the root
    masks.clear()
    batch = P.prefill(lm, shared)
    assert [packed for _, packed in masks] == [True]  # texts and tails in one forward, not two levels
    assert torch.allclose(batch.logits, flat(lm, shared).logits, atol=1e-4)
    # One level (every row its own text): one padded forward either way, no tree mask.
    lm.prefix_cache.clear()
    P.prefill(lm, [header])
    masks.clear()
    P.prefill(lm, [header + t for t in texts])
    assert [packed for _, packed in masks] == [False]


def test_a_hooked_model_or_a_row_ending_at_the_root_feeds_level_by_level(lm):
    header, texts, tails = rows_of(lm)
    root = flat(lm, [header])
    nodes = [(-1, texts[0]), (0, tails[0])]
    assert root.feed_tree([(-1, [])], [0]) is None  # no token past the root: its logits are the root's
    hooked = lm.with_hook("hooked", lambda: T.torch.no_grad())
    other = flat(hooked, [header])
    assert other.feed_tree(nodes, [1]) is None  # an adapter hook may index rows: not packed
    assert root.feed_tree(nodes, [1]) is not None


FOUR_CALLS = '''input text: str
model m = "{model}"
query label(t: str) using m {{
    system "You answer questions about short reviews of restaurants, briefly."
    user "Review: {{t}}\\nIs this review positive or negative?"
    assistant "[l]"
    where l in ["positive", "negative"]
}}
query topic(t: str) using m {{
    system "You answer questions about short reviews of restaurants, briefly."
    user "Review: {{t}}\\nWhat is it about: food, service or place?"
    assistant "[a]"
    where a in ["food", "service", "place"]
}}
query stars(t: str) using m {{
    system "You answer questions about short reviews of restaurants, briefly."
    user "Review: {{t}}\\nHow many stars out of 5?"
    assistant "[n]"
    where n is int and tokens(n) <= 2
}}
flow {{
    a = label(text)
    b = topic(text)
    c = stars(text)
    d = label(text + " (translated)")
    emit label = a.l, topic = b.a, stars = c.n, again = d.l
}}
'''


def test_a_parallel_program_packs_its_calls_and_decodes_the_sequential_results(tiny_model_dir, monkeypatch):
    from lmlang.runtime.lm import HFBatch

    packed: list = []  # rows of each prefill fed as one packed tree
    real = HFBatch.feed_tree

    def feed_tree(self, nodes, leaves):
        out = real(self, nodes, leaves)
        if out is not None:
            packed.append(len(leaves))
        return out

    monkeypatch.setattr(HFBatch, "feed_tree", feed_tree)
    src = FOUR_CALLS.format(model=tiny_model_dir)
    rows = [{"text": t} for t in ("the pasta was perfect", "rude staff, cold soup", "fine", "never again, ever")]
    seq = lmlang.compile(src, cache=False, parallel=False).run_batch(rows)
    par = lmlang.compile(src, cache=False, parallel=True).run_batch(rows)
    assert par == seq
    assert 16 in packed  # the 4 rows' 16 calls: one packed prefill
