"""The GPU path, checked on CPU: sampling never copies a vector to the host,
training runs on the requested device, inference dtypes per model, and a
device map for models larger than one device."""

import json

import pytest
import torch
from torch.overrides import TorchFunctionMode

import lmlang
from lmlang.runtime.decode import Sampler

HOST_COPIES = {torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.tolist, torch.Tensor.__array__}


class HostCopies(TorchFunctionMode):
    """Records the tensor methods that copy more than one value to the host.
    (On this CPU-only machine a `.to(device)` cannot be told from a host
    copy, so the code under test never moves tensors to "cpu" by name: it
    moves inputs to the model's device and reads back only scalars.)"""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else None
        if func in HOST_COPIES and isinstance(target, torch.Tensor) and target.numel() > 1:
            self.seen.append(getattr(func, "__name__", str(func)))
        return func(*args, **kwargs)


@pytest.mark.parametrize("options", [{}, {"top_k": 5}, {"top_p": 0.8}, {"temperature": 0.5, "top_k": 3, "top_p": 0.9}])
def test_sampling_brings_only_the_token_id_to_the_host(options):
    logits = torch.randn(400)
    s = Sampler(False, seed=3, **{"temperature": 1.0, **options})
    with HostCopies() as mode:
        picks = [s.pick(logits) for _ in range(5)]
    assert mode.seen == [] and all(0 <= p < 400 for p in picks)
    assert s.generator.device == logits.device
    again = Sampler(False, seed=3, **{"temperature": 1.0, **options})
    assert [again.pick(logits) for _ in range(5)] == picks


def test_a_forward_step_keeps_the_logits_on_the_device(tiny_model_dir):
    from lmlang.models.loader import load_model
    from lmlang.runtime.lm import HFModel

    lm = HFModel(load_model(tiny_model_dir, device="cpu"))
    batch = lm.new_batch(2)
    batch.feed([lm.encode("Hello there", first=True), lm.encode("Hi", first=True)])
    with HostCopies() as mode:
        for _ in range(3):
            batch.feed([[5], [6]])
    assert mode.seen == []


def test_training_runs_on_the_requested_device(tiny_model_dir, tmp_path, lmlang_home):
    from lmlang.errors import LmlangRuntimeError
    from lmlang.models.training import train_lora, training_device

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"say {w}", "completion": w}) + "\n" for w in ("yes", "no", "cat")))
    seen = []
    real = torch.nn.Module.to

    def spy(self, *args, **kwargs):
        seen.append(str(args[0]) if args else str(kwargs.get("device")))
        return real(self, *args, **kwargs)

    torch.nn.Module.to = spy
    try:
        result = train_lora(tiny_model_dir, rows, {"epochs": 1, "rank": 2}, progress=False, device="cpu")
    finally:
        torch.nn.Module.to = real
    assert "cpu" in seen and (result.path / "adapter_model.safetensors").is_file()
    assert training_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(LmlangRuntimeError, match="CUDA is not available"):
            training_device("cuda")


def test_dtype_per_model_and_for_every_model(tiny_model_dir, tiny_model_dir_b):
    src = (
        f'model a = "{tiny_model_dir}"\nmodel b = "{tiny_model_dir_b}"\n'
        'query qa() using a { "Hi [x]" where tokens(x) <= 3 }\n'
        'query qb() using b { "Hi [x]" where tokens(x) <= 3 }\n'
        'flow { emit a = qa().x, b = qb().x }\n'
    )

    def dtypes(prog):
        prog.run()
        ex = prog._executor()
        return {
            name: str(next(ex.lm(prog.frontend.compiled.names[name]).model.parameters()).dtype) for name in ("a", "b")
        }

    assert dtypes(lmlang.compile(src, device="cpu", cache=False)) == {"a": "torch.float32", "b": "torch.float32"}
    assert dtypes(lmlang.compile(src, device="cpu", cache=False, dtype={"b": "bfloat16"})) == {
        "a": "torch.float32",
        "b": "torch.bfloat16",
    }
    assert dtypes(lmlang.compile(src, device="cpu", cache=False, dtype="float16")) == {
        "a": "torch.float16",
        "b": "torch.float16",
    }
    with pytest.raises(lmlang.LmlangRuntimeError, match="no model named 'c'"):
        lmlang.compile(src, device="cpu", cache=False, dtype={"c": "float16"}).run()
    with pytest.raises(ValueError, match="dtype"):
        lmlang.compile(src, dtype="int4")


def test_the_cli_dtype_option(tiny_model_dir, tmp_path):
    from click.testing import CliRunner

    from lmlang.cli import _parse_dtypes, main

    assert _parse_dtypes(()) == "auto" and _parse_dtypes(("bfloat16",)) == "bfloat16"
    assert _parse_dtypes(("a=float16", "b=bfloat16")) == {"a": "float16", "b": "bfloat16"}
    f = tmp_path / "s.lm"
    f.write_text(
        f'model m = "{tiny_model_dir}"\nquery q() using m {{ "Hi [x]" where tokens(x) <= 3 }}\n'
        'flow { emit x = q().x }\n'
    )
    r = CliRunner().invoke(main, ["run", str(f), "--dtype", "m=bfloat16", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["run", str(f), "--dtype", "float16", "--dtype", "bfloat16"])
    assert r.exit_code == 2 and "--dtype" in r.output


def test_a_device_map_places_the_model_and_decodes_the_same(tiny_model_dir, monkeypatch):
    """accelerate places the layers (here all on the one CPU); inputs go to the
    input embeddings' device, and decoding is unchanged."""
    from transformers import AutoModelForCausalLM

    maps = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        maps.append(kwargs.get("device_map"))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    src = (
        f'model m = "{tiny_model_dir}"\nquery q(x: str) using m {{ "Say {{x}}: [w]" where tokens(w) <= 5 }}\n'
        'input t: str\nflow { emit w = q(t).w }\n'
    )
    plain = lmlang.compile(src, device="cpu", cache=False)
    layers = {
        "model.embed_tokens": "cpu",
        "model.layers": "cpu",
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    mapped = lmlang.compile(src, device="cpu", cache=False, device_map=layers)
    rows = [{"t": "cat"}, {"t": "a long dog"}]
    assert mapped.run_batch(rows) == plain.run_batch(rows)
    assert layers in maps
    loaded = mapped._executor().lm(mapped.frontend.compiled.names["m"]).loaded
    assert loaded.device == "cpu" and loaded is not plain._executor().lm(plain.frontend.compiled.names["m"]).loaded
