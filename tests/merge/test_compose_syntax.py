"""`compress`, `merge twin` and `merge atlas` written in a script, built by
the runtime on the tiny model, against direct computations: the compressed
folder's deltas are the library's per-module result, the atlas folder's
weights are base + sum_i c_i delta_i with the coefficients it reports, and
a twin row with one-hot weights runs exactly its expert."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import lmlang
from lmlang.merge.atlas import group_of
from lmlang.merge.compress import _module_scale, balance_factors, compress_module
from lmlang.merge.lora import load_lora

from test_twin import make_lora


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    import os

    home = tmp_path_factory.mktemp("compose_home")
    old = os.environ.get("LMLANG_HOME")
    os.environ["LMLANG_HOME"] = str(home)
    yield home
    if old is None:
        del os.environ["LMLANG_HOME"]
    else:
        os.environ["LMLANG_HOME"] = old


@pytest.fixture(scope="module")
def program(tiny_model_dir, tmp_path_factory, home):
    root = tmp_path_factory.mktemp("compose")
    make_lora(tiny_model_dir, root / "a", 1, 2, ("q_proj", "v_proj"))
    make_lora(tiny_model_dir, root / "b", 2, 2, ("q_proj", "down_proj"))
    rows = [{"prompt": f"say {w}", "completion": w} for w in ("yes", "no", "maybe", "sure")]
    (root / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = root / "compose.lm"
    script.write_text(
        f'model base = "{tiny_model_dir}"\n'
        'adapter a = lora "a"\n'
        'adapter b = lora "b"\n'
        "adapter small = compress a { density: 0.5, quantize: ternary }\n"
        "router r = route embedding(encoder: base) { base + a: [\"say yes\"], base + b: [\"say no\"] }\n"
        "model twin = merge twin { base: base, models: [base + a, base + b], router: r, core: task_arithmetic }\n"
        'model fit = merge atlas { base: base, models: [base + a, base + b], fit_on: "dev.jsonl", steps: 3, lr: 0.05 }\n'
        "model s = base + small\n"
        'query q(x: str) using twin { user "{x}" assistant "[y]" where len(y) < 4 }\n'
        'query f(x: str) using fit { user "{x}" assistant "[y]" where len(y) < 4 }\n'
        'query c(x: str) using s { user "{x}" assistant "[y]" where len(y) < 4 }\n'
    )
    p = lmlang.compile_file(script, threads=1, cache=False)
    yield p, root
    p.close()


def node(p, name):
    return p.frontend.compiled.names[name]


def test_compressed_adapter_is_the_library_result(program):
    p, root = program
    folder = p._executor().builder.value(node(p, "small"))
    src = load_lora(root / "a")
    out = load_lora(folder)
    config = json.loads((root / "a" / "adapter_config.json").read_text())
    assert set(out.modules) == set(src.modules)
    for name, mod in src.modules.items():
        scale, _r = _module_scale(config, name.removesuffix(".weight"))  # PEFT names the module, not the weight
        # The library keeps, per module, the better of the factors as trained
        # and their balanced SVD form (compress.balance_factors).
        a, b = mod.a.float(), mod.b.float()
        direct = compress_module(a, b, scale, 0.5, "ternary")
        other = compress_module(*balance_factors(a, b), scale, 0.5, "ternary")
        if other["diff_sq"] < direct["diff_sq"]:
            direct = other
        expect = direct["scale"] * (direct["b"].double() @ direct["a"].double())
        torch.testing.assert_close(out.modules[name].delta().double(), expect, rtol=1e-5, atol=1e-7)
    report = json.loads((folder / "compeft.json").read_text())
    assert report["quantize"] == "ternary" and report["density"] == 0.5
    assert p.queries["c"]("say yes")["y"] is not None  # `base + small` decodes like any adapter


def test_atlas_weights_are_base_plus_the_reported_combination(program, tiny_model_dir):
    p, root = program
    folder = p._executor().builder.value(node(p, "fit")).path
    manifest = json.loads((folder / "atlas.json").read_text())
    assert manifest["experts"] == ["a", "b"]
    coef = manifest["coefficients"]
    assert set(coef) == {"layer.0", "layer.1"}
    assert any(abs(c - 0.5) > 1e-4 for g in coef.values() for c in g.values())  # the coefficients moved
    base = load_file(tiny_model_dir / "model.safetensors")
    merged = load_file(folder / "model.safetensors")
    experts = {n: load_lora(root / n).modules for n in ("a", "b")}
    targets = sorted(set(experts["a"]) | set(experts["b"]))
    for t in targets:
        expect = base[t].double()
        for n, mods in experts.items():
            if t in mods:
                expect = expect + coef[group_of(t, "block")][n] * mods[t].delta().double()
        torch.testing.assert_close(merged[t].double(), expect, rtol=1e-5, atol=1e-6)
    untouched = next(k for k in base if k not in targets)
    assert torch.equal(merged[untouched], base[untouched])


class _Fixed:
    """A router that gives each row the weights it was built with."""

    def __init__(self, rows):
        self.rows = rows

    def weights(self, texts):
        return torch.tensor(self.rows[: len(texts)], dtype=torch.float64)


def _last_logits(lm, rows):
    batch = lm.new_batch(len(rows))
    batch.feed(rows)
    return batch.logits.float()


def test_twin_one_hot_rows_are_their_experts_in_one_batch(program):
    p, _root = program
    ex = p._executor()
    twin = ex.lm(node(p, "twin"))
    ids = [twin.encode("say yes please"), twin.encode("say no thanks")]
    ids = [r[:4] for r in ids]
    twin.router = _Fixed([[1.0, 0.0], [0.0, 1.0]])
    got = _last_logits(twin, ids)
    assert twin.last_weights.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    experts = [node_of_apply(p, "a"), node_of_apply(p, "b")]
    for row, nid in enumerate(experts):
        want = _last_logits(ex.lm(nid), [ids[row]])
        torch.testing.assert_close(got[row], want[0], rtol=1e-4, atol=1e-4)


def test_twin_routes_rows_with_the_declared_router(program):
    p, _root = program
    out = p.queries["q"]("say yes")
    assert isinstance(out["y"], str)
    w = p._executor().lm(node(p, "twin")).last_weights
    assert w.shape == (1, 2) and abs(float(w.sum()) - 1.0) < 1e-6


def node_of_apply(p, adapter):
    """The `base + adapter` node the twin lists."""
    c = p.frontend.compiled
    spec = c.spec(node(p, "twin"))
    for m in spec.models:
        applied = c.spec(m)
        if c.display_name(applied.adapters[0][0]) == adapter:
            return m
    raise AssertionError(adapter)
