"""Model resolution and loading: tiny models for the unit tests, the real
bundled GGUF for the e2e test (converted once into the real LMLANG_HOME)."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmlang.errors import LmlangRuntimeError, ModelNotFoundError
from lmlang.models import loader


@pytest.fixture(autouse=True)
def _fresh_cache():
    loader.clear_model_cache()
    yield
    loader.clear_model_cache()


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "hf" / "hub"
    root.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.delenv("TRANSFORMERS_CACHE", raising=False)
    return root


def fake_hub_model(root: Path, repo: str, src: Path, sha: str = "0123abcd" * 5) -> Path:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<sha>/}."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / sha
    shutil.copytree(src, snapshot)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(sha)
    return snapshot


def test_import_does_not_load_torch():
    code = "import lmlang.models.loader, sys; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_load_tiny_folder(tiny_model_dir):
    loaded = loader.load_model(tiny_model_dir, device="cpu")
    assert loaded.device == "cpu" and loaded.dtype == "float32"
    assert loaded.name == "model" and loaded.path == tiny_model_dir.resolve()
    assert not loaded.model.training
    assert loaded.tokenizer.pad_token is not None
    assert loaded.tokenizer.padding_side == "left"


def test_auto_device_and_dtype_on_this_machine(tiny_model_dir):
    import torch

    loaded = loader.load_model(tiny_model_dir)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert loaded.device == expected
    assert loaded.dtype in ("float32", "bfloat16")


def test_in_process_cache_returns_same_object(tiny_model_dir):
    a = loader.load_model(tiny_model_dir, device="cpu")
    b = loader.load_model(Path(str(tiny_model_dir)), device="cpu", dtype="fp32")
    assert a is b
    c = loader.load_model(tiny_model_dir, device="cpu", dtype="bfloat16")
    assert c is not a and c.dtype == "bfloat16"
    loader.clear_model_cache()
    assert loader.load_model(tiny_model_dir, device="cpu") is not a


def test_pad_token_defaults_to_eos(tiny_model_dir, tmp_path):
    folder = tmp_path / "nopad"
    shutil.copytree(tiny_model_dir, folder)
    cfg = folder / "tokenizer_config.json"
    cfg.write_text(cfg.read_text().replace('"pad_token": "<|endoftext|>"', '"pad_token": null'))
    tok = loader.load_model(folder, device="cpu").tokenizer
    assert tok.pad_token == tok.eos_token


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.pt"])
def test_pickle_only_folder_refused(tmp_path, tiny_model_dir, weights):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder)
    (folder / weights).write_bytes(b"not really a pickle")
    for call in (lambda: loader.load_model(folder), lambda: loader.resolve_model(str(folder))):
        with pytest.raises(LmlangRuntimeError, match="pickle") as info:
            call()
        assert "safetensors" in str(info.value)


def test_empty_folder_has_no_weights(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no model weights"):
        loader.resolve_model(str(tmp_path))


@pytest.mark.parametrize("bad", [dict(device="tpu9"), dict(dtype="float8")])
def test_bad_device_or_dtype(tiny_model_dir, bad):
    with pytest.raises(LmlangRuntimeError, match="unknown"):
        loader.load_model(tiny_model_dir, **bad)


def test_missing_hub_id_names_id_and_dirs(hub_cache):
    with pytest.raises(ModelNotFoundError) as info:
        loader.resolve_model("nobody-here/NoSuchModel-1B")
    text = str(info.value)
    assert "nobody-here/NoSuchModel-1B" in text
    assert str(hub_cache) in text
    assert "huggingface-cli download nobody-here/NoSuchModel-1B" in text


def test_hub_id_found_in_fake_cache(hub_cache, tiny_model_dir):
    snapshot = fake_hub_model(hub_cache, "tiny-org/Tiny-Llama", tiny_model_dir)
    path = loader.resolve_model("tiny-org/Tiny-Llama")
    assert path == snapshot
    loaded = loader.load_model(path, device="cpu")
    assert loaded.name == "tiny-org/Tiny-Llama"


def test_hub_cache_from_hf_home(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    (tmp_path / "hfhome" / "hub").mkdir(parents=True)
    snapshot = fake_hub_model(tmp_path / "hfhome" / "hub", "a/b", tiny_model_dir)
    assert loader.hub_cache_dirs()[0] == tmp_path / "hfhome" / "hub"
    assert loader.resolve_model("a/b") == snapshot


def test_existing_path_wins_over_hub_id(hub_cache, tmp_path, tiny_model_dir):
    script_dir = tmp_path / "script"
    shutil.copytree(tiny_model_dir, script_dir / "tiny-org" / "Tiny-Llama")
    assert loader.resolve_model("tiny-org/Tiny-Llama", base_dir=script_dir) == script_dir / "tiny-org" / "Tiny-Llama"


def test_relative_paths_resolve_against_base_dir(tmp_path):
    with pytest.raises(ModelNotFoundError) as info:
        loader.resolve_model("./weights/model.gguf", base_dir=tmp_path)
    assert str(tmp_path / "weights" / "model.gguf") in str(info.value)


def test_content_key(tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    data = os.urandom(3 * (1 << 20))
    a.write_bytes(data)
    b.write_bytes(data)
    assert loader.content_key(a) == loader.content_key(b)
    b.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert loader.content_key(a) != loader.content_key(b)


# ------------------------------------------------------------ atomic publish


def _race_publisher(final: str, barrier, tag: int) -> None:
    final_path = Path(final)
    tmp = loader._temp_dir_for(final_path)
    for i in range(20):  # enough files that a torn folder would show
        (tmp / f"part{i}.txt").write_text(str(tag))
    (tmp / loader.MARKER).write_text('{"name": "race"}')
    barrier.wait()
    assert loader.publish_dir(tmp, final_path) == final_path


def test_publish_race_leaves_one_complete_folder(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    final = tmp_path / "models" / "thing-abc"
    final.parent.mkdir()
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_race_publisher, args=(str(final), barrier, t)) for t in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert [p.name for p in final.parent.iterdir()] == [final.name]
    assert loader.is_complete(final)
    tags = {(final / f"part{i}.txt").read_text() for i in range(20)}
    assert len(tags) == 1  # every file from the same winner


def test_publish_refuses_foreign_folder(tmp_path):
    final = tmp_path / "x"
    (final / "junk").mkdir(parents=True)
    tmp = loader._temp_dir_for(final)
    (tmp / loader.MARKER).write_text("{}")
    with pytest.raises(LmlangRuntimeError, match="not a complete"):
        loader.publish_dir(tmp, final)
    assert not tmp.exists()


def _fake_convert(gguf: Path, out: Path) -> None:
    import time

    with open(out.parent / "conversions.log", "a") as log:
        log.write(f"{os.getpid()}\n")
    time.sleep(0.5)
    (out / "model.safetensors").write_bytes(b"")


def _race_converter(gguf: str, home: str, barrier) -> None:
    os.environ["LMLANG_HOME"] = home
    loader._convert_into = _fake_convert  # stand-in for the 30 s transformers work
    barrier.wait()
    loader.convert_gguf(Path(gguf))


def test_convert_gguf_runs_once_under_race(tmp_path, lmlang_home):
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(os.urandom(4096))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_race_converter, args=(str(gguf), str(lmlang_home), barrier)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    models = lmlang_home / "models"
    assert len((models / "conversions.log").read_text().split()) == 1
    final = loader.converted_path(gguf)
    assert loader.is_complete(final) and loader.model_name(final) == "fake"
    assert not list(models.glob(".tmp-*"))


def test_orphan_temp_from_killed_conversion_is_removed(tmp_path, lmlang_home, monkeypatch):
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"x" * 100)
    final = loader.converted_path(gguf)
    orphan = final.parent / f".tmp-{final.name}-999999999-deadbeef"
    orphan.mkdir()
    monkeypatch.setattr(loader, "_convert_into", lambda g, out: (out / "model.safetensors").write_bytes(b""))
    assert loader.convert_gguf(gguf) == final
    assert not orphan.exists()


def test_gguf_only_hub_repo_is_converted_under_its_file_name(hub_cache, lmlang_home, monkeypatch):
    # huggingface_hub stores files as blobs named by hash, linked from the snapshot.
    repo_dir = hub_cache / "models--q--Tiny-GGUF"
    (repo_dir / "blobs").mkdir(parents=True)
    (repo_dir / "blobs" / "9f86d081884c").write_bytes(b"gguf" * 64)
    snapshot = repo_dir / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "tiny.Q4_0.gguf").symlink_to("../../blobs/9f86d081884c")
    monkeypatch.setattr(loader, "_convert_into", lambda g, out: (out / "model.safetensors").write_bytes(b""))
    path = loader.resolve_model("q/Tiny-GGUF")
    assert path.parent == lmlang_home / "models" and path.name.startswith("tiny.Q4_0-")
    assert loader.model_name(path) == "tiny.Q4_0"


def test_list_models(hub_cache, lmlang_home, tiny_model_dir, tmp_path, monkeypatch):
    fake_hub_model(hub_cache, "tiny-org/Tiny-Llama", tiny_model_dir)
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"y" * 100)
    monkeypatch.setattr(loader, "_convert_into", lambda g, out: (out / "model.safetensors").write_bytes(b"w"))
    loader.convert_gguf(gguf)
    rows = {row["name"]: row for row in loader.list_models()}
    assert rows["default"]["kind"] == "default"
    assert rows["mine"]["kind"] == "converted" and rows["mine"]["ready"]
    assert rows["tiny-org/Tiny-Llama"]["kind"] == "hub" and rows["tiny-org/Tiny-Llama"]["size"] > 0


# ------------------------------------------------------------ e2e


@pytest.mark.e2e
def test_default_model_answers_paris():
    import torch

    path = loader.resolve_model("default")  # real LMLANG_HOME: converted once across runs
    assert loader.is_complete(path)
    loaded = loader.load_model(path, device="cpu")
    tok = loaded.tokenizer
    assert tok.chat_template
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = loaded.model.generate(**inputs, max_new_tokens=20, do_sample=False)
    text = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in text
