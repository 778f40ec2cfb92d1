"""torch's thread count: one setting (LMLANG_THREADS, --threads, threads=)
and a default that counts only idle cores."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import lmlang
from lmlang.runtime import threads as T

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "cores, load, want",
    [
        (2, 0.3, 2),  # an idle 2-core machine: both cores
        (2, 1.2, 1),  # one core busy
        (2, 9.9, 1),  # a machine shared with many jobs: never fewer than one, never torch's 2
        (16, 0.5, 4),  # many idle cores: at most 4 by default
        (8, 5.0, 3),
    ],
)
def test_default_counts_the_idle_cores(cores, load, want):
    assert T.default_threads(cores=cores, load=load) == want


def test_explicit_setting_wins_over_the_default(monkeypatch):
    monkeypatch.delenv(T.ENV, raising=False)
    assert T.requested_threads() is None
    monkeypatch.setenv(T.ENV, "3")
    assert T.requested_threads() == 3 and T.requested_threads(2) == 2
    monkeypatch.setenv(T.ENV, "many")
    with pytest.raises(lmlang.LmlangRuntimeError, match="LMLANG_THREADS"):
        T.requested_threads()
    with pytest.raises(ValueError):
        T.requested_threads(0)


def run_in_fresh_process(code: str, **env) -> str:
    e = {**os.environ, "PYTHONPATH": str(REPO), **env}
    if "LMLANG_THREADS" not in env:
        e.pop("LMLANG_THREADS", None)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=300)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_the_api_option_and_the_environment_reach_torch(tiny_model_dir):
    src = (
        f'model m = "{tiny_model_dir}"\nquery q() using m {{ "Hi [a]" where tokens(a) <= 2 }}\n'
        'flow { emit a = q().a }'
    )
    code = (
        "import lmlang, torch\n"
        f"src = {src!r}\n"
        "lmlang.compile(src, threads=1).run()\nprint(torch.get_num_threads())\n"
        "lmlang.compile(src).run()\nprint(torch.get_num_threads())\n"
    )
    assert run_in_fresh_process(code, LMLANG_THREADS="2").split() == ["1", "2"]
    default = int(run_in_fresh_process(code.replace("threads=1", "threads=None")).split()[0])
    assert 1 <= default <= T.MAX_DEFAULT and default <= T.usable_cores()


def test_the_cli_passes_threads_to_the_runtime(tiny_model_dir, tmp_path):
    script = tmp_path / "s.lm"
    script.write_text(
        f'model m = "{tiny_model_dir}"\nquery q() using m {{ "Hi [a]" where tokens(a) <= 2 }}\n'
        'flow { emit a = q().a }\n'
    )
    code = (
        "import sys, torch\nfrom lmlang.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    print(torch.get_num_threads())\n"
    )
    out = run_in_fresh_process(code.replace("main()", f"main(['run', {str(script)!r}, '--threads', '1'])"))
    assert out.splitlines()[-1] == "1"
