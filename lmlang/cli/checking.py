"""`lmlang check`'s body, and the argv fast path that runs it without click.

`check_files` is the command: the click command (cli/frontend.py) and
`fast_check` both call it, so both print the same lines and return the same
exit code. `fast_check` takes only the command lines it reads exactly as
click does: `check`, then files, `--format text|json` and `--allow-path DIR`
in any order (each option as `--opt VALUE` or `--opt=VALUE`), every path one
click.Path would accept (a file that is no folder, a folder that is no file,
readable where it exists). Anything else (`--help`, `--`, another option, a
path click would refuse, no file) returns None and goes to click, which
prints its own usage error. tests/interfaces/test_cli_fast.py runs both paths
on the same command lines and compares them.
"""

from __future__ import annotations

import json
import os
import stat
import sys

from ..errors import LmlangError


def check_files(files, fmt: str, allow_paths) -> int:
    """Check each file; print `FILE: ok` (and its warnings) or its
    diagnostics, or one JSON report; return the worst exit code."""
    from ..frontend import build_file

    worst = 0
    report = []
    for f in files:
        try:
            fe = build_file(f, allow_paths=allow_paths)
        except LmlangError as e:
            worst = max(worst, e.exit_code)
            if fmt == "json":
                report.append({"file": f, "ok": False, "diagnostics": [d.to_dict() for d in e.diagnostics]})
            else:
                echo(e.render(), err=True)
            continue
        if fmt == "json":
            report.append({"file": f, "ok": True, "diagnostics": [d.to_dict() for d in fe.warnings]})
        else:
            for w in fe.warnings:
                echo(w.render(fe.source), err=True)
            n = len(fe.warnings)
            echo(f"{f}: ok" + (f" ({n} warning{'s' * (n != 1)})" if n else ""))
    if fmt == "json":
        echo(json.dumps(report if len(report) > 1 else report[0], indent=2))
    return worst


def echo(text: str, err: bool = False) -> None:
    """One line to stdout or stderr, flushed (what click.echo does with a
    str on a text stream; where the stream cannot encode it, as click's
    replacement writer: UTF-8 with replacements)."""
    stream = sys.stderr if err else sys.stdout
    try:
        stream.write(text + "\n")
    except UnicodeEncodeError:
        stream.flush()
        stream.buffer.write((text + "\n").encode("utf-8", "replace"))
    stream.flush()


def fast_check(argv: list[str]) -> int | None:
    """The exit code of `lmlang check ...` run here, or None when click
    must read this command line."""
    parsed = parse_check_args(argv)
    if parsed is None:
        return None
    try:
        return check_files(*parsed)
    except KeyboardInterrupt:  # as cli/common.Group does
        echo("interrupted", err=True)
        return 130
    except BrokenPipeError:  # as click's standalone mode does: exit 1, no traceback at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def parse_check_args(argv: list[str]) -> tuple[list[str], str, tuple[str, ...]] | None:
    """(files, format, allow paths) of a `check` command line click would
    accept as these, else None."""
    if not argv or argv[0] != "check":
        return None
    files: list[str] = []
    fmt, allow = "text", []
    rest = argv[1:]
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg.startswith("-"):
            name, eq, value = arg.partition("=")
            if not eq:
                if i + 1 >= len(rest):
                    return None
                i += 1
                value = rest[i]
            if value.startswith("-"):
                return None
            if name == "--format" and value in ("text", "json"):
                fmt = value
            elif name == "--allow-path" and _click_path_ok(value, want_dir=True):
                allow.append(value)
            else:
                return None
        elif _click_path_ok(arg, want_dir=False):
            files.append(arg)
        else:
            return None
        i += 1
    return (files, fmt, tuple(allow)) if files else None


def _click_path_ok(path: str, want_dir: bool) -> bool:
    """What click.Path(dir_okay=False) / click.Path(file_okay=False) accepts
    (exists=False, readable=True): a missing path, or one of the right kind
    that can be read."""
    if "\0" in path:
        return False  # os.stat raises ValueError: click's own error, not ours
    try:
        st = os.stat(path)
    except OSError:
        return True
    wrong = stat.S_ISREG(st.st_mode) if want_dir else stat.S_ISDIR(st.st_mode)
    return not wrong and os.access(path, os.R_OK)
