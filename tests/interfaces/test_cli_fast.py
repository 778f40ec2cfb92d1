"""`lmlang check` without click (lmlang/cli/checking.py) against the click
command it stands in for: on the same command lines, the same stdout, stderr
and exit code; and every command line it does not read exactly as click
would goes to click."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmlang import cli
from lmlang.cli.checking import fast_check, parse_check_args

REPO = Path(__file__).resolve().parents[2]
HELLO = str(REPO / "examples" / "hello.lm")
WARNS = str(REPO / "tests" / "fixtures" / "ok_warnings.lm")
BAD = str(REPO / "tests" / "fixtures" / "err_arguments_missing.lm")


def _run(entry, argv, capsys):
    with pytest.raises(SystemExit) as e:
        entry(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture
def scripts(tmp_path):
    (tmp_path / "syntax.lm").write_text("input x: str\nquery q() { \"a\" \n")
    (tmp_path / "lib").mkdir()
    return tmp_path


FAST = [
    ["check", HELLO],
    ["check", WARNS],
    ["check", BAD],
    ["check", HELLO, WARNS, BAD],
    ["check", "{tmp}/syntax.lm", HELLO],
    ["check", "--format", "json", HELLO],
    ["check", BAD, "--format=json"],
    ["check", "--format", "json", HELLO, BAD, WARNS],
    ["check", "--format", "text", "--allow-path", "{tmp}/lib", HELLO],
    ["check", "--allow-path={tmp}/lib", "--allow-path", "{tmp}/nowhere", WARNS],
    ["check", "{tmp}/missing.lm"],
]
TO_CLICK = [
    ["check"],
    ["check", "--help"],
    ["check", "--format", "xml", HELLO],
    ["check", "--format"],
    ["check", "--", HELLO],
    ["check", "-x", HELLO],
    ["check", "{tmp}"],  # a folder: click's "is a directory"
    ["check", "--allow-path", HELLO, HELLO],  # a file: click's "is a file"
    ["check", "--format", "--allow-path", HELLO],
    ["--help"],
    ["graph", HELLO],
]


def _argv(argv, tmp):
    return [a.replace("{tmp}", str(tmp)) for a in argv]


@pytest.mark.parametrize("argv", FAST, ids=lambda a: " ".join(Path(x).name for x in a))
def test_fast_check_prints_and_exits_as_click_does(argv, scripts, capsys):
    argv = _argv(argv, scripts)
    assert parse_check_args(argv) is not None
    fast = _run(cli.main, argv, capsys)
    by_click = _run(cli.Entry.group(), argv, capsys)
    assert fast == by_click
    assert fast[0] in (0, 2) and (fast[1] or fast[2])


@pytest.mark.parametrize("argv", TO_CLICK, ids=lambda a: " ".join(Path(x).name for x in a) or "-")
def test_other_command_lines_go_to_click(argv, scripts, capsys):
    argv = _argv(argv, scripts)
    assert parse_check_args(argv) is None and fast_check(argv) is None
    assert _run(cli.main, argv, capsys) == _run(cli.Entry.group(), argv, capsys)


def test_the_entry_point_is_what_click_runner_calls():
    from click.testing import CliRunner

    assert cli.main.name == cli.Entry.group().name
    r = CliRunner().invoke(cli.main, ["check", HELLO])
    assert r.exit_code == 0 and r.output.strip().endswith("hello.lm: ok")


def test_click_helpers_are_still_exported():
    from lmlang.cli import _parse_dtypes, declared_models, models_table

    assert _parse_dtypes(("a=float16",)) == {"a": "float16"}
    assert callable(declared_models) and callable(models_table)
    with pytest.raises(AttributeError):
        cli.no_such_name  # noqa: B018
