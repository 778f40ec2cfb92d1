"""What a fresh `lmlang check` / `lmlang run` process imports (issues #11 and
#18): each command pays only for what the script needs. Each case runs the
CLI's `main` in a new interpreter, with an empty LMLANG_HOME (no cached
answers hiding an import), and reads sys.modules afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.lm"))

# Never in the front end: the model stack, the graph library, the constraint backends.
MODEL_STACK = ("torch", "transformers", "networkx", "outlines", "outlines_core", "xgrammar", "safetensors", "peft")
# Only when a hole's constraint needs them (a regex, a schema, a grammar, a choice).
CONSTRAINT_BACKENDS = ("llguidance", "jsonschema")
# Never for parsing a script: the parser is the generated module (lmlang/grammar_parser.py).
PARSER_LIBS = ("lark", "regex", "pickle")

PROBE = r"""
import json, sys
from lmlang.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print("@@" + json.dumps([code, sorted(sys.modules)]))
"""


def _cli_modules(args: list[str], home: Path, **env: str) -> set[str]:
    """The top-level packages a fresh CLI process imported."""
    return {m.split(".")[0] for m in _cli_modules_full(args, home, **env)}


def _cli_modules_full(args: list[str], home: Path, **env: str) -> set[str]:
    """Every module (dotted names) a fresh CLI process imported."""
    p = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "LMLANG_HOME": str(home), "HF_HUB_OFFLINE": "1", **env},
    )
    marker = [line for line in p.stdout.splitlines() if line.startswith("@@")]
    assert marker, p.stdout + p.stderr
    code, modules = json.loads(marker[-1][2:])
    assert code == 0, p.stdout + p.stderr
    return set(modules)


def test_check_imports_no_model_stack_no_parser_library_and_no_click(tmp_path):
    loaded = _cli_modules(["check", str(REPO / "examples" / "hello.lm")], tmp_path)
    assert "lmlang" in loaded  # the probe saw the command's own imports
    # click too: `check FILES` is read by lmlang/cli/checking.py (click stays for --help and the other commands)
    heavy = sorted(loaded & set(MODEL_STACK + CONSTRAINT_BACKENDS + PARSER_LIBS + ("click",)))
    assert not heavy, f"`lmlang check hello.lm` imported {heavy}"


def test_check_imports_neither_the_program_api_nor_the_runtime(tmp_path):
    """`import lmlang` loads the API (lmlang.program) on first use, and the
    training rows are read without the trainer, so a check pays only for the
    front end."""
    loaded = _cli_modules_full(["check", *map(str, EXAMPLES)], tmp_path)
    assert "lmlang.frontend" in loaded  # it really checked
    assert "lmlang.models.train_rows" in loaded  # some example's training data was read
    # (the trainer's module: the check reads rows through models/train_rows.py)
    api = sorted(
        m
        for m in loaded
        if m in ("lmlang.program", "lmlang.models.training") or m.split(".")[:2] == ["lmlang", "runtime"]
    )
    assert not api, f"`lmlang check examples/*.lm` imported {api}"


def test_a_cached_check_imports_neither_dataclasses_nor_inspect(tmp_path):
    """The front end's classes are lmlang.frozen's (@frozen, @record), which
    build dataclasses' view only when something asks for it: `dataclasses`
    (and the `inspect`, `ast`, `dis`, `tokenize` it imports) cost a tenth of a
    check. The first check may import them through a constraint backend
    (llguidance); the second reads the backends' answers from LMLANG_HOME."""
    files = [str(p) for p in EXAMPLES]
    _cli_modules(["check", *files], tmp_path)
    again = _cli_modules_full(["check", *files], tmp_path)
    assert "lmlang.frontend" in again and "lmlang.datarun" in again and "lmlang.serving.structured" in again
    heavy = sorted(again & {"dataclasses", "inspect"})
    assert not heavy, f"a second `lmlang check examples/*.lm` imported {heavy}"
    fresh = _cli_modules_full(["check", str(REPO / "examples" / "hello.lm")], tmp_path / "empty")
    assert not fresh & {"dataclasses", "inspect"}, "a fresh check of hello.lm imported dataclasses"


def test_the_program_api_is_still_reachable_from_the_package():
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            "import lmlang, sys; assert 'lmlang.program' not in sys.modules; "
            "from lmlang import compile, compile_file; from lmlang.program import Program; "
            "assert lmlang.Program is Program and lmlang.compile is compile and lmlang.QueryFunction; "
            "assert {'Program', 'compile'} <= set(dir(lmlang)); print('ok')",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert p.stdout.strip() == "ok", p.stderr


def test_a_repeated_check_imports_no_constraint_backend(tmp_path):
    """A regex, schema or grammar hole and a route rule's regex are judged
    once (llguidance, jsonschema); the next check reads the answers from
    LMLANG_HOME, so no example needs a backend twice."""
    files = [str(p) for p in EXAMPLES]
    first = _cli_modules(["check", *files], tmp_path)
    assert "llguidance" in first  # some example has a hole or a rule that needs judging
    again = _cli_modules(["check", *files], tmp_path)
    heavy = sorted(again & set(CONSTRAINT_BACKENDS + ("click",)))
    assert not heavy, f"a second `lmlang check examples/*.lm` imported {heavy}"


def test_check_of_every_example_imports_no_model_stack(tmp_path):
    assert len(EXAMPLES) > 5
    loaded = _cli_modules(["check", *map(str, EXAMPLES)], tmp_path)
    heavy = sorted(loaded & set(MODEL_STACK))
    assert not heavy, f"`lmlang check examples/*.lm` imported {heavy}"


def test_run_without_a_constrained_hole_imports_no_backend(tiny_model_dir, tmp_path):
    script = tmp_path / "free.lm"
    script.write_text(
        f'model m = "{tiny_model_dir}"\n'
        'query q() using m {\n    "Say [a]"\n    where tokens(a) <= 3\n}\n'
        "flow {\n    r = q()\n    emit answer = r.a\n}\n"
    )
    loaded = _cli_modules(["run", str(script), "--json", "--no-cache"], tmp_path / "home", LMLANG_THREADS="1")
    assert {"torch", "transformers"} <= loaded  # it really ran the model
    # (torch itself imports pickle and transformers' tokenizers `regex`: only lark is the parser's to avoid)
    heavy = sorted(loaded & {"networkx", "outlines", "outlines_core", "xgrammar", "lark", *CONSTRAINT_BACKENDS})
    assert not heavy, f"`lmlang run` of a script without constrained holes imported {heavy}"
