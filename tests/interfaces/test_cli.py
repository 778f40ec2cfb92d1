"""The CLI's contract: exit codes, error rendering, no tracebacks."""

import json
import subprocess
import sys

from click.testing import CliRunner

from lmlang.cli import main

BAD = 'model base = default\nquery q(x: str) using base {\n    user "hi {x}"\n    assistant "[a]"\n    where a in ["x" "y"]\n}\n'


def test_syntax_error_shows_location_caret_hint_and_exits_2(tmp_path):
    f = tmp_path / "bad.lm"
    f.write_text(BAD)
    r = CliRunner().invoke(main, ["check", str(f)])
    assert r.exit_code == 2
    out = r.output
    assert f"{f}:5:" in out
    assert '    where a in ["x" "y"]' in out
    assert "^" in out and "hint:" in out
    assert "Traceback" not in out


def test_check_error_exit_2_and_json_format(tmp_path):
    f = tmp_path / "undef.lm"
    f.write_text('query q(x: str) using nosuch {\n  "[a]"\n  where a in ["x"]\n}\n')
    r = CliRunner().invoke(main, ["check", "--format", "json", str(f)])
    assert r.exit_code == 2
    report = json.loads(r.output)
    assert report["ok"] is False
    d = report["diagnostics"][0]
    assert d["line"] == 1 and d["message"] == "undefined model 'nosuch'"


def test_missing_file_is_a_clean_error(tmp_path):
    r = CliRunner().invoke(main, ["run", str(tmp_path / "nope.lm")])
    assert r.exit_code == 2
    assert "no such file" in r.output and "Traceback" not in r.output


def test_run_prints_emitted_values_on_tiny_model(tiny_model_dir, tmp_path):
    f = tmp_path / "t.lm"
    f.write_text(
        f'input t: str\nmodel m = "{tiny_model_dir}"\nquery q(x: str) using m {{ "{{x}} [a]" where a in ["yes", "no"] }}\nflow {{ r = q(t) emit answer = r.a }}\n'
    )
    r = CliRunner().invoke(main, ["run", str(f), "--set", "t=hello", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["answer"] in ("yes", "no")


def test_subprocess_error_has_no_traceback(tmp_path):
    f = tmp_path / "bad.lm"
    f.write_text("model = default\n")
    p = subprocess.run([sys.executable, "-m", "lmlang.cli", "run", str(f)], capture_output=True, text=True)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert f"{f}:1:7" in p.stderr


def test_threads_option_and_env_set_torch_threads(tiny_model_dir, tmp_path, monkeypatch):
    import torch

    f = tmp_path / "t.lm"
    f.write_text(
        f'model m = "{tiny_model_dir}"\nquery q() using m {{\n    "Say [a]"\n    where a in ["yes", "no"]\n}}\n'
        'flow {\n    r = q()\n    emit answer = r.a\n}\n'
    )
    before = torch.get_num_threads()
    try:
        r = CliRunner().invoke(main, ["run", str(f), "--threads", "1"])
        assert r.exit_code == 0, r.output
        assert torch.get_num_threads() == 1
        torch.set_num_threads(max(before, 2))
        monkeypatch.setenv("LMLANG_THREADS", "1")
        r = CliRunner().invoke(main, ["run", str(f)])
        assert r.exit_code == 0, r.output
        assert torch.get_num_threads() == 1
        r = CliRunner().invoke(main, ["run", str(f), "--threads", "0"])
        assert r.exit_code == 2 and "--threads" in r.output
    finally:
        torch.set_num_threads(before)
