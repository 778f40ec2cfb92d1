import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Tests never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from served_server import lora_dir, vllm_server  # noqa: E402,F401  (one real vLLM per test run)

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random tiny Llama with a byte-level BPE tokenizer (seed 0)."""
    from tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir_b(tmp_path_factory, tiny_model_dir) -> Path:
    """A second tiny model with the same architecture and tokenizer, other weights."""
    from tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_b") / "model", seed=1)


@pytest.fixture()
def lmlang_home(tmp_path, monkeypatch) -> Path:
    """An isolated LMLANG_HOME for tests that write caches (the bundled model's
    converted copy stays in the real home so e2e tests convert it once)."""
    home = tmp_path / "lmlang_home"
    monkeypatch.setenv("LMLANG_HOME", str(home))
    return home
