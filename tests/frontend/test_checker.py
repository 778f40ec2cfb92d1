"""Checker rules that need a file system set up per test, or that the golden
fixtures do not show well: LoRA folders, paths relative to the script,
imports, the diagnostic cap, rendering, the CLI's JSON form, and that
checking never imports torch, transformers or networkx."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmlang.checker import MAX_DIAGNOSTICS
from lmlang.cli import main
from lmlang.errors import CheckError
from lmlang.frontend import build, build_file

REPO = Path(__file__).resolve().parents[2]


def errors(text: str, tmp_path: Path | None = None) -> list[str]:
    try:
        if tmp_path is not None:
            f = tmp_path / "main.lm"
            f.write_text(text)
            build_file(f)
        else:
            build(text)
    except CheckError as e:
        return [d.message for d in e.diagnostics]
    return []


def test_lora_folder_needs_adapter_config(tmp_path):
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "adapter_config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    text = (
        'model base = default\nadapter a = lora "good"\nadapter b = lora "empty"\nadapter c = lora "none"\n'
        "model m = base + a * 0.5\n"
    )
    msgs = errors(text, tmp_path)
    assert msgs == ["'empty' is not a PEFT LoRA folder (no adapter_config.json)", "adapter not found: none"]
    fe = build_file(tmp_path / "main.lm") if not msgs else None
    assert fe is None
    (tmp_path / "main.lm").write_text('model base = default\nadapter a = lora "good"\nmodel m = base + a * 0.5\n')
    fe = build_file(tmp_path / "main.lm")
    lora = fe.compiled.spec(fe.compiled.names["a"])
    assert lora.kind == "lora" and lora.path == str((tmp_path / "good").resolve())
    from lmlang.graph import node_label

    assert node_label(fe.compiled, fe.compiled.names["m"]) == "base + a*0.5"


def test_paths_resolve_relative_to_the_script_not_the_cwd(tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "lib").mkdir()
    (proj / "data" / "d.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (proj / "lib" / "s.json").write_text('{"type": "object"}')
    (proj / "lib" / "shared.lm").write_text(
        'model base = default\nquery q() using base { assistant "[a]" where a is json "s.json" }\n'
    )
    (proj / "main.lm").write_text(
        'use "lib/shared.lm"\nadapter t = train lora on "data/d.jsonl"\nflow { emit a = q().a }\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    fe = build_file(Path("..") / "proj" / "main.lm")
    train = fe.compiled.spec(fe.compiled.names["t"])
    assert train.data == str((proj / "data" / "d.jsonl").resolve())


def test_import_diamond_is_one_declaration(tmp_path):
    (tmp_path / "base.lm").write_text("model base = default\n")
    (tmp_path / "a.lm").write_text('use "base.lm"\n')
    (tmp_path / "b.lm").write_text('use "base.lm"\n')
    assert errors('use "a.lm"\nuse "b.lm"\nquery q() using base { assistant "[x]" }\n', tmp_path) == []


def test_self_import_is_a_cycle(tmp_path):
    assert any("import cycle" in m for m in errors('use "main.lm"\n', tmp_path))


def test_an_imported_flow_does_not_run_and_its_names_join(tmp_path):
    (tmp_path / "lib.lm").write_text(
        'model m = default\nquery hello() using m { assistant "[a]" }\nflow { emit x = 1 }\n'
    )
    (tmp_path / "main.lm").write_text('use "lib.lm"\nflow { emit y = hello().a }\n')
    fe = build_file(tmp_path / "main.lm")
    assert len(fe.compiled.steps) == 1 and "hello" in fe.checked.queries


def test_diagnostics_are_capped():
    text = "model base = default\n" + "".join(f"model m{i} = nosuch{i}\n" for i in range(MAX_DIAGNOSTICS * 2))
    with pytest.raises(CheckError) as ei:
        build(text)
    ds = ei.value.diagnostics
    assert len(ds) == MAX_DIAGNOSTICS + 1 and ds[-1].code == "too-many-errors"


def test_rendering_has_location_line_underline_and_hint():
    with pytest.raises(CheckError) as ei:
        build('model base = default\nquery q() using bsae { assistant "[a]" }\n', "x.lm")
    text = ei.value.render()
    lines = text.splitlines()
    assert lines[0] == "x.lm:2:17: error: undefined model 'bsae'"
    assert lines[1] == "   2 | query q() using bsae { assistant \"[a]\" }"
    assert lines[2] == "       " + " " * 16 + "^^^^"
    assert lines[3] == "  hint: did you mean 'base'?"


def test_multi_line_spans_underline_every_line():
    from lmlang.source import Source, Span

    src = Source("a = 1\n  bb = 2\n  ccc = 3\n", "s.lm")
    out = src.underline(Span(1, 5, 3, 6, "s.lm")).splitlines()
    assert out[1].endswith("^") and out[3].strip() == "^^^^^^" and out[5].strip() == "^^^"


def test_several_errors_listed_and_exit_code_2_and_json(tmp_path):
    f = tmp_path / "bad.lm"
    f.write_text('model base = default\nquery q() using nope { assistant "[a]" where b is int }\n')
    r = CliRunner().invoke(main, ["check", str(f)])
    assert r.exit_code == 2
    assert r.output.count("error:") == 2 and "2 errors" in r.output
    r = CliRunner().invoke(main, ["check", "--format", "json", str(f)])
    assert r.exit_code == 2
    report = json.loads(r.output)
    assert report["ok"] is False and len(report["diagnostics"]) == 2
    assert {"file", "line", "col", "end_line", "end_col", "message", "hint", "severity", "code"} <= set(
        report["diagnostics"][0]
    )


def test_unconstrained_hole_rule():
    ok = 'model b = default\nquery q() using b { user "hi" assistant "Sure: [a]" }\n'
    assert errors(ok) == []
    plain_last = 'model b = default\nquery q() using b { "Q: hi\\nA: [a]" }\n'
    assert errors(plain_last) == []
    mid = 'model b = default\nquery q() using b { assistant "[a] and more" }\n'
    assert errors(mid) == ['hole [a] has no constraint, so nothing says where it ends']


def test_check_never_imports_heavy_modules():
    code = (
        "import sys\nfrom lmlang.cli import main\n"
        "try:\n    main(['check', *sys.argv[1:]])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'networkx', 'peft') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    files = [str(p) for p in sorted((REPO / "examples").glob("*.lm"))]
    p = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "HEAVY []" in p.stdout, p.stdout


def test_graph_command_writes_each_format(tmp_path):
    f = REPO / "examples" / "review.lm"
    for fmt, probe in (("dot", "digraph lmlang"), ("mermaid", "flowchart LR"), ("json", '"version": 2')):
        out = tmp_path / f"g.{fmt}"
        r = CliRunner().invoke(main, ["graph", str(f), "--format", fmt, "-o", str(out)])
        assert r.exit_code == 0, r.output
        assert probe in out.read_text()


def test_merge_step_options_dtype_rank_compat(tmp_path):
    """compat, dtype and rank are options of the merge step (not the method):
    checked here, passed to the merge by the builder."""
    for d in ("ad", "bd"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "adapter_config.json").write_text("{}")
    head = 'model base = default\nadapter a = lora "ad"\nadapter b = lora "bd"\n'
    model_merge = head + 'model m = merge ties {{ base: base, models: {{ base + a: 1.0, base + b: 1.0 }}, {opt} }}\n'
    adapter_merge = head + 'adapter ab = merge ties {{ models: {{ a: 1.0, b: 1.0 }}, {opt} }}\nmodel m = base + ab\n'
    use = 'query q(x: str) using m { user "{x}" assistant "[y]" }\n'
    ok = [
        model_merge.format(opt='dtype: "bfloat16", compat: "mergekit", density: 0.5'),
        adapter_merge.format(opt='rank: 8, dtype: "float16"'),
    ]
    for src in ok:
        assert errors(src + use, tmp_path) == []
    assert errors(model_merge.format(opt='dtype: "bf17"') + use, tmp_path) == ["unknown merge dtype 'bf17'"]
    assert errors(model_merge.format(opt="rank: 8") + use, tmp_path) == [
        "rank applies to adapter merges (the rank of the merged LoRA)"
    ]
    assert errors(adapter_merge.format(opt="rank: 0") + use, tmp_path) == ["rank must be a positive integer, got 0"]
    f = tmp_path / "ok.lm"
    f.write_text(ok[1] + use)
    spec = build_file(f).compiled
    assert dict(spec.spec(spec.names["ab"]).options) == {"rank": 8, "dtype": "float16"}
