"""REPL commands always run: an unclosed bracket never swallows `:quit` or
any other command (the unfinished entry is dropped, saying what was open),
and continuation prompts show what is open."""

import io
import os
import sys

import pytest

from lmlang.repl import continuation_prompt, is_command, open_brackets, run_repl, split_command


@pytest.mark.parametrize(
    "text, opened",
    [
        ("x = 1", ""),
        ("x = [1,", "["),
        ("f({a: [1,", "({["),
        ('x = "a [ in a string"', ""),
        ("x = [1, 2]  # a ( in a comment", ""),
        ('x = [f(1), """long (', '["""'),
        ("if a { b = [1, 2", "{["),
    ],
)
def test_open_brackets(text, opened):
    assert open_brackets(text) == opened


def test_continuation_prompt_shows_what_is_open():
    assert continuation_prompt("x = [", 4) == "..[ "
    assert continuation_prompt("if a { b = [", 4) == ".{[ "
    assert continuation_prompt("f({[(", 4) == "{[( "  # only the innermost ones that fit
    assert continuation_prompt("x = 1", 4) == "... "


@pytest.mark.parametrize(
    "line, cmd",
    [
        (":quit", True),
        ("  :q\n", True),
        (":load f.lm", True),
        (":help", True),
        (":vars", True),
        (":nosuch", False),
        ('":quit"', False),
        ("x = 1", False),
        (":quitx", False),
    ],
)
def test_is_command(line, cmd):
    assert is_command(line) is cmd


def test_split_command():
    assert split_command("x = [1,\n:quit") == ("x = [1,", ":quit")
    assert split_command(":quit") == ("", ":quit")
    assert split_command("x = [1,\n2]") == ("", "x = [1,\n2]")


def piped(text: str, capsys) -> tuple[int, str, str]:
    code = run_repl(stdin=io.StringIO(text), stdout=sys.stdout)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_quit_under_an_unclosed_bracket_quits(capsys):
    code, out, err = piped("x = [1,\n:quit\ny = 5\ny\n", capsys)
    assert code == 2 and "unfinished entry dropped (still open: [)" in err
    assert "5" not in out.split()  # nothing after :quit ran


def test_a_command_ends_the_entry_and_later_lines_run(capsys):
    code, out, err = piped("x = {\"a\": [1,\n:help\ny = 2\ny\n", capsys)
    assert "still open: {[" in err and ":quit" in out  # :help ran
    assert out.splitlines()[-1] == "2" and code == 2


def test_commands_outside_entries_are_unchanged(capsys):
    code, out, err = piped("y = [1,\n2]\ny\n:quit\n", capsys)
    assert code == 0 and err == "" and out.splitlines()[-1] == "[1, 2]"


def test_quit_through_a_pty_under_an_open_bracket(tmp_path):
    pexpect = pytest.importorskip("pexpect")
    env = {
        **os.environ,
        "LMLANG_HOME": str(tmp_path / "home"),
        "PROMPT_TOOLKIT_NO_CPR": "1",
        "TERM": "xterm",
        "NO_COLOR": "1",
    }
    child = pexpect.spawn(
        sys.executable,
        ["-m", "lmlang.cli", "repl"],
        cwd=str(tmp_path),
        env=env,
        encoding="utf-8",
        timeout=120,
        dimensions=(40, 200),
    )
    try:
        child.expect_exact("lm>")
        child.send("x = [1,\r")
        child.expect_exact("..[")  # the continuation prompt names the bracket
        child.send(":quit\r")
        child.expect("unfinished entry dropped")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
