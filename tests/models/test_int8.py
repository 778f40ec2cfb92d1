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


def test_int8_refuses_adapters(tiny_model_dir):
    from lmlang.models.adapters import AdapterHost

    q = loader.load_model(tiny_model_dir, device="cpu", dtype="int8")
    with pytest.raises(LmlangRuntimeError, match="int8") as e:
        AdapterHost.for_model(q)
    assert e.value.code == "int8-adapters"
