"""The grammar ships inside the wheel as package data."""

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_contains_grammar(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("lmlang-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "lmlang/grammar/lmlang.lark" in names
    # The generated parser `lmlang check` imports, and the CLI package's `python -m` entry.
    assert {"lmlang/grammar_parser.py", "lmlang/cli/__init__.py", "lmlang/cli/__main__.py"} <= set(names)
    assert (
        zipfile.ZipFile(wheel).read("lmlang/grammar/lmlang.lark").decode()
        == (REPO / "grammar" / "lmlang.lark").read_text()
    )
