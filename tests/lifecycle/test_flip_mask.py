"""The MUSCLE term masks tokens, not rows (models/training_compat.py): the
old model's right completion tokens of a partly right row are distilled,
its wrong ones are left to the labels; a row with no right token adds
nothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmlang.models.training import Example
from lmlang.models.training_compat import compat_key, compat_term, old_predictions


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, tokenizer


def _example(model, tokenizer, right: int, wrong: int) -> Example:
    """A row whose first `right` completion tokens are the model's own greedy
    tokens (teacher-forced) and whose next `wrong` tokens are not."""
    ids = tokenizer("Rewrite the date: 5 March 2021", add_special_tokens=False)["input_ids"]
    context, answer = list(ids), []
    for i in range(right + wrong):
        with torch.no_grad():
            best = int(model(input_ids=torch.tensor([context + answer])).logits[0, -1].argmax())
        answer.append(best if i < right else (best + 1) % model.config.vocab_size)
    return Example(context + answer, [-100] * len(context) + answer, 1)


def test_old_predictions_keep_the_right_tokens_of_a_partly_right_row(tiny, tiny_model_dir):
    model, tokenizer = tiny
    partly, wrong = _example(model, tokenizer, 3, 2), _example(model, tokenizer, 0, 2)
    out = old_predictions(model, tokenizer, tiny_model_dir, (tiny_model_dir, ()), [partly, wrong], batch=2)
    assert out[1] is None  # no right token: the row adds nothing
    logprobs, mask = out[0]
    assert mask.tolist() == [True, True, True, False, False]  # a row-level mask would drop the whole row
    n = len(partly.input_ids)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([partly.input_ids])).logits[0, n - 6 : n - 1]
    assert logprobs.shape == (3, model.config.vocab_size)
    assert torch.allclose(logprobs, torch.log_softmax(logits[:3], -1), atol=1e-5)


def test_the_term_is_the_mean_kl_over_the_right_tokens_only(tiny, tiny_model_dir):
    model, tokenizer = tiny
    partly, wrong = _example(model, tokenizer, 2, 1), _example(model, tokenizer, 0, 2)
    old = old_predictions(model, tokenizer, tiny_model_dir, (tiny_model_dir, ()), [partly, wrong], batch=2)
    vocab = model.config.vocab_size
    new = torch.randn(5, vocab, generator=torch.Generator().manual_seed(0))  # 3 positions, then 2
    term = compat_term(new, old, [partly, wrong])
    old_lp, _ = old[0]
    expected = (old_lp.exp() * (old_lp - F.log_softmax(new[:2], -1))).sum() / 2
    assert torch.allclose(term, expected, atol=1e-5)
    moved = new.clone()
    moved[2:] += torch.randn(3, vocab)  # the old model's wrong token and the wrong row: no effect
    assert torch.allclose(compat_term(moved, old, [partly, wrong]), term)
    moved[0] += torch.randn(vocab)  # a right token: the term moves
    assert not torch.allclose(compat_term(moved, old, [partly, wrong]), term)
    same = torch.cat([old_lp, new[2:]])  # the new model equal to the old one where it was right
    assert float(compat_term(same, old, [partly, wrong])) == pytest.approx(0.0, abs=1e-5)
    assert float(compat_term(new, [None, None], [partly, wrong])) == 0.0


def test_the_cache_key_records_the_token_mask(tiny_model_dir):
    assert compat_key((tiny_model_dir, ()), lambda p: "k") == {"base": "k", "adapters": [], "mask": "token"}
