import os
import sys
from pathlib import Path

import pytest

# The tests mirror the package in subfolders (frontend/, runtime/, ...);
# shared helpers (tiny.py, served_server.py) sit here, and a few test modules
# import another's helpers (make_lora, FakeServer), so every folder is importable.
TESTS = Path(__file__).resolve().parent
for _folder in [TESTS, *sorted(p for p in TESTS.iterdir() if p.is_dir() and p.name not in ("fixtures", "__pycache__"))]:
    sys.path.insert(0, str(_folder))

# Tests never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The result cache would answer a test from an earlier test's (or session's)
# decoding; the tests of the cache itself turn it on (tests/runtime/test_result_cache.py).
os.environ.setdefault("LMLANG_CACHE", "0")

from served_server import lora_dir, vllm_server  # noqa: E402,F401  (one real vLLM per test run)

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="session", autouse=True)
def allow_test_folders(tmp_path_factory):
    """Scripts written to one test folder name models and files in others
    (the session's tiny models): allow the whole temporary tree, as a user
    allows a shared models folder. tests/security/test_security.py clears it to test
    confinement itself."""
    old = os.environ.get("LMLANG_ALLOW_PATH")
    os.environ["LMLANG_ALLOW_PATH"] = str(tmp_path_factory.getbasetemp())
    yield
    if old is None:
        os.environ.pop("LMLANG_ALLOW_PATH", None)
    else:
        os.environ["LMLANG_ALLOW_PATH"] = old


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
