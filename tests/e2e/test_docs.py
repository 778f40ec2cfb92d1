"""Every code example in README.md and docs/*.md is executed or checked.

What each fenced block gets (by its info string):

* ```lmlang        -- a complete program; it must pass the checker (relative
                      paths resolve against a copy of examples/, which holds
                      the data, schema, grammar and library files named).
* ```lmlang error  -- must fail to check; the ```text block right after it
                      is the exact error, rendered for a file `example.lm`.
* ```python        -- run, the blocks of one document in order in one
                      namespace, in a copy of the repository's examples/ and
                      docs/data/ where `model X = default` names the tiny
                      random test model instead (so values differ from the
                      real model's, which the docs show; nothing compares them).
* ```console       -- each `$ lmlang ...` line runs in-process (`< FILE`
                      feeds stdin). `check` and `graph` must print exactly the
                      lines shown (they run on the unmodified copy); `run` and
                      `repl` run on the tiny-model copy and must exit 0 and
                      print the same keys (`key: value`, JSON keys) as shown,
                      since the values depend on the model. Other commands
                      (`cat ...`) are run with bash in the same folder; their
                      output is not compared. `models` output is machine-specific.
* anything else (```text, ```jsonl, indented blocks) is not executed.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.M | re.S)


def blocks(path: Path) -> list[tuple[str, str, int]]:
    text = path.read_text(encoding="utf-8")
    return [(m.group(1).strip(), m.group(2), text[: m.start()].count("\n") + 1) for m in FENCE.finditer(text)]


def cases(kind: str):
    out = []
    for doc in DOCS:
        for i, (info, body, line) in enumerate(blocks(doc)):
            if info.split(" ")[0] == kind or info == kind:
                out.append(pytest.param(doc, i, info, body, id=f"{doc.name}:{line}"))
    return out


@pytest.fixture()
def trees(tmp_path, tiny_model_dir):
    """(orig, tiny): fresh copies of examples/ and docs/data/ for each test;
    in `tiny` every `= default` model is the tiny random model."""
    root = tmp_path
    orig, tiny = root / "orig", root / "tiny"
    for dest in (orig, tiny):
        shutil.copytree(REPO / "examples", dest / "examples")
        shutil.copytree(REPO / "docs" / "data", dest / "docs" / "data")
    for f in (tiny / "examples").rglob("*.lm"):
        f.write_text(re.sub(r"(\bmodel\s+\w+\s*=\s*)default\b", rf'\1"{tiny_model_dir}"', f.read_text()))
    return orig, tiny


# ---------------------------------------------------------------- lmlang blocks


@pytest.mark.parametrize("doc, i, info, body", cases("lmlang"))
def test_lmlang_blocks_check(doc, i, info, body, trees):
    from lmlang.errors import ScriptError
    from lmlang.frontend import build

    base = trees[0] / "examples"
    if info == "lmlang error":
        with pytest.raises(ScriptError) as e:
            build(body, "example.lm", base)
        following = blocks(doc)[i + 1]
        assert following[0] == "text", "an `lmlang error` block is followed by a ```text block with the error"
        assert e.value.render() == following[1].rstrip("\n")
    else:
        assert info == "lmlang", f"unknown block kind {info!r}"
        build(body, f"<{doc.name}>", base)


# ---------------------------------------------------------------- python blocks


@pytest.mark.parametrize("doc", [d for d in DOCS if any(b[0] == "python" for b in blocks(d))], ids=lambda d: d.name)
def test_python_blocks_run(doc, trees, monkeypatch, tiny_model_dir):
    import sys
    import types

    monkeypatch.chdir(trees[1])
    module = types.ModuleType(f"docs_{doc.stem}")  # a real module, so pydantic can resolve annotations
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    for info, body, line in blocks(doc):
        if info != "python":
            continue
        body = re.sub(r"(\bmodel\s+\w+\s*=\s*)default\b", rf'\1"{tiny_model_dir}"', body)
        try:
            exec(compile(body, f"{doc.name}:{line}", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the message names the block
            raise AssertionError(f"{doc.name}:{line}: {type(e).__name__}: {e}") from e


# ---------------------------------------------------------------- console blocks


def commands(body: str) -> list[tuple[str, list[str]]]:
    out, cur = [], None
    for line in body.splitlines():
        if line.startswith("$ "):
            cur = (line[2:], [])
            out.append(cur)
        elif cur is not None:
            cur[1].append(line)
    return out


def shown_keys(lines: list[str]) -> set:
    keys = set()
    for line in lines:
        if line.startswith("{"):
            try:
                keys |= set(json.loads(line))
            except ValueError:
                pass
        elif re.match(r"^\w+: ", line):
            keys.add(line.split(":", 1)[0])
    return keys


@pytest.mark.parametrize("doc, i, info, body", cases("console"))
def test_console_blocks(doc, i, info, body, trees, monkeypatch):
    from lmlang.cli import main

    orig, tiny = trees
    for cmd, expected in commands(body):
        argv = shlex.split(cmd)
        if argv[0] != "lmlang" or "|" in argv:
            p = subprocess.run(["bash", "-c", cmd], cwd=tiny, capture_output=True, text=True, timeout=60)
            assert p.returncode == 0, f"{cmd}: {p.stderr}"
            continue
        stdin = None
        if "<" in argv:
            k = argv.index("<")
            stdin = (tiny / argv[k + 1]).read_text()
            argv = argv[:k] + argv[k + 2 :]
        sub = argv[1]
        monkeypatch.chdir(orig if sub in ("check", "graph") else tiny)
        r = CliRunner().invoke(main, argv[1:], input=stdin)
        shows_error = any("error:" in x for x in expected)
        if sub in ("check", "graph"):
            assert r.output.rstrip("\n").splitlines() == expected, cmd
        elif sub in ("run", "repl"):
            assert (r.exit_code != 0) == shows_error, f"{cmd}: exit {r.exit_code}\n{r.output}"
            missing = shown_keys(expected) - shown_keys(r.output.splitlines())
            assert not missing, f"{cmd}: keys {missing} not in\n{r.output}"
        else:
            assert r.exit_code == 0, f"{cmd}\n{r.output}"


def test_every_block_kind_is_known():
    known = {"lmlang", "lmlang error", "python", "console", "text", "jsonl", "csv", "mermaid", ""}
    for doc in DOCS:
        for info, _, line in blocks(doc):
            assert info in known, f"{doc.name}:{line}: unknown block kind {info!r}"


def test_docs_exist_for_each_interface():
    names = {d.name for d in DOCS}
    assert {"language.md", "cli.md", "api.md"} <= names
    index = (REPO / "README.md").read_text()
    for d in ("docs/language.md", "docs/cli.md", "docs/api.md"):
        assert d in index, f"README links {d}"


def test_grammar_constructs_are_documented():
    """Every keyword the grammar knows appears in the language reference."""
    grammar = (REPO / "grammar" / "lmlang.lark").read_text()
    words = set(re.findall(r'"([a-z_]+)"', grammar))
    ref = (REPO / "docs" / "language.md").read_text()
    missing = sorted(w for w in words if not re.search(rf"\b{w}\b", ref))
    assert not missing, f"grammar keywords not in docs/language.md: {missing}"
