"""Runtime state lives in declared fields of the objects that own it, and its
caches still pay off on the second query."""

import pytest

from lmlang.constraints import spec as C
from lmlang.runtime.decode import QueryRun, Sampler, decode_rows
from lmlang.runtime.prompt import RenderedPrompt

SYSTEM = "You label short reviews as positive or negative, nothing else. Review: "


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from lmlang.models.loader import load_model

    return load_model(tiny_model_dir, device="cpu")


def label(lm, review):
    run = QueryRun(
        lm, RenderedPrompt((SYSTEM + review + "\nLabel: ", "."), ("l",)), {"l": C.Choice(("positive", "negative"))}
    )
    (d,) = decode_rows(lm, [run], [Sampler(True)])
    return d


def test_second_query_reuses_the_prefix_cache(loaded):
    from lmlang.runtime.lm import HFModel

    lm = HFModel(loaded)
    first = label(lm, "great food")
    assert lm.prefix_cache.hits == 0 and lm.prefix_cache.entries
    second = label(lm, "cold soup")
    assert lm.prefix_cache.hits == 1 and lm.prefix_cache.tokens_saved >= len(lm.encode(SYSTEM, first=True)) - 1
    assert first.values["l"] in ("positive", "negative") and second.values["l"] in ("positive", "negative")
    # Reuse changes nothing but time.
    lm.prefix_reuse = False
    assert label(lm, "cold soup").values == second.values and lm.prefix_cache.hits == 1


def test_adapter_stack_gets_its_own_prefix_cache(loaded):
    from lmlang.runtime.lm import HFModel

    lm = HFModel(loaded)
    label(lm, "great food")
    clone = lm.with_hook("stacked", None)
    assert clone.prefix_cache is not lm.prefix_cache and not clone.prefix_cache.entries
    assert clone.tok_info is lm.tok_info


def test_vocabulary_caches_belong_to_the_loaded_model(loaded):
    from lmlang.runtime.lm import HFModel

    a, b = HFModel(loaded), HFModel(loaded)
    assert a.tok_info is b.tok_info is loaded.tok_info
    label(a, "great food")
    pairs = a.tok_info.heal_pairs(" ")
    assert pairs is not None and a.tok_info.heal_pairs(" ") is pairs  # built once, for every query after
    # Nothing is hung on the transformers objects.
    assert not [k for k in vars(loaded.tokenizer) if "lmlang" in k]
    assert not [k for k in vars(loaded.model) if "lmlang" in k]
