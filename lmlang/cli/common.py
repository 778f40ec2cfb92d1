"""What every `lmlang` command shares: error printing and exit codes, the
--threads / --dtype / --set / --allow-path options, and the group class that
turns an LmlangError into a rendered diagnostic instead of a traceback."""

from __future__ import annotations

import json
import os
import sys

import click

from ..errors import LmlangError


def print_error(e: LmlangError, fmt: str = "text") -> None:
    if fmt == "json":
        click.echo(json.dumps({"ok": False, "diagnostics": [d.to_dict() for d in e.diagnostics]}, indent=2))
    else:
        click.echo(e.render(), err=True)


def fail(e: LmlangError, fmt: str = "text"):
    print_error(e, fmt)
    sys.exit(e.exit_code)


def set_threads(threads: int | None) -> None:
    """An explicit --threads / LMLANG_THREADS, applied now (the REPL, compare);
    without one the runtime picks at the first model load (runtime/threads.py)."""
    if threads:
        from ..runtime.threads import apply_threads

        apply_threads(threads)


THREADS_HELP = (
    "CPU threads for torch (default: the idle physical cores, at most 4; see docs/cli.md). Env: LMLANG_THREADS."
)


def parse_dtypes(values: tuple[str, ...]):
    """--dtype D (every model) or --dtype MODEL=D (repeatable) -> Program's dtype setting."""
    if not values:
        return "auto"
    per_model = {}
    for v in values:
        name, sep, dt = v.rpartition("=")
        if not sep:
            if len(values) > 1:
                raise click.BadParameter(
                    "give one --dtype D for every model, or MODEL=D per model", param_hint="--dtype"
                )
            return v
        per_model[name.strip()] = dt.strip()
    return per_model


def parse_sets(pairs: tuple[str, ...]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--set")
        out[key.strip()] = value
    return out


class Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LmlangError as e:
            if os.environ.get("LMLANG_DEBUG"):
                raise
            fail(e)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def allow_path_option(f):
    """--allow-path DIR (repeatable): a folder the script may read besides
    its own (docs/security.md)."""
    return click.option(
        "--allow-path",
        "allow_paths",
        multiple=True,
        metavar="DIR",
        type=click.Path(file_okay=False),
        help="Let the script read files under DIR too (repeatable). A script reads only its own "
        "folder's tree by default; env: LMLANG_ALLOW_PATH.",
    )(f)
