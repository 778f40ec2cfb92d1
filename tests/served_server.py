"""ONE real vLLM server for the whole test run (tests marked `vllm`), shared by
every module that asks for it: tests/conftest.py imports these fixtures, so
pytest makes them once per session.

The server serves the bundled model as "smollm2" with LoRA support (runtime
loading on, max rank 64) and one small random adapter "rnd". Scripts that
declare `model m = vllm default` (with or without adapters) reuse it: the
runtime asks lmlang.serving.server.start_server for the same engine settings,
and a LoRA-enabled server serves those (ManagedServer.serves).

    LMLANG_SKIP_VLLM=1                          skip every vllm test
    LMLANG_TEST_VLLM_URL=http://127.0.0.1:PORT/v1   use a server already running on this machine,
        started with server_options() (for example by `python tests/served_server.py`)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

SERVED = "smollm2"
LORA = "rnd"


def server_options(lora_dir: Path | None = None):
    from lmlang.serving.server import ServerOptions

    modules = ((LORA, str(lora_dir)),) if lora_dir is not None else ()
    return ServerOptions(model="default", name=SERVED, lora_modules=modules, enable_lora=True, max_lora_rank=64)


def make_lora(out: Path) -> Path:
    """A LoRA adapter with seeded random A and B (no training needed): it changes
    the model's output, deterministically, so served and local results compare."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lmlang.models.loader import resolve_model

    if (out / "adapter_config.json").is_file():
        return out
    model = AutoModelForCausalLM.from_pretrained(resolve_model("default"), dtype=torch.float32)
    torch.manual_seed(0)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def lora_dir() -> Path:
    """In the lmlang home, so a server reused across test runs (LMLANG_TEST_VLLM_URL)
    sees the same folder under the same module name."""
    from lmlang.home import cache_dir

    folder = make_lora(cache_dir("test-adapters") / LORA)
    # Scripts in the tests name this folder by its absolute path: allow it, as
    # a user allows a shared adapters folder (scripts are confined otherwise).
    allowed = [p for p in os.environ.get("LMLANG_ALLOW_PATH", "").split(os.pathsep) if p]
    os.environ["LMLANG_ALLOW_PATH"] = os.pathsep.join([*allowed, str(Path(folder).parent)])
    return folder


@pytest.fixture(scope="session")
def vllm_server(lora_dir):
    if os.environ.get("LMLANG_SKIP_VLLM"):
        pytest.skip("LMLANG_SKIP_VLLM is set")
    from lmlang.serving.server import attach_server, start_server

    url = os.environ.get("LMLANG_TEST_VLLM_URL")
    if url:
        server = attach_server(url, server_options(), SERVED)
        server.load_lora(LORA, str(lora_dir))
        yield server
        return
    server = start_server(server_options(lora_dir))
    yield server
    server.stop()


if __name__ == "__main__":  # a server for LMLANG_TEST_VLLM_URL, until interrupted
    from lmlang.serving.server import start_server

    s = start_server(server_options())
    print(f"LMLANG_TEST_VLLM_URL={s.base_url}", flush=True)
    try:
        while s.alive():
            time.sleep(5)
    except KeyboardInterrupt:
        sys.exit(0)
