"""The REPL: incremental declarations, statements run at once, expressions
printed, errors that never lose earlier definitions; on a real terminal
(pexpect) and on piped stdin."""

import json
import os
import re
import subprocess
import sys

import pytest

from lmlang.errors import LmlangError
from lmlang.repl import Session, input_type, needs_more


def query_decl(model_dir) -> list[str]:
    return [f'model m = "{model_dir}"', 'query q(x: str) using m {\n    "{x} [a]"\n    where a in ["yes", "no"]\n}']


@pytest.mark.parametrize(
    "text, more",
    [
        ("x = 1", False),
        ("query q(x: str) using m {", True),
        ('query q(x: str) using m {\n  "{x} [a]"\n}', False),
        ('"a { brace in a string"', False),
        ('x = """long\n{', True),
        ("f(1,\n", True),
        ("x = 1  # a { in a comment", False),
        ("if a { b = [1, 2", True),
    ],
)
def test_continuation_while_blocks_are_open(text, more):
    assert needs_more(text) is more


def test_input_types_carry_values():
    assert [input_type(v) for v in ("s", 1, 1.5, True, [1], {"a": 1})] == [
        "str",
        "int",
        "float",
        "bool",
        "json",
        "json",
    ]


def test_session_defines_runs_and_survives_errors(tiny_model_dir, tmp_path):
    s = Session(base_dir=tmp_path)
    for d in query_decl(tiny_model_dir):
        s.feed(d)
    assert [d.names[0] for d in s.decls] == ["m", "q"]
    (line,) = s.feed('r = q("hello")')
    assert re.fullmatch(r'r = \{"a": "(yes|no)"\}', line)
    assert s.vars["r"]["a"] in ("yes", "no")
    assert s.feed("r.a") == [json.dumps(s.vars["r"]["a"])]
    assert s.feed('r.a + "!"') == [json.dumps(s.vars["r"]["a"] + "!")]
    assert s.feed("n = 2 * 21") == ["n = 42"] and s.vars["n"] == 42  # typed: ints stay ints

    with pytest.raises(LmlangError) as e:  # a check error in a declaration
        s.feed('query bad(x: str) using nosuch { "[a]" where a in ["x"] }')
    assert "<repl>:1:25: error: undefined model 'nosuch'" in e.value.render()
    assert [d.names[0] for d in s.decls] == ["m", "q"]
    with pytest.raises(LmlangError) as e:  # a syntax error in an expression
        s.feed("len(r.a) *")
    assert "incomplete entry" in e.value.render()
    with pytest.raises(LmlangError) as e:  # a runtime error
        s.feed("z = 1 / 0")
    assert e.value.exit_code == 1 and "division by zero" in e.value.render()
    assert "z" not in s.vars
    assert s.feed('q("again").a')[0] in ('"yes"', '"no"')  # earlier definitions still work

    out = s.feed('for w in ["a", "b"] { t = q(w) }')  # loop-local names stay local
    assert out == [] and "t" not in s.vars
    assert s.feed('if n > 40 { big = true } else { big = false }') == ["big = true"]
    assert s.feed("emit answer = n + 1") == ["answer: 43"]
    trace = s.feed(":trace")
    assert trace == ["(the last entry ran no query)"]
    s.feed('r2 = q("x")')
    assert s.feed(":trace")[0].startswith("q on m (argmax)")


def test_redefinition_replaces_and_commands(tiny_model_dir, tmp_path):
    s = Session(base_dir=tmp_path)
    for d in query_decl(tiny_model_dir):
        s.feed(d)
    s.feed('query q(x: str) using m { "{x}! [b]" where b in ["up", "down"] }')
    assert [d.names[0] for d in s.decls] == ["m", "q"]
    assert s.feed('q("x").b')[0] in ('"up"', '"down"')
    assert "flowchart" in s.feed(":graph")[0]
    assert ":reset" in s.feed(":help")[0]
    assert "default" in s.feed(":models")[0]
    s.feed("v = 1")
    assert s.feed(":vars") == ["v = 1"]
    s.feed(":reset")
    assert s.decls == [] and s.vars == {}
    with pytest.raises(LmlangError, match="undefined name 'v'"):
        s.feed("v")
    with pytest.raises(LmlangError, match="unknown command"):
        s.feed(":nope")


def test_load_file_then_run_its_flow(tiny_model_dir, tmp_path):
    f = tmp_path / "prog.lm"
    f.write_text(
        f'input t: str = "hi"\nmodel m = "{tiny_model_dir}"\n'
        'query q(x: str) using m { "{x} [a]" where a in ["yes", "no"] }\n'
        "flow { r = q(t) emit a = r.a }\n"
    )
    s = Session(base_dir=tmp_path)
    (line,) = s.feed(f":load {f.name}")
    assert line == "loaded prog.lm: t, m, q (flow: :run)"
    assert s.feed(":run t=hello")[0] in ('a: "yes"', 'a: "no"')
    bad = tmp_path / "bad.lm"
    bad.write_text("model m = default\n\nquery z() using nope { \"[a]\" where a in [\"x\"] }\n")
    with pytest.raises(LmlangError) as e:
        s.feed(f":load {bad}")
    assert f"{bad}:3:17: error: undefined model 'nope'" in e.value.render()
    assert [d.names[0] for d in s.decls] == ["t", "m", "q"]


def test_piped_stdin_is_scripted_use(tiny_model_dir, tmp_path):
    entries = "\n".join(query_decl(tiny_model_dir)) + '\nr = q("hello")\nr.a\nnosuch\n1 + 1\n'
    p = subprocess.run(
        [sys.executable, "-m", "lmlang.cli", "repl"],
        input=entries,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "LMLANG_HOME": str(tmp_path / "home")},
        timeout=300,
    )
    assert p.returncode == 2, p.stderr  # one entry failed with a script error
    lines = p.stdout.splitlines()
    assert lines[:2] == ["defined m", "defined q"] and lines[-1] == "2"
    assert re.fullmatch(r'"(yes|no)"', lines[3])
    assert "undefined name 'nosuch'" in p.stderr


def test_terminal_session_through_a_pty(tiny_model_dir, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    home = tmp_path / "home"
    env = {**os.environ, "LMLANG_HOME": str(home), "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm", "NO_COLOR": "1"}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "lmlang.cli", "repl"],
        cwd=str(tmp_path),
        env=env,
        encoding="utf-8",
        timeout=180,
        dimensions=(40, 200),
    )

    def ask(text: str) -> None:  # wait for the prompt, then type
        child.expect_exact("lm>")
        child.send(text + "\r")

    try:
        child.expect("lmlang repl")
        model, query = query_decl(tiny_model_dir)
        ask(model)
        child.expect("defined m")
        first, *rest = query.split("\n")
        ask(first)
        for line in rest:  # Enter inside an open block continues it
            child.send(line + "\r")
        child.expect("defined q")
        ask('r = q("hello")')
        child.expect(r'r = \{"a": "(yes|no)"\}')
        label = child.match.group(1)
        ask("r.a")
        child.expect(f'"{label}"\r\n')
        ask('query bad(x: str) using nosuch { "[a]" where a in ["x"] }')
        child.expect("undefined model 'nosuch'")
        ask('q("hello").a')
        child.expect(f'"{label}"\r\n')  # earlier definitions survive the error
        ask(":help")
        child.expect(":reset")
        ask(":reset")
        child.expect("reset: no declarations")
        ask("r")
        child.expect("undefined name 'r'")
        child.expect_exact("lm>")
        child.sendcontrol("d")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    history = (home / "repl_history").read_text()
    assert 'r = q("hello")' in history and "query q(x: str) using m {" in history
