"""The `lmlang` click group: every command, listed in one place.

One module per family of commands, each a plain click command; the group
below lists them all (no registration by import side effect). Command
bodies import the API they call when they run. The package's `main`
(cli/__init__.py) runs `lmlang check FILES` without this module and hands
every other command line here.
"""

from __future__ import annotations

import click

from ..merge.cli import merge_command
from .common import Group
from .frontend import check, graph
from .lifecycle import data_group, eval_command, export_command
from .models import models
from .run import run
from .tools import cache, compare, repl

__all__ = ["main"]


@click.group(cls=Group)
@click.version_option(package_name="lmlang")
def main():
    """lmlang: prompts, constraints, adapters, merges and routing in one language."""


for _command in (run, check, graph, models, repl, compare, cache, eval_command, export_command, data_group):
    main.add_command(_command)
main.add_command(merge_command, "merge")  # the merge engine's command lives with the merge package
