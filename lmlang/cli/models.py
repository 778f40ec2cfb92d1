"""`lmlang models`: the models on this machine (the bundled default, the
local caches, the vLLM engine), or the models a script declares."""

from __future__ import annotations

import json
import os

import click


@click.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def models(file, as_json):
    """List the bundled default model, the models in local caches and the vLLM
    engine; with FILE, the models FILE declares (kind, engine, source)."""
    if file:
        rows = declared_models(file)
        if as_json:
            click.echo(json.dumps(rows, indent=2))
        else:
            click.echo(declared_models_table(rows), nl=False)
        return
    from ..models.loader import list_models

    rows = list_models() + _engine_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(models_table(rows), nl=False)


def _engine_rows() -> list[dict]:
    """The vLLM engine lmlang serves `vllm` models with: whether its venv is built."""
    from ..serving.vllm_env import installed_vllm

    env = installed_vllm()
    if env is None:
        return [
            {
                "name": "vllm",
                "kind": "engine",
                "ready": False,
                "path": None,
                "size": None,
                "source": "built on first use of a `vllm` model (about 6 minutes, 3.4 GB)",
            }
        ]
    return [
        {
            "name": f"{env['package']} {env['version']}",
            "kind": "engine",
            "ready": True,
            "path": env["path"],
            "size": env.get("bytes"),
            "source": env.get("python"),
        }
    ]


def declared_models(file: str) -> list[dict]:
    """The models a script declares: name, kind (a source kind, or adapted /
    merge / fuse), engine (local | served), source (a path, hub id or URL)."""
    from .. import program as P
    from ..graph import node_label
    from ..models.sources import SOURCE_KINDS
    from ..runtime.engines import source_kind_of

    fe = P.compile_file(file).frontend
    c = fe.compiled
    rows = []
    for name in fe.checked.models:
        nid = c.names[name]
        spec = c.spec(nid)
        base = source_kind_of(c, nid)
        kind = spec.kind if spec.kind in ("merge", "fuse", "apply") else base
        source = getattr(spec, "url", None) or getattr(spec, "source", None)
        if spec.kind == "apply":
            kind, source = "adapted", node_label(c, nid)
        options = dict(getattr(spec, "options", ()) or ()) if spec.kind in ("server", "vllm") else {}
        rows.append(
            {
                "name": name,
                "kind": kind,
                "engine": SOURCE_KINDS[base].engine if kind != "fuse" else "local",
                "source": source if source is not None else node_label(c, nid),
                "options": options,
            }
        )
    return rows


def declared_models_table(rows: list[dict]) -> str:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold", pad_edge=False)
    for col in ("name", "kind", "engine", "source", "options"):
        table.add_column(col, overflow="fold", no_wrap=col not in ("source", "options"))
    for m in rows:
        opts = ", ".join(f"{k}: {json.dumps(v)}" for k, v in m["options"].items()) or "-"
        table.add_row(m["name"], m["kind"], m["engine"], str(m["source"]), opts)
    with open(os.devnull, "w") as sink:
        console = Console(width=400, record=True, file=sink, color_system=None)
        console.print(table)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


def models_table(rows: list[dict], width: int | None = None) -> str:
    """`lmlang models` as a rich table (also the REPL's :models)."""
    from rich.console import Console
    from rich.table import Table

    from rich import box

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold", pad_edge=False)
    for col in ("name", "kind", "ready", "size", "path"):
        table.add_column(col, overflow="fold", no_wrap=col != "path")
    for m in rows:
        ready = (
            "yes" if m["ready"] else ("converts on first use" if m["kind"] == "default" and m.get("source") else "no")
        )
        table.add_row(m["name"], m["kind"], ready, size_text(m.get("size")), m.get("path") or "-")
    with open(os.devnull, "w") as sink:  # render once, wide enough that paths never fold
        console = Console(width=width or 400, record=True, file=sink, color_system=None)
        console.print(table)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


def size_text(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
