"""The front-end commands, `lmlang check` and `lmlang graph`: they parse,
check and compile a script and never load a model (nor import torch,
transformers or networkx; tests/interfaces/test_startup_imports.py holds it).
`check`'s body is cli/checking.py, which also runs it without click."""

from __future__ import annotations

import json
import sys

import click

from .checking import check_files
from .common import allow_path_option


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@allow_path_option
def check(files, fmt, allow_paths):
    """Check FILES without running them (no model is loaded)."""
    sys.exit(check_files(files, fmt, allow_paths))


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["dot", "mermaid", "json"]), default="dot", show_default=True)
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="Write to a file instead of stdout.")
@allow_path_option
def graph(file, fmt, out, allow_paths):
    """Print FILE's execution graph."""
    from ..frontend import build_file
    from ..graph import graph_to_dot, graph_to_json, graph_to_mermaid

    fe = build_file(file, allow_paths=allow_paths)
    if fmt == "json":
        text = json.dumps(graph_to_json(fe.compiled), indent=2, ensure_ascii=False) + "\n"
    elif fmt == "mermaid":
        text = graph_to_mermaid(fe.compiled)
    else:
        text = graph_to_dot(fe.compiled)
    if out:
        from ..datarun import OutputError

        try:
            with open(out, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as e:
            raise OutputError(
                f"cannot write -o {out}: {e.strerror or e}", hint="the folder must exist and be writable"
            ) from None
    else:
        click.echo(text, nl=False)
