"""The `lmlang` command: a thin click layer over the Python API.

Exit codes: 0 ok, 1 runtime error, 2 script error (syntax, check, inputs).
Errors print as `file:line:col`, the line, an underline and a hint; never a
Python traceback (set LMLANG_DEBUG=1 to see one).

One module per family of commands, each a plain click command; the group
below lists them all in one place (no registration by import side effect).
Command bodies import the API they call when they run, so `lmlang check`
loads only the front end.
"""

from __future__ import annotations

import click

from ..merge.cli import merge_command
from .common import Group, parse_dtypes
from .frontend import check, graph
from .lifecycle import data_group, eval_command, export_command
from .models import declared_models, declared_models_table, models, models_table
from .run import run
from .tools import cache, compare, repl

__all__ = ["main", "parse_dtypes", "declared_models", "declared_models_table", "models_table"]

_parse_dtypes = parse_dtypes  # the name tests and older callers use


@click.group(cls=Group)
@click.version_option(package_name="lmlang")
def main():
    """lmlang: prompts, constraints, adapters, merges and routing in one language."""


for _command in (run, check, graph, models, repl, compare, cache, eval_command, export_command, data_group):
    main.add_command(_command)
main.add_command(merge_command, "merge")  # the merge engine's command lives with the merge package
