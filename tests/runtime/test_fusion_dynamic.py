"""Dynamic logit fusion (lmlang.runtime.fusion_dynamic): per-step weights on
fixed logits against a direct search written out here, and the fused LM on
tiny models against the members' own logits."""

from __future__ import annotations

import itertools

import pytest
import torch

from lmlang.errors import LmlangRuntimeError
from lmlang.runtime.fusion_dynamic import DynamicFusedLM, box_grid, dynamic_weights, fuse_with, simplex_grid

ROWS = [[5, 17, 42, 99, 7, 230], [3, 150, 88, 61, 19, 44]]


def kl(p_logits, q_logp):
    p = torch.log_softmax(p_logits.double(), -1)
    return float((p.exp() * (p - q_logp)).sum())


def brute_unanchored(logits, steps):
    """argmin over the simplex grid of sum_i KL(p_i || softmax(sum w_i log p_i)), one row."""
    lps = [torch.log_softmax(x.double(), -1) for x in logits]
    best = None
    for combo in itertools.product(range(steps + 1), repeat=len(logits)):
        if sum(combo) != steps:
            continue
        w = [c / steps for c in combo]
        q = torch.log_softmax(sum(wi * lp for wi, lp in zip(w, lps)), -1)
        loss = sum(kl(x, q) for x in logits)
        if best is None or loss < best[0] - 1e-9:
            best = (loss, w)
    return best[1]


def brute_anchored(logits, anchor, target, steps, top):
    la, lt = torch.log_softmax(anchor.double(), -1), torch.log_softmax(target.double(), -1)
    lps = [torch.log_softmax(x.double(), -1) for x in logits]
    wanted = [kl(x, la) for x in logits]
    best = None
    for combo in itertools.product(range(steps + 1), repeat=len(logits)):
        a = [top * c / steps for c in combo]
        q = torch.log_softmax(lt + sum(ai * (lp - la) for ai, lp in zip(a, lps)), -1)
        moved = float((q.exp() * (q - lt)).sum())
        loss = sum((moved - w) ** 2 for w in wanted)
        if best is None or loss < best[0] - 1e-9:
            best = (loss, a)
    return best[1]


@pytest.fixture()
def logits():
    torch.manual_seed(3)
    return [torch.randn(4, 12) * s for s in (1.0, 3.0, 0.3)]


def test_grids():
    g = simplex_grid(3, 2)
    assert g.tolist() == [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.0],
        [0.5, 0.0, 0.5],
        [0.0, 1.0, 0.0],
        [0.0, 0.5, 0.5],
        [0.0, 0.0, 1.0],
    ]
    assert box_grid(2, 2, 1.0).tolist() == [
        [0.0, 0.0],
        [0.0, 0.5],
        [0.0, 1.0],
        [0.5, 0.0],
        [0.5, 0.5],
        [0.5, 1.0],
        [1.0, 0.0],
        [1.0, 0.5],
        [1.0, 1.0],
    ]


def test_unanchored_weights_equal_a_direct_search(logits):
    w = dynamic_weights(logits, grid=6)
    for r in range(4):
        assert w[r].tolist() == pytest.approx(brute_unanchored([x[r] for x in logits], 6), abs=1e-6), r
    # The fused distribution is the weighted log-linear mix of the members.
    fused = fuse_with(logits, w)
    direct = torch.log_softmax(sum(w[:, i : i + 1] * torch.log_softmax(x, -1) for i, x in enumerate(logits)), -1)
    assert torch.allclose(fused, direct, atol=1e-5)


def test_a_confident_member_sets_the_top_token_and_the_flat_one_is_kept():
    peaked = torch.full((1, 10), -5.0)
    peaked[0, 3] = 5.0
    flat = torch.zeros(1, 10)
    flat[0, 7] = 0.3
    w = dynamic_weights([flat, peaked], grid=10)
    assert 0 < w[0, 1] < w[0, 0]  # log-space weights: a small one suffices for the peaked member
    fused = fuse_with([flat, peaked], w)
    assert int(fused.argmax()) == 3

    # Covering both: the chosen mix has a lower summed KL than either member alone.
    def cost(ws):
        q = fuse_with([flat, peaked], torch.tensor([ws]))
        return kl(flat[0], q[0].double()) + kl(peaked[0], q[0].double())

    assert cost(w[0].tolist()) < min(cost([1.0, 0.0]), cost([0.0, 1.0]))


def test_anchored_weights_equal_a_direct_search(logits):
    torch.manual_seed(4)
    anchor, target = torch.randn(4, 12), torch.randn(4, 12)
    w = dynamic_weights(logits[:2], anchor, target, grid=4, max_weight=2.0)
    for r in range(4):
        assert w[r].tolist() == pytest.approx(
            brute_anchored([x[r] for x in logits[:2]], anchor[r], target[r], 4, 2.0), abs=1e-6
        ), r
    fused = fuse_with(logits[:2], w, anchor, target)
    la, lt = torch.log_softmax(anchor, -1), torch.log_softmax(target, -1)
    direct = torch.log_softmax(
        lt + sum(w[:, i : i + 1] * (torch.log_softmax(x, -1) - la) for i, x in enumerate(logits[:2])), -1
    )
    assert torch.allclose(fused, direct, atol=1e-5)


def test_one_expert_on_its_own_anchor_gets_weight_one(logits):
    # alpha = 1 makes q = p_E, so KL(q || p_A) = KL(p_E || p_A): the loss is 0 there.
    w = dynamic_weights(logits[:1], logits[2], grid=10, max_weight=2.0)
    assert w[:, 0].tolist() == pytest.approx([1.0] * 4)


def test_coordinate_descent_for_large_sets_is_a_grid_local_minimum(logits):
    torch.manual_seed(5)
    many = [torch.randn(2, 12) * s for s in (0.5, 1.0, 2.0, 3.0, 0.2)]
    w = dynamic_weights(many, grid=4, max_candidates=10)  # 70 simplex points > 10: descent
    assert w.shape == (2, 5) and torch.allclose(w.sum(1), torch.ones(2))

    def loss(row, ws):
        lps = [torch.log_softmax(x[row].double(), -1) for x in many]
        q = torch.log_softmax(sum(float(a) * lp for a, lp in zip(ws, lps)), -1)
        return sum(kl(x[row], q) for x in many)

    for r in range(2):
        here = loss(r, w[r].tolist())
        for i, j in itertools.permutations(range(5), 2):
            if w[r, i] >= 0.25 - 1e-6:
                moved = w[r].clone()
                moved[i] -= 0.25
                moved[j] += 0.25
                assert loss(r, moved.tolist()) >= here - 1e-6
    anchor = torch.randn(2, 12)
    a = dynamic_weights(many[:3], anchor, grid=4, max_weight=1.0, max_candidates=10)  # 125 box points: descent
    assert ((a >= 0) & (a <= 1)).all()


def test_errors():
    with pytest.raises(LmlangRuntimeError, match="at least one"):
        dynamic_weights([])
    with pytest.raises(LmlangRuntimeError, match="grid"):
        dynamic_weights([torch.zeros(1, 3)], grid=0)


def load_lm(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmlang.models.loader import LoadedModel
    from lmlang.runtime.lm import HFModel

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return HFModel(LoadedModel(model, AutoTokenizer.from_pretrained(model_dir), "cpu", "float32", model_dir, "tiny"))


def test_fused_lm_decodes_with_per_step_weights(tiny_model_dir, tiny_model_dir_b):
    a, b = load_lm(tiny_model_dir), load_lm(tiny_model_dir_b)
    with torch.no_grad():
        la = a.model(input_ids=torch.tensor(ROWS)).logits
        lb = b.model(input_ids=torch.tensor(ROWS)).logits
    for anchor in (None, a):
        lm = DynamicFusedLM([a, b], anchor=anchor, options={"grid": 4})
        assert len(lm.members) == 2  # an anchor that is a member already shares its batch
        batch = lm.new_batch(2)
        out = batch.feed(ROWS)
        anchor_logits = None if anchor is None else la[:, -1]
        w = dynamic_weights([la[:, -1], lb[:, -1]], anchor_logits, grid=4)
        assert torch.equal(batch.last_weights, w)
        assert torch.allclose(out, fuse_with([la[:, -1], lb[:, -1]], w, anchor_logits), atol=1e-5)
    # Rows keep their weights through select and fork; all_logits fuses every position.
    batch.select([1, 1, 0])
    assert torch.equal(batch.fork().last_weights, w[[1, 1, 0]])
    full = DynamicFusedLM([a, b], options={"grid": 4}).new_batch(2)
    every = full.feed(ROWS, all_logits=True)
    assert every.shape[:2] == (2, len(ROWS[0])) and full.last_weights.shape == (2, len(ROWS[0]), 2)
    pos = 2
    w2 = dynamic_weights([la[:, pos], lb[:, pos]], grid=4)
    assert torch.allclose(every[:, pos], fuse_with([la[:, pos], lb[:, pos]], w2), atol=1e-5)
    with pytest.raises(LmlangRuntimeError, match="unknown option"):
        DynamicFusedLM([a, b], options={"gird": 3})
    with pytest.raises(LmlangRuntimeError, match="needs an anchor"):
        DynamicFusedLM([a, b], target=b)
