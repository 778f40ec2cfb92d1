"""The managed server's command line, environment and venv recipe (no server started)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmlang.serving import vllm_env
from lmlang.serving.server import ServerOptions, ServerStartError, lora_rank_for, server_args, server_env, start_server


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def test_cpu_defaults_are_the_measured_fast_start(monkeypatch):
    for name in ("OMP_NUM_THREADS", "VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    args = server_args(ServerOptions(), Path("/m"), "smol", 8123, "cpu")
    assert args[:8] == ["--model", "/m", "--served-model-name", "smol", "--host", "127.0.0.1", "--port", "8123"]
    assert _flag(args, "--dtype") == "float32" and _flag(args, "--max-model-len") == "2048"
    assert "--enforce-eager" in args and _flag(args, "--distributed-executor-backend") == "uni"
    assert _flag(args, "--generation-config") == "vllm"
    assert json.loads(_flag(args, "--structured-outputs-config")) == {"backend": "guidance"}
    assert "--gpu-memory-utilization" not in args and "--enable-lora" not in args
    env = server_env("cpu")
    assert env["OMP_NUM_THREADS"] == "1" and env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and env["HF_HUB_OFFLINE"] == "1"
    assert "PYTHONPATH" not in env


def test_gpu_options_pass_through(monkeypatch):
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    opts = ServerOptions(tensor_parallel=2, dtype="bfloat16", max_model_len=4096, gpu_memory=0.9, args=("--seed", "3"))
    args = server_args(opts, Path("/m"), "big", 1, "cuda")
    assert _flag(args, "--tensor-parallel-size") == "2" and _flag(args, "--dtype") == "bfloat16"
    assert _flag(args, "--max-model-len") == "4096" and _flag(args, "--gpu-memory-utilization") == "0.9"
    assert "--enforce-eager" not in args and args[-2:] == ["--seed", "3"]
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in server_env("cuda")


def _adapter(folder: Path, r: int, rank_pattern: dict | None = None) -> str:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": r, "rank_pattern": rank_pattern or {}}))
    return str(folder)


def test_lora_modules_get_the_smallest_rank_vllm_accepts(tmp_path):
    a = _adapter(tmp_path / "a", 4)
    b = _adapter(tmp_path / "b", 8, {"q_proj": 24})
    assert lora_rank_for([a]) == 8
    assert lora_rank_for([a, b]) == 32
    args = server_args(ServerOptions(lora_modules=(("a", a), ("b", b))), Path("/m"), "n", 1, "cpu")
    assert "--enable-lora" in args and _flag(args, "--max-lora-rank") == "32" and _flag(args, "--max-loras") == "2"
    i = args.index("--lora-modules")
    assert args[i + 1 : i + 3] == [f"a={a}", f"b={b}"]
    big = _adapter(tmp_path / "c", 1024)
    with pytest.raises(ServerStartError, match="rank 1024"):
        lora_rank_for([big])


def test_a_lora_module_must_be_an_adapter_folder(tmp_path):
    with pytest.raises(ServerStartError, match="not a PEFT adapter folder"):
        start_server(ServerOptions(model="default", lora_modules=(("x", str(tmp_path)),)), progress=False)


def test_options_key_tells_configurations_apart():
    assert ServerOptions().key() == ServerOptions().key()
    assert ServerOptions().key() != ServerOptions(max_model_len=1024).key()


def test_flavor_and_venv_recipe(monkeypatch, tmp_path):
    monkeypatch.setenv("LMLANG_VLLM_FLAVOR", "cuda")
    assert vllm_env.vllm_flavor() == "cuda"
    monkeypatch.setenv("LMLANG_VLLM_FLAVOR", "cpu")
    assert vllm_env.vllm_flavor() == "cpu"
    assert vllm_env.venv_path("cpu").name == f"vllm-cpu-{vllm_env.VLLM_VERSION}"
    # a stamp from another recipe (or none) means "build again"
    root = tmp_path / "v"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python").write_text("")
    assert vllm_env._read_stamp(root, "cpu") is None
    (root / vllm_env.STAMP).write_text(json.dumps({"recipe": "old"}))
    assert vllm_env._read_stamp(root, "cpu") is None
    (root / vllm_env.STAMP).write_text(
        json.dumps({"recipe": vllm_env._recipe("cpu"), "package": "vllm-cpu", "version": "0.32.0", "flavor": "cpu"})
    )
    assert vllm_env._env_from(root, vllm_env._read_stamp(root, "cpu")).server_argv()[1:] == [
        "-m",
        vllm_env.SERVER_MODULE,
    ]


def test_an_external_python_without_vllm_is_reported(monkeypatch):
    import sys

    monkeypatch.setenv("LMLANG_VLLM_PYTHON", sys.executable)
    with pytest.raises(vllm_env.VllmInstallError, match="cannot import vllm"):
        vllm_env.ensure_vllm(progress=False)


def test_servers_of_dead_owners_are_reaped(lmlang_home):
    import subprocess
    import sys

    from lmlang.serving import server as srv

    dead_owner = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_owner.wait()
    # stand-ins for vLLM: their command line names the server module, as the real one does
    argv = [sys.executable, "-c", "import time; time.sleep(120)", vllm_env.SERVER_MODULE]
    orphan = subprocess.Popen(argv, start_new_session=True)
    owned = subprocess.Popen(argv, start_new_session=True)
    try:
        for proc, owner in ((orphan, dead_owner.pid), (owned, __import__("os").getpid())):
            srv._record(proc.pid).write_text(json.dumps({"server_pid": proc.pid, "owner_pid": owner, "port": 1}))
        assert srv.reap_orphans(progress=False) == [orphan.pid]
        assert orphan.wait(timeout=15) is not None
        assert owned.poll() is None and srv._record(owned.pid).exists()
        assert not srv._record(orphan.pid).exists()
    finally:
        for p in (orphan, owned):
            if p.poll() is None:
                p.kill()
                p.wait()
