"""What `check` accepts runs: the forms docs/language.md documents work at
run time, and what cannot run is a check error (tiny models)."""

import pytest

import lmlang
from lmlang.errors import LmlangError


def test_documented_slerp_of_base_and_base_plus_adapter_runs(tiny_model_dir, tmp_path, lmlang_home):
    from test_adapters import make_lora

    lora = make_lora(tiny_model_dir, tmp_path / "polite", seed=1)
    src = f'''
model base = "{tiny_model_dir}"
adapter polite = lora "{lora}"
model halfway = merge slerp {{ base: base, models: [base + polite], t: 0.5 }}
query q(x: str) using halfway {{ "{{x}} [v]" where v in ["yes", "no"] }}
flow {{ r = q("hi") emit v = r.v }}
'''
    assert lmlang.compile(src).run()["v"] in ("yes", "no")


def test_distribution_after_another_hole_is_a_check_error():
    src = '''
model base = default
query q() using base {
    "First [a] then [b]"
    where a in ["x", "y"]
    distribution b in ["yes", "no"]
}
'''
    with pytest.raises(LmlangError) as info:
        lmlang.compile(src)
    d = info.value.diagnostics[0]
    assert "only hole" in d.message and d.span.line == 6


def _tiny(path, **kw):
    from tiny import build_tiny_model

    return build_tiny_model(path, **kw)


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    return {"vocab": _tiny(root / "vocab", seed=2, vocab_size=300), "hidden": _tiny(root / "hidden", seed=3, hidden=32)}


@pytest.mark.parametrize("which, words", [("vocab", "vocabulary size"), ("hidden", "hidden size 32, 2 layers")])
def test_merge_of_models_that_differ_is_a_check_error(tiny_model_dir, odd_models, which, words):
    src = f'''
model a = "{tiny_model_dir}"
model b = "{odd_models[which]}"
model m = merge linear {{ models: {{ a: 0.5, b: 0.5 }} }}
'''
    with pytest.raises(LmlangError) as info:
        lmlang.compile(src)
    d = info.value.diagnostics[0]
    assert "cannot merge models that differ" in d.message and d.span.line == 4
    assert words in d.message


def test_fuse_of_models_with_another_vocabulary_is_a_check_error(tiny_model_dir, odd_models):
    src = f'''
model a = "{tiny_model_dir}"
model b = "{odd_models["vocab"]}"
model f = fuse {{ a: 1.0, b: 1.0 }}
'''
    with pytest.raises(LmlangError, match="cannot fuse models that differ"):
        lmlang.compile(src)


def test_merge_of_compatible_models_checks(tiny_model_dir, tiny_model_dir_b):
    lmlang.compile(
        f'model a = "{tiny_model_dir}"\nmodel b = "{tiny_model_dir_b}"\n'
        'model m = merge linear { models: { a: 0.5, b: 0.5 } }\n'
    )


def test_hub_id_not_in_the_local_cache_is_reported_at_check(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    from lmlang.frontend import build

    fe = build('model m = "some-org/not-cached-model"\n', "t.lm")
    w = [w for w in fe.warnings if w.code == "hub-not-cached"]
    assert w and "not in the local Hugging Face cache" in w[0].message and w[0].span.line == 1
    assert "never downloads" in w[0].hint


def test_hub_id_in_the_local_cache_checks_and_is_compared(tmp_path, monkeypatch, tiny_model_dir, odd_models):
    import shutil

    snap = tmp_path / "cache" / "models--org--tiny" / "snapshots" / "abc"
    shutil.copytree(tiny_model_dir, snap)
    (tmp_path / "cache" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "cache" / "models--org--tiny" / "refs" / "main").write_text("abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    lmlang.compile('model m = "org/tiny"\n')
    with pytest.raises(LmlangError, match="cannot merge models that differ"):
        lmlang.compile(
            f'model a = "org/tiny"\nmodel b = "{odd_models["vocab"]}"\n'
            'model m = merge linear { models: { a: 0.5, b: 0.5 } }\n'
        )
