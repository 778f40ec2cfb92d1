"""The `lmlang` command: a thin click layer over the Python API.

Exit codes: 0 ok, 1 runtime error, 2 script error (syntax, check, inputs).
Errors print as `file:line:col`, the line, an underline and a hint; never a
Python traceback (set LMLANG_DEBUG=1 to see one).

`main` is the entry point (the console script, `python -m lmlang.cli`, and
tests that call it with an argument list). `lmlang check FILES` starts
without click (cli/checking.py: click's import alone is a tenth of the
0.2 s a check may take); every other command line, `--help` and usage
errors included, goes to the click group in cli/commands.py, which lists
every command in one place.
"""

from __future__ import annotations

import sys

from .checking import fast_check

__all__ = ["main", "parse_dtypes", "declared_models", "declared_models_table", "models_table"]


class Entry:
    """`main`: called with no arguments it reads sys.argv, with a list it
    reads that list (as a click group is called). click's CliRunner reads
    its `name` and calls its `.main(...)`: the click group's, unchanged."""

    name = "main"  # the click group's name (tests/interfaces/test_cli_fast.py holds it)

    def __call__(self, args=None, **extra):
        if not extra:
            code = fast_check(sys.argv[1:] if args is None else list(args))
            if code is not None:
                sys.exit(code)
        return self.group()(args, **extra)

    def main(self, *args, **extra):
        return self.group().main(*args, **extra)

    @staticmethod
    def group():
        """The click group with every command (imports click)."""
        from .commands import main

        return main


main = Entry()


def __getattr__(name: str):
    """The click-side helpers this package has always exported, imported
    when first asked for, so `import lmlang.cli` does not import click."""
    if name in ("parse_dtypes", "_parse_dtypes"):  # _parse_dtypes: the name tests and older callers use
        from .common import parse_dtypes

        return parse_dtypes
    if name in ("declared_models", "declared_models_table", "models_table"):
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
