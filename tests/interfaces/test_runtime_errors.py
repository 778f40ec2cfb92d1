"""A runtime error raised while a model node builds or loads names the node
as the script names it and points at its declaration (file:line:col, the
line, a caret), not at a cache folder; the exit code is docs/cli.md's 1."""

import json
import subprocess
import sys
from pathlib import Path

import lmlang
from lmlang.errors import LmlangRuntimeError

REPO = Path(__file__).resolve().parents[2]
SCRIPT = 'model m = "./broken"\nquery q() using m { "Say [a]" where a in ["x", "y"] }\nflow {\n  r = q()\n  emit a = r.a\n}\n'


def _broken_model(folder: Path) -> Path:
    broken = folder / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "vocab_size": 10,
                "hidden_size": 8,
                "num_hidden_layers": 1,
                "num_attention_heads": 1,
                "intermediate_size": 8,
            }
        )
    )
    (broken / "model.safetensors").write_bytes(b"")
    script = folder / "s.lm"
    script.write_text(SCRIPT)
    return script


def test_the_api_error_is_positioned_at_the_declaration(tmp_path):
    script = _broken_model(tmp_path)
    prog = lmlang.compile_file(script)
    try:
        prog.run()
    except LmlangRuntimeError as e:
        assert (e.span.filename, e.span.line, e.span.col) == (str(script), 1, 11)
        assert e.message.startswith("m: could not load model") and "not a safetensors file" in e.message
    else:
        raise AssertionError("a broken model folder must not load")
    finally:
        prog.close()


def test_the_cli_shows_the_line_and_a_caret(tmp_path):
    script = _broken_model(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "lmlang.cli", "run", str(script)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO),
            "HOME": str(tmp_path),
            "LMLANG_ALLOW_PATH": str(tmp_path),
        },
    )
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(f"{script}:1:11: error: m: could not load model"), r.stderr
    assert lines[1].endswith('model m = "./broken"') and lines[2].strip() == "^"
    assert "Traceback" not in r.stderr
