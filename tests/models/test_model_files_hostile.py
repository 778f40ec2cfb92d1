"""Bad model files give one clean error, never a traceback: empty, truncated
or corrupt safetensors, weights that do not fit config.json, and a .gguf
that is not GGUF. Each is also checked through `lmlang run`."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
from click.testing import CliRunner

from lmlang.cli import main
from lmlang.errors import LmlangRuntimeError
from lmlang.merge.safetensors_io import safetensors_problem
from lmlang.models import loader


@pytest.fixture(autouse=True)
def _fresh_cache():
    loader.clear_model_cache()
    yield
    loader.clear_model_cache()


def copy_model(tiny_model_dir, tmp_path, name="bad"):
    folder = tmp_path / name
    shutil.copytree(tiny_model_dir, folder)
    return folder


def header_of(path) -> tuple[int, dict]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8 : 8 + n])


def damage_empty(f):
    f.write_bytes(b"")


def damage_truncated(f):
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) - 100])


def damage_header_garbage(f):
    f.write_bytes(struct.pack("<Q", 20) + b"{not json at all!!!!" + b"\0" * 64)


def damage_huge_header_length(f):
    raw = f.read_bytes()
    f.write_bytes(struct.pack("<Q", 10**12) + raw[8:])


def damage_offsets(f):
    raw = f.read_bytes()
    n, header = header_of(f)
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 4  # claims more bytes than its shape
    text = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])


@pytest.mark.parametrize(
    "damage, words",
    [
        (damage_empty, "not a safetensors file (empty)"),
        (damage_truncated, "truncated"),
        (damage_header_garbage, "corrupt safetensors header (not JSON"),
        (damage_huge_header_length, "not a safetensors file, or truncated"),
        (damage_offsets, "bytes for a"),
    ],
)
def test_damaged_safetensors_is_one_clean_error(tiny_model_dir, tmp_path, damage, words):
    folder = copy_model(tiny_model_dir, tmp_path)
    damage(folder / "model.safetensors")
    assert words in safetensors_problem(folder / "model.safetensors")
    with pytest.raises(LmlangRuntimeError, match="could not load model from") as info:
        loader.load_model(folder, device="cpu")
    assert words in info.value.message


def test_a_whole_file_has_no_problem(tiny_model_dir):
    assert safetensors_problem(tiny_model_dir / "model.safetensors") == ""


def test_weights_that_do_not_fit_the_config_are_named_by_tensor(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] = cfg["intermediate_size"] * 2
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LmlangRuntimeError) as info:
        loader.load_model(folder, device="cpu")
    msg = info.value.message
    assert "mlp" in msg and "in the weights but config.json makes it" in msg, msg
    assert "same model" in info.value.hint


def test_a_gguf_that_is_not_gguf_is_refused(tmp_path, lmlang_home):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 10)
    with pytest.raises(LmlangRuntimeError, match="is not a GGUF file"):
        loader.resolve_model(str(fake))
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(LmlangRuntimeError, match="is not a GGUF file"):
        loader.resolve_model(str(empty))


def test_a_damaged_gguf_conversion_is_one_line(tmp_path, lmlang_home):
    """GGUF magic, then garbage: the GGUF reader fails deep inside; the
    error is one line naming the file."""
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 200)
    with pytest.raises(LmlangRuntimeError, match="could not convert") as info:
        loader.resolve_model(str(bad))
    assert "\n" not in info.value.message
    assert not list(loader.converted_path(bad.absolute()).parent.glob(".*tmp*"))


@pytest.mark.parametrize("kind", ["truncated", "gguf"])
def test_the_cli_shows_no_traceback(tiny_model_dir, tmp_path, lmlang_home, kind):
    if kind == "truncated":
        folder = copy_model(tiny_model_dir, tmp_path)
        damage_truncated(folder / "model.safetensors")
        spec = str(folder)
    else:
        spec = str(tmp_path / "x.gguf")
        (tmp_path / "x.gguf").write_text("hello")
    f = tmp_path / "t.lm"
    f.write_text(
        f'input t: str = "a"\nmodel m = "{spec}"\n'
        'query q(x: str) using m { "{x} [a]" where a in ["yes", "no"] }\nflow { emit a = q(t).a }\n'
    )
    r = CliRunner().invoke(main, ["run", str(f)])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and "error" in r.output
    assert ("truncated" if kind == "truncated" else "not a GGUF file") in r.output
