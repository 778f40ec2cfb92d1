"""`lmlang merge CONFIG.yaml --out DIR [--compat mergekit|lmlang]`: a thin shim
over `run_mergekit_yaml`. Errors are one line on stderr; exit code 2 for a bad
config, 1 for a failure while merging (missing or incompatible models)."""

from __future__ import annotations

import sys

import click


@click.command("merge")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="output model folder")
@click.option(
    "--compat",
    type=click.Choice(["lmlang", "mergekit"]),
    default="lmlang",
    show_default=True,
    help="mergekit: reproduce mergekit's results tensor by tensor",
)
@click.option("--dtype", default=None, help="output dtype (float32, bfloat16, float16); default from the config")
def merge_command(config: str, out_dir: str, compat: str, dtype: str | None) -> None:
    """Merge models from a mergekit-style YAML recipe."""
    from ..errors import LmlangError
    from .mergekit_yaml import run_mergekit_yaml

    try:
        result = run_mergekit_yaml(config, out_dir, compat=compat, dtype=dtype)
    except LmlangError as e:
        click.echo(f"error: {e.message}", err=True)
        sys.exit(e.exit_code)
    except (OSError, ValueError, RuntimeError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    note = " (cached)" if result.cached else ""
    click.echo(f"merged into {result.path} in {result.seconds:.1f} s{note}")
