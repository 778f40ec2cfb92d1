"""The session commands: `lmlang repl`, `lmlang compare` (two scripts, or
one with a model swapped, over labelled rows) and `lmlang cache`."""

from __future__ import annotations

import json
import sys

import click

from .common import THREADS_HELP, allow_path_option, print_error, set_threads
from .models import size_text


@click.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--threads", type=click.IntRange(min=1), envvar="LMLANG_THREADS", metavar="N", help=THREADS_HELP)
@allow_path_option
def repl(file, device, threads, allow_paths):
    """Enter declarations, statements and expressions one at a time.

    On a terminal: syntax highlighting, multi-line blocks and a history file
    (LMLANG_HOME/repl_history). Otherwise entries are read from stdin, so
    `lmlang repl < session.txt` works; the exit code is then the worst of
    the failed entries (2 script error, 1 runtime error), 0 if none failed.
    """
    from ..repl import run_repl

    set_threads(threads)
    sys.exit(run_repl(file, device=device, allow_paths=allow_paths))


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--data",
    "data",
    required=True,
    type=click.Path(dir_okay=False),
    help="Labelled rows, .jsonl or .csv (columns map to inputs).",
)
@click.option("--expected", required=True, metavar="COLUMN", help="The column holding the right answer (not an input).")
@click.option("--output", "output", metavar="NAME", help="The emitted value to compare (default: the only one).")
@click.option(
    "--swap", metavar="OLD=NEW", help="With one FILE: compare it as is against it with model OLD rebound to model NEW."
)
@click.option(
    "--data-format", type=click.Choice(["jsonl", "csv"]), help="Format of --data when its suffix does not say."
)
@click.option("--limit", type=click.IntRange(min=0), metavar="N", help="Use only the first N data rows.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Rows decoded together.")
@click.option(
    "--show",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    metavar="N",
    help="Flipped rows listed per kind.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (with every flipped row).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--threads", type=click.IntRange(min=1), envvar="LMLANG_THREADS", metavar="N", help=THREADS_HELP)
@allow_path_option
def compare(
    files, data, expected, output, swap, data_format, limit, batch_size, show, as_json, device, threads, allow_paths
):
    """Compare an old and a new program on labelled rows (model-update compatibility).

    lmlang compare OLD.lm NEW.lm --data rows.jsonl --expected label

    lmlang compare FILE.lm --swap OLD_MODEL=NEW_MODEL --data rows.jsonl --expected label

    Reports each one's accuracy on the emitted value against the expected
    column, and the negative flips (rows right before and wrong after) and
    positive flips, listing the flipped rows. Exit 0 when both ran (rows that
    fail count as wrong), 2 for script or data errors.
    """
    from .. import compare as C
    from .. import program as P
    from ..errors import DataError

    set_threads(threads)
    if swap and len(files) != 1:
        raise click.UsageError("--swap takes exactly one FILE")
    if not swap and len(files) != 2:
        raise click.UsageError("give OLD.lm NEW.lm, or one FILE with --swap OLD=NEW")
    try:
        rows = C.read_labelled_rows(data, expected, data_format, limit)
        old = P.compile_file(files[0], device=device, allow_paths=allow_paths)
        if swap:
            old_model, sep, new_model = swap.partition("=")
            if not sep or not old_model.strip() or not new_model.strip():
                raise click.BadParameter(f"expected OLD=NEW, got {swap!r}", param_hint="--swap")
            old_model, new_model = old_model.strip(), new_model.strip()
            new = C.swap_model(old, old_model, new_model)
            names = (f"{files[0]} ({old_model})", f"{files[0]} ({old_model}={new_model})")
        else:
            new = P.compile_file(files[1], device=device, allow_paths=allow_paths)
            names = (files[0], files[1])
        for prog in (old, new):
            prog.batch_size = batch_size
        report = C.compare(old, new, rows, expected, output, old_name=names[0], new_name=names[1])
    except DataError as e:  # a bad data file is the caller's mistake, like a script error
        print_error(e)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False, default=str))
    else:
        click.echo(report.render(max_rows=show))


@click.group()
def cache():
    """Show or clear the result cache (LMLANG_HOME/results)."""


@cache.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def cache_info(as_json):
    """Where the result cache is, how many entries, how large."""
    from ..runtime.result_cache import cache_info as info

    d = info()
    if as_json:
        click.echo(json.dumps(d))
        return
    click.echo(f"{d['path']}: {d['entries']} entr{'y' if d['entries'] == 1 else 'ies'}, {size_text(d['bytes'])}")


@cache.command("clear")
def cache_clear():
    """Delete every cached result."""
    from ..runtime.result_cache import cache_clear as clear

    n = clear()
    click.echo(f"removed {n} cached result{'s' * (n != 1)}")
