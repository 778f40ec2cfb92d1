"""Model-building nodes at run time, on tiny models: merges, adapters
applied at query time, in-script training, adapter merges."""

import pytest
import torch

import lmlang


def test_merge_node_runs_and_is_cached(tiny_model_dir, tiny_model_dir_b, lmlang_home):
    src = f'''
model a = "{tiny_model_dir}"
model b = "{tiny_model_dir_b}"
model m = merge linear {{ models: {{ a: 1.0, b: 1.0 }} }}
query q(x: str) using m {{ "{{x}} [v]" where v in ["yes", "no"] }}
flow {{ r = q("hi") emit v = r.v }}
'''
    out = lmlang.compile(src).run()
    assert out["v"] in ("yes", "no")
    merges = [d for d in (lmlang_home / "merges").iterdir() if d.is_dir()]
    assert len(merges) == 1
    # The merged weights are the average of the two models.
    from safetensors.torch import load_file

    def weights(d):
        return load_file(str(next(d.glob("*.safetensors"))))

    wa, wb = weights(tiny_model_dir), weights(tiny_model_dir_b)
    wm = weights(merges[0])
    key = "model.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(wm[key], (wa[key] + wb[key]) / 2, atol=1e-6)
    # A second program with the same merge reuses the cached folder.
    lmlang.compile(src).run()
    assert len([d for d in (lmlang_home / "merges").iterdir() if d.is_dir()]) == 1


def test_merge_node_error_is_clean(tiny_model_dir, tmp_path, lmlang_home):
    import sys

    sys.path.insert(0, str(tmp_path))
    from tiny import build_tiny_model

    other = build_tiny_model(tmp_path / "wide", seed=2, hidden=96)
    src = f'''
model a = "{tiny_model_dir}"
model b = "{other}"
model m = merge linear {{ models: {{ a: 1.0, b: 1.0 }} }}
query q(x: str) using m {{ "{{x}} [v]" where v in ["yes", "no"] }}
flow {{ r = q("hi") emit v = r.v }}
'''
    # Models that cannot merge are a check error now (their config.json says
    # so), positioned at the merge, before anything loads.
    with pytest.raises(lmlang.CheckError) as e:
        lmlang.compile(src)
    assert e.value.span.line == 4, e.value
    assert "shape" in str(e.value).lower() or "differ" in str(e.value).lower()


def test_merge_dtype_option_reaches_the_merge(tiny_model_dir, tiny_model_dir_b, lmlang_home):
    from safetensors.torch import load_file

    src = f'''
model a = "{tiny_model_dir}"
model b = "{tiny_model_dir_b}"
model m = merge linear {{ models: {{ a: 1.0, b: 1.0 }}, dtype: "float16" }}
query q(x: str) using m {{ "{{x}} [v]" where v in ["yes", "no"] }}
flow {{ r = q("hi") emit v = r.v }}
'''
    assert lmlang.compile(src).run()["v"] in ("yes", "no")
    (folder,) = [d for d in (lmlang_home / "merges").iterdir() if d.is_dir()]
    w = load_file(str(next(folder.glob("*.safetensors"))))
    assert w["model.layers.0.self_attn.q_proj.weight"].dtype == torch.float16
