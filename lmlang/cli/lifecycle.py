"""`lmlang eval`, `lmlang export` and `lmlang data show`: the script's
lifecycle statements (lmlang/lifecycle), run from the command line."""

from __future__ import annotations

import csv
import json

import click

from .common import THREADS_HELP, allow_path_option

_SCRIPT = click.argument("file", type=click.Path(dir_okay=False))


def _runtime_options(f):
    f = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")(f)
    f = click.option("--threads", type=click.IntRange(min=1), envvar="LMLANG_THREADS", metavar="N", help=THREADS_HELP)(
        f
    )
    return allow_path_option(f)


def _compile(file, device, threads, allow_paths, **kw):
    from .. import program as P

    return P.compile_file(file, device=device, threads=threads, allow_paths=list(allow_paths), **kw)


@click.command("eval")
@_SCRIPT
@click.option("--only", multiple=True, metavar="NAME", help="Run only this eval (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the results to this CSV file.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Rows decoded together.")
@click.option("--no-cache", is_flag=True, help="Decode every row again instead of using the result cache.")
@_runtime_options
def eval_command(file, only, as_json, out, batch_size, no_cache, device, threads, allow_paths):
    """Run every `eval` block of FILE and print a table per model (metric, n, score)."""
    from ..lifecycle.evaluate import run_evals

    prog = _compile(file, device, threads, allow_paths, batch_size=batch_size, cache=not no_cache)
    try:
        results = run_evals(prog, tuple(only))
    finally:
        prog.close()
    if out:
        with open(out, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=["name", "model", "query", "metric", "n", "score", "errors"])
            w.writeheader()
            for r in results:
                w.writerow(r.to_dict())
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
        return
    if not results:
        click.echo("no eval blocks in this script", err=True)
        return
    _print_tables(results)


def _print_tables(results) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for model in dict.fromkeys(r.model for r in results):
        table = Table(title=f"model {model}")
        for col in ("eval", "query", "metric"):
            table.add_column(col)
        for col in ("n", "score"):
            table.add_column(col, justify="right")
        for r in results:
            if r.model == model:
                score = f"{r.score:.4f}" + (f" ({r.errors} errors)" if r.errors else "")
                table.add_row(r.name, r.query, r.metric, str(r.n), score)
        console.print(table)


@click.command("export")
@_SCRIPT
@click.option("--only", multiple=True, metavar="NAME", help="Export only this model or adapter (repeatable).")
@_runtime_options
def export_command(file, only, device, threads, allow_paths):
    """Run the `export` statements of FILE: adapters as PEFT folders, models as HF folders."""
    from ..errors import ScriptError
    from ..lifecycle.export import run_exports

    prog = _compile(file, device, threads, allow_paths)
    targets = {d.target for d in prog.frontend.checked.exports}
    missing = [n for n in only if n not in targets]
    if missing:
        raise ScriptError(
            f"no export of '{missing[0]}' in {file}", hint=f"exports: {', '.join(sorted(targets)) or 'none'}"
        )
    try:
        done = run_exports(prog, tuple(only))
    finally:
        prog.close()
    for x in done:
        click.echo(f"{x.kind} {x.name} -> {x.path} ({len(x.files)} files)")
    if not done:
        click.echo("no export statements in this script", err=True)


@click.group("data")
def data_group():
    """Data sets declared with `data NAME = ...`."""


@data_group.command("show")
@click.argument("name")
@_SCRIPT
@click.option("--all", "show_all", is_flag=True, help="Print every row, not only the first 20.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per row (JSONL).")
@_runtime_options
def data_show(name, file, show_all, as_json, device, threads, allow_paths):
    """Print the rows of data set NAME of script FILE (the first 20; --all for every row)."""
    from ..lifecycle.data import DataSets

    prog = _compile(file, device, threads, allow_paths)
    try:
        rows = DataSets(prog).rows(name)
    finally:
        prog.close()
    shown = rows if show_all else rows[:20]
    if as_json:
        for r in shown:
            click.echo(json.dumps(r, ensure_ascii=False))
    else:
        _print_rows(name, shown)
    if len(shown) < len(rows):
        click.echo(f"({len(rows) - len(shown)} more rows of {len(rows)}; --all shows them)", err=True)


def _print_rows(name: str, rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    columns = list(dict.fromkeys(c for r in rows for c in r))
    table = Table(title=f"data {name}")
    table.add_column("#", justify="right")
    for c in columns:
        table.add_column(c, overflow="fold")
    for i, r in enumerate(rows):
        table.add_row(str(i), *(_cell(r.get(c)) for c in columns))
    Console().print(table)


def _cell(v) -> str:
    if v is None:
        return ""
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
