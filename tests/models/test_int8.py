"""CPU inference dtypes: int8 (dynamic quantization of Linear layers) is a
dtype like the others, refused where it cannot run, and decodes valid values."""

import re

import pytest

import lmlang
from lmlang.errors import LmlangRuntimeError
from lmlang.models import loader


def test_int8_quantizes_every_linear_layer(tiny_model_dir):
    import torch
    from torch import nn

    plain = loader.load_model(tiny_model_dir, device="cpu", dtype="float32")
    q = loader.load_model(tiny_model_dir, device="cpu", dtype="int8")
    assert q is not plain and q.dtype == "int8"
    qlinear = torch.ao.nn.quantized.dynamic.Linear
    n_plain = sum(isinstance(m, nn.Linear) for m in plain.model.modules())
    assert n_plain > 0
    assert sum(isinstance(m, qlinear) for m in q.model.modules()) == n_plain
    assert not any(isinstance(m, nn.Linear) for m in q.model.modules())
    # The float model in the cache was not quantized in place.
    assert sum(isinstance(m, nn.Linear) for m in plain.model.modules()) == n_plain
    # Close to the fp32 model's logits, not equal to them.
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        a, b = plain.model(ids).logits, q.model(ids).logits
    assert not torch.equal(a, b)
    assert torch.allclose(a, b, atol=0.2 * float(a.abs().max()))


def test_the_dtype_option_is_validated():
    with pytest.raises(ValueError, match="int8"):
        lmlang.compile('model m = default\nquery q() { "[x]" }', dtype="int4")
    with pytest.raises(LmlangRuntimeError, match="unknown dtype 'int4'") as e:
        loader._pick_device_dtype("cpu", "int4")
    assert "int8" in (e.value.hint or "")
    with pytest.raises(LmlangRuntimeError, match="CPU only"):
        loader._pick_device_dtype("meta", "int8")
    assert loader._pick_device_dtype("cpu", "int8") == ("cpu", "int8")


def test_int8_decodes_valid_constrained_values(tiny_model_dir):
    src = (
        f'model m = "{tiny_model_dir}"\n'
        "query q() using m {\n"
        '  "Phone: [p] Mood: [c] Count: [n] Sum: [s]."\n'
        '  where p matches r"[0-9]{3}-[0-9]{4}"\n'
        '  where c in ["calm", "busy"]\n'
        "  where n is int\n"
        '  where s is grammar "arith.lark" and tokens(s) <= 12\n'
        "}\n"
        "flow { r = q() emit p = r.p, c = r.c, n = r.n, s = r.s }\n"
    )
    prog = lmlang.compile(src, device="cpu", cache=False, dtype="int8", base_dir=_grammar_dir())
    out = prog.run()
    lm = prog._executor().lm(prog.frontend.compiled.names["m"])
    assert lm.loaded.dtype == "int8"
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", out["p"])
    assert out["c"] in ("calm", "busy")
    assert isinstance(out["n"], int)
    assert re.fullmatch(r"[0-9]{1,3}( [-+*] [0-9]{1,3})*", out["s"])


def _grammar_dir():
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp(prefix="lmlang-int8-"))
    (d / "arith.lark").write_text(
        'start: expr\nexpr: NUMBER (OP NUMBER)*\nOP: " + " | " - " | " * "\nNUMBER: /[0-9]{1,3}/\n'
    )
    return d


def _fresh_int8(model_dir):
    """An int8 LoadedModel of its own (the loader's cache would share hooks between tests)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    loaded = loader.LoadedModel(
        loader.quantize_int8(model), AutoTokenizer.from_pretrained(model_dir), "cpu", "int8", model_dir, "tiny"
    )
    return loaded


def test_int8_applies_lora_exactly_on_the_quantized_layers(tiny_model_dir, tmp_path):
    """A LoRA hook on an int8 Linear adds exactly scale * B A x to that layer's
    (quantized) output; the whole model with the adapter stays close to the
    float model with the same adapter."""
    import torch
    from torch.nn import functional as F

    from lmlang.models.adapters import AdapterHost
    from tests.models.test_adapters import TOKENS, load, make_lora

    lora = make_lora(tiny_model_dir, tmp_path / "lora", seed=3)
    q = _fresh_int8(tiny_model_dir)
    host = AdapterHost(q)
    host.add("a", lora)
    name, ops = next(iter(host.adapter("a").ops.items()))
    module = dict(q.model.named_modules())[name]
    assert type(module).__module__.startswith("torch.ao.nn.quantized")
    x = torch.randn(2, 3, module.in_features)
    with torch.no_grad():
        plain_out = module(x)
        with host.activate([("a", 0.5)]):
            hooked = module(x)
    (op,) = ops
    expected = plain_out + 0.5 * F.linear(F.linear(x, op.A), op.B)
    assert torch.allclose(hooked, expected, atol=1e-6)
    assert not torch.allclose(hooked, plain_out)

    f = load(tiny_model_dir)
    fhost = AdapterHost(f)
    fhost.add("a", lora)
    with torch.no_grad(), host.activate([("a", 1.0)]), fhost.activate([("a", 1.0)]):
        qa, fa = q.model(input_ids=TOKENS).logits, f.model(input_ids=TOKENS).logits
    with torch.no_grad():
        q0 = q.model(input_ids=TOKENS).logits
    assert torch.allclose(qa, fa, atol=0.2 * float(fa.abs().max()))
    assert not torch.allclose(qa, q0)  # the adapter changed the int8 model's output
    host.close()
    with torch.no_grad():
        assert torch.equal(q.model(input_ids=TOKENS).logits, q0)


def test_int8_refuses_what_needs_a_float_weight(tiny_model_dir, tmp_path):
    """IA3 on a layer's input multiplies the layer's weight at every step: refused
    under int8 with a hint, at load, never a silent wrong answer."""
    from peft import IA3Config, get_peft_model

    from lmlang.models.adapters import AdapterHost
    from tests.models.test_adapters import load

    base = load(tiny_model_dir).model
    cfg = IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"], init_ia3_weights=False)
    get_peft_model(base, cfg).save_pretrained(tmp_path / "ia3", safe_serialization=True)
    host = AdapterHost(_fresh_int8(tiny_model_dir))
    with pytest.raises(LmlangRuntimeError, match="int8") as e:
        host.add("ia3", tmp_path / "ia3")
    assert "float32" in (e.value.hint or "")


def test_int8_applies_dora_close_to_float(tiny_model_dir, tmp_path):
    """DoRA's norm comes from the dequantized weight; with it the int8 model
    moves the way the float model with the same adapter does."""
    import torch

    from lmlang.models.adapters import AdapterHost
    from tests.models.test_adapters import TOKENS, load, make_lora

    dora = make_lora(tiny_model_dir, tmp_path / "dora", seed=4, use_dora=True)
    q, f = _fresh_int8(tiny_model_dir), load(tiny_model_dir)
    qh, fh = AdapterHost(q), AdapterHost(f)
    qh.add("d", dora)
    fh.add("d", dora)
    with torch.no_grad():
        q0, f0 = q.model(input_ids=TOKENS).logits, f.model(input_ids=TOKENS).logits
        with qh.activate([("d", 1.0)]), fh.activate([("d", 1.0)]):
            qd, fd = q.model(input_ids=TOKENS).logits, f.model(input_ids=TOKENS).logits
    # The adapter's shift on the int8 model follows the float model's shift.
    shift_q, shift_f = (qd - q0).flatten(), (fd - f0).flatten()
    assert float(shift_f.norm()) > 0
    assert float(torch.nn.functional.cosine_similarity(shift_q, shift_f, dim=0)) > 0.9
