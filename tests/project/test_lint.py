"""The lint gate (issue 11): ruff and mypy run clean on the package, as the
test command runs them. Each tool runs as a subprocess of this interpreter from
the repository root, so it reads the configuration in pyproject.toml."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run_tool(module: str, *args: str) -> None:
    # The test extra installs both tools: a missing one is a set-up defect, not a skip.
    assert importlib.util.find_spec(module) is not None, f"{module} is not installed (bash scripts/setup.sh --test)"
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"{module} {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}"


def test_ruff_check_is_clean():
    _run_tool("ruff", "check", "lmlang", "bench", "tests")


def test_ruff_format_is_clean():
    _run_tool("ruff", "format", "--check", "lmlang", "bench", "tests")


def test_mypy_is_clean():
    # The first run in a fresh checkout takes minutes; .mypy_cache makes later ones fast.
    _run_tool("mypy", "lmlang")
