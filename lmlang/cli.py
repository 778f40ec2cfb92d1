"""The `lmlang` command: a thin click layer over the Python API.

Exit codes: 0 ok, 1 runtime error, 2 script error (syntax, check, inputs).
Errors print as `file:line:col`, the line, an underline and a hint; never a
Python traceback (set LMLANG_DEBUG=1 to see one).
"""
from __future__ import annotations

import json
import os
import sys

import click

from .errors import LmlangError


def _print_error(e: LmlangError, fmt: str = "text") -> None:
    if fmt == "json":
        click.echo(json.dumps({"ok": False, "diagnostics": [d.to_dict() for d in e.diagnostics]}, indent=2))
    else:
        click.echo(e.render(), err=True)


def _fail(e: LmlangError, fmt: str = "text"):
    _print_error(e, fmt)
    sys.exit(e.exit_code)


def _parse_sets(pairs: tuple[str, ...]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--set")
        out[key.strip()] = value
    return out


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LmlangError as e:
            if os.environ.get("LMLANG_DEBUG"):
                raise
            _fail(e)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.version_option(package_name="lmlang")
def main():
    """lmlang: prompts, constraints, adapters, merges and routing in one language."""


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Set a program input (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the emitted values as JSON.")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False), help="Write a JSONL trace of every query.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
def run(file, sets, as_json, trace_path, device):
    """Run FILE's flow and print what it emits."""
    from . import program as P
    from .runtime.trace import Trace

    prog = P.compile_file(file, device=device)
    for w in prog.warnings:
        click.echo(w.render(prog.frontend.source), err=True)
    inputs = _parse_sets(sets)
    execu = prog._executor()
    if trace_path:
        execu.trace = Trace(trace_path)
    try:
        result = prog.run(**inputs)
    finally:
        execu.trace.close()
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))
    else:
        from .runtime.prompt import value_text

        for k, v in result.items():
            click.echo(f"{k}: {value_text(v)}")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def check(files, fmt):
    """Check FILES without running them (no model is loaded)."""
    from .frontend import build_file

    worst = 0
    report = []
    for f in files:
        try:
            fe = build_file(f)
        except LmlangError as e:
            worst = max(worst, e.exit_code)
            if fmt == "json":
                report.append({"file": f, "ok": False, "diagnostics": [d.to_dict() for d in e.diagnostics]})
            else:
                _print_error(e)
            continue
        if fmt == "json":
            report.append({"file": f, "ok": True, "diagnostics": [d.to_dict() for d in fe.warnings]})
        else:
            for w in fe.warnings:
                click.echo(w.render(fe.source), err=True)
            click.echo(f"{f}: ok" + (f" ({len(fe.warnings)} warning{'s' * (len(fe.warnings) != 1)})" if fe.warnings else ""))
    if fmt == "json":
        click.echo(json.dumps(report if len(report) > 1 else report[0], indent=2))
    sys.exit(worst)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["dot", "mermaid", "json"]), default="dot", show_default=True)
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="Write to a file instead of stdout.")
def graph(file, fmt, out):
    """Print FILE's execution graph."""
    from .compiler import graph_to_dot, graph_to_json, graph_to_mermaid
    from .frontend import build_file

    fe = build_file(file)
    if fmt == "json":
        text = json.dumps(graph_to_json(fe.compiled), indent=2, ensure_ascii=False) + "\n"
    elif fmt == "mermaid":
        text = graph_to_mermaid(fe.compiled)
    else:
        text = graph_to_dot(fe.compiled)
    if out:
        with open(out, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        click.echo(text, nl=False)


@main.command()
def models():
    """List the bundled default model and the models in local caches."""
    from .models.loader import list_models

    for m in list_models():
        click.echo("  ".join(f"{k}={v}" for k, v in m.items()))


if __name__ == "__main__":  # pragma: no cover
    main()
