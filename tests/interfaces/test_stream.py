"""`lmlang run --stream` and the REPL print each value as it grows (issue #15)."""

from __future__ import annotations

import io
import json

from click.testing import CliRunner

import lmlang
from lmlang.cli import main
from lmlang.repl import Session
from lmlang.streaming import StreamPrinter


def script(tmp_path, tiny) -> str:
    f = tmp_path / "s.lm"
    f.write_text(
        f'model m = "{tiny}"\n'
        'query greet(name: str) using m { "Hello {name}, [a]!" where tokens(a) <= 6 and a stops before "!" }\n'
        'query pick() using m { "Pick: [b]." where b in ["alpha", "beta"] }\n'
        'flow { g = greet("Ada") p = pick() emit a = g.a, b = p.b }\n',
        encoding="utf-8",
    )
    return str(f)


def test_printer_labels_each_value_and_ends_lines():
    out = io.StringIO()
    p = StreamPrinter(out)
    for piece in ("he", "llo"):
        p("greet", "a", piece)
    p("pick", "b", "alpha")
    p.close()
    assert out.getvalue() == "greet.a: hello\npick.b: alpha\n"


def test_run_streamed_gives_every_piece_in_order(tiny_model_dir, tmp_path):
    prog = lmlang.compile_file(script(tmp_path, tiny_model_dir))
    pieces: list = []
    result = prog.run_streamed(lambda q, h, t: pieces.append((q, h, t)))
    assert "".join(t for q, h, t in pieces if (q, h) == ("greet", "a")) == result["a"]
    assert "".join(t for q, h, t in pieces if (q, h) == ("pick", "b")) == result["b"]
    assert len([1 for q, h, _ in pieces if (q, h) == ("greet", "a")]) >= 2  # token by token, not at the end
    assert prog.run() == result  # a plain run afterwards does not stream


def test_cli_stream_prints_values_to_stderr_and_keeps_stdout(tiny_model_dir, tmp_path):
    f = script(tmp_path, tiny_model_dir)
    plain = CliRunner().invoke(main, ["run", "--json", f])
    r = CliRunner().invoke(main, ["run", "--stream", "--json", f])
    assert r.exit_code == 0, r.output
    assert r.stdout == plain.stdout  # one JSON document, as without --stream
    values = json.loads(r.stdout)
    # calls decoded in one batch interleave: each switch starts a labelled line
    grown: dict = {}
    for line in r.stderr.splitlines():
        label, _, piece = line.partition(": ")
        grown[label] = grown.get(label, "") + piece
    assert grown == {"greet.a": values["a"], "pick.b": values["b"]}


def test_cli_stream_refuses_data(tiny_model_dir, tmp_path):
    r = CliRunner().invoke(
        main, ["run", "--stream", "--data", str(tmp_path / "d.jsonl"), script(tmp_path, tiny_model_dir)]
    )
    assert r.exit_code == 2 and "--stream runs the flow once" in r.output


def test_repl_session_streams_through_its_printer(tiny_model_dir, tmp_path):
    out = io.StringIO()
    s = Session(base_dir=tmp_path, on_token=StreamPrinter(out))
    s.feed(f'model m = "{tiny_model_dir}"')
    s.feed('query pick() using m { "Pick: [b]." where b in ["alpha", "beta"] }')
    lines = s.feed("p = pick()")
    shown = out.getvalue()
    assert shown.startswith("pick.b: ") and shown.endswith("\n")
    assert shown[len("pick.b: ") : -1] in ("alpha", "beta")
    assert lines
