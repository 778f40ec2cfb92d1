"""The `lmlang` command: a thin click layer over the Python API.

Exit codes: 0 ok, 1 runtime error, 2 script error (syntax, check, inputs).
Errors print as `file:line:col`, the line, an underline and a hint; never a
Python traceback (set LMLANG_DEBUG=1 to see one).
"""

from __future__ import annotations

import functools
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


def _set_threads(threads: int | None) -> None:
    """An explicit --threads / LMLANG_THREADS, applied now (the REPL, compare);
    without one the runtime picks at the first model load (runtime/threads.py)."""
    if threads:
        from .runtime.threads import apply_threads

        apply_threads(threads)


_THREADS_HELP = (
    "CPU threads for torch (default: the idle physical cores, at most 4; see docs/cli.md). Env: LMLANG_THREADS."
)


def _parse_dtypes(values: tuple[str, ...]):
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


def _allow_path_option(f):
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


@click.group(cls=_Group)
@click.version_option(package_name="lmlang")
def main():
    """lmlang: prompts, constraints, adapters, merges and routing in one language."""


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Set a program input (repeatable).")
@click.option(
    "--data",
    "data",
    type=click.Path(dir_okay=False),
    help="Run once per row of a .jsonl or .csv file (columns map to inputs).",
)
@click.option(
    "--data-format", type=click.Choice(["jsonl", "csv"]), help="Format of --data when its suffix does not say."
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False),
    help="Append each row's result to this JSONL file (default: stdout).",
)
@click.option("--resume", is_flag=True, help="Skip the rows already in --out and append the rest.")
@click.option("--overwrite", is_flag=True, help="Start --out afresh even if it has results.")
@click.option("--limit", type=click.IntRange(min=0), metavar="N", help="Use only the first N data rows.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Rows decoded together (and rows per chunk of a data run).",
)
@click.option(
    "--seed", type=click.IntRange(min=0), help="Override the seed of every sampling decoder (sample, best_of, vote)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the emitted values (or a data run's summary) as JSON.")
@click.option(
    "--trace", "trace_path", type=click.Path(dir_okay=False), help="Append a JSONL trace of every query to this file."
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--no-progress", is_flag=True, help="Do not draw the progress bar of a data run.")
@click.option("--threads", type=click.IntRange(min=1), envvar="LMLANG_THREADS", metavar="N", help=_THREADS_HELP)
@click.option(
    "--no-cache", is_flag=True, help="Decode every call again instead of answering repeated ones from the result cache."
)
@click.option(
    "--dtype",
    "dtypes",
    multiple=True,
    metavar="[MODEL=]D",
    help="Inference dtype: float32, bfloat16, float16 or int8 (CPU) for every model, or MODEL=D per model (default: auto).",
)
@click.option(
    "--device-map",
    metavar="MAP",
    help="Spread a model larger than one device over several (auto, balanced, sequential).",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[ADDRESS]",
    help="With --data: split the rows over Ray actors (a local cluster, or the one at ADDRESS).",
)
@_allow_path_option
def run(
    file,
    sets,
    data,
    data_format,
    out,
    resume,
    overwrite,
    limit,
    batch_size,
    seed,
    as_json,
    trace_path,
    device,
    no_progress,
    threads,
    no_cache,
    dtypes,
    device_map,
    ray_address,
    allow_paths,
):
    """Run FILE's flow and print what it emits.

    With --data, run it once per row and write one JSON line per row:
    {"row": i, "input": {...}, "output": {...}} or {"row": i, "input": {...}, "error": {...}}.
    """
    from . import program as P

    if not data:
        for flag, given in (
            ("--out", out),
            ("--resume", resume),
            ("--overwrite", overwrite),
            ("--limit", limit is not None),
            ("--data-format", data_format),
            ("--ray", ray_address is not None),
        ):
            if given:
                raise click.UsageError(f"{flag} needs --data")
    prog = P.compile_file(
        file,
        device=device,
        batch_size=batch_size,
        trace_file=trace_path,
        allow_paths=allow_paths,
        threads=threads,
        cache=False if no_cache else None,
        dtype=_parse_dtypes(dtypes),
        device_map=device_map,
    )
    if trace_path:
        _check_trace(trace_path, {"script": file, "--data": data, "--out": out})
    for w in prog.warnings:
        click.echo(w.render(prog.frontend.source), err=True)
    if seed is not None:
        prog.set_seed(seed)
    try:
        if data:
            code = _run_data(
                prog,
                file,
                data,
                data_format,
                out,
                resume,
                overwrite,
                limit,
                batch_size,
                sets,
                as_json,
                not no_progress,
                ray_address=ray_address,
            )
            sys.exit(code)
        result = prog.run(**_parse_sets(sets))
    except LmlangError as e:
        src = prog.frontend.source  # a runtime error positioned in the script shows its line too
        if e.span.filename == src.filename:
            e.with_source(src)
        raise
    finally:
        prog.close()
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))
    else:
        from .builtins import value_text

        for k, v in result.items():
            click.echo(f"{k}: {value_text(v)}")


def _check_trace(path: str, protect: dict) -> None:
    """--trace must be a file lmlang can append to, and not one the run
    reads or writes; found out before any model loads."""
    from .datarun import OutputError, _same_file

    for role, other in protect.items():
        if other and _same_file(path, other):
            raise OutputError(f"--trace {path} is the {role} file", hint="write the trace to another file")
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise OutputError(
            f"cannot write --trace {path}: {e.strerror or e}", hint="the folder must exist and be writable"
        ) from None


def _open_out(D, out: str, data: str, file: str, resume: bool, overwrite: bool):
    """Open and lock --out before any model loads; returns (OutputFile, rows already done)."""
    output = D.OutputFile.open(out, protect={"--data": data, "script": file}, regular=resume)
    try:
        done: set = set()
        if resume:
            state = output.resume_state()
            done = state.done
            if state.dropped_partial:
                click.echo(f"{out}: dropped a partial last line (the previous run was killed mid-write)", err=True)
        elif overwrite:
            output.truncate()
        elif output.size() > 0:
            raise D.DataError(
                f"{out} already has results", hint="pass --resume to continue it or --overwrite to start over"
            )
    except BaseException:
        output.close()
        raise
    return output, done


def _run_data(
    prog, file, data, data_format, out, resume, overwrite, limit, batch_size, sets, as_json, progress, ray_address=None
) -> int:
    """The --data half of `lmlang run`; returns the exit code. ray_address:
    run the rows on Ray ("local": a cluster of this machine)."""
    from . import datarun as D

    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    if resume and not out:
        raise click.UsageError("--resume needs --out")
    fixed = _parse_sets(sets)  # --set values apply to every row unless a column gives one
    rows = D.read_rows(data, data_format)  # opens the data (and reads a CSV header) now
    output, done = _open_out(D, out, data, file, resume, overwrite) if out else (None, set())
    writer = D.OutputWriter(output)
    try:
        if fixed:
            rows = (D.DataRow(r.index, {**fixed, **r.values}, r.error) if r.values is not None else r for r in rows)
        total = D.count_rows(data) if data_format is None or data_format == D.format_of(data) else None
        if total is not None and limit is not None:
            total = min(total, limit)
        # Load base models before the first row: a model that cannot load stops the
        # run at once (exit 1) instead of failing every row, and the bar's rows/s
        # and ETA measure rows, not loading. With the result cache on (or on Ray,
        # where actors load them) they are only found here: weights load at the
        # first call the cache cannot answer.
        if progress:
            with D.status("loading models"):
                prog.prepare_models(load=False if ray_address else None)
        else:
            prog.prepare_models(load=False if ray_address else None)
        bar = None
        if progress:
            left = None if total is None else max(total - sum(1 for i in done if i < total), 0)
            bar = D.RowProgress(left, description=os.path.basename(data))
            bar.start()
        try:
            run_rows = D.run_data
            if ray_address:
                from .distributed import run_data_ray

                run_rows = functools.partial(
                    run_data_ray, address=None if ray_address == "local" else ray_address, threads=prog.threads
                )
            summary = run_rows(
                prog,
                rows,
                writer.write,
                done=done,
                limit=limit,
                chunk_size=batch_size,
                on_progress=(lambda n, _t: bar.update(n)) if bar else None,
            )
        finally:
            if bar:
                bar.stop()
    finally:
        writer.close()
    if summary.ignored_columns:
        click.echo("ignored columns that name no input: " + ", ".join(sorted(summary.ignored_columns)), err=True)
    line = (
        f"{summary.ok} ok, {summary.failed} failed"
        + (f", {summary.skipped} already done" if summary.skipped else "")
        + (f" -> {out}" if out else "")
    )
    if as_json:
        click.echo(json.dumps({**summary.to_dict(), "out": out}), err=not out)
    else:
        click.echo(line, err=True)
    return 0 if summary.failed == 0 else max(summary.worst_exit, 1)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_allow_path_option
def check(files, fmt, allow_paths):
    """Check FILES without running them (no model is loaded)."""
    from .frontend import build_file

    worst = 0
    report = []
    for f in files:
        try:
            fe = build_file(f, allow_paths=allow_paths)
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
            click.echo(
                f"{f}: ok" + (f" ({len(fe.warnings)} warning{'s' * (len(fe.warnings) != 1)})" if fe.warnings else "")
            )
    if fmt == "json":
        click.echo(json.dumps(report if len(report) > 1 else report[0], indent=2))
    sys.exit(worst)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["dot", "mermaid", "json"]), default="dot", show_default=True)
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="Write to a file instead of stdout.")
@_allow_path_option
def graph(file, fmt, out, allow_paths):
    """Print FILE's execution graph."""
    from .frontend import build_file
    from .graph import graph_to_dot, graph_to_json, graph_to_mermaid

    fe = build_file(file, allow_paths=allow_paths)
    if fmt == "json":
        text = json.dumps(graph_to_json(fe.compiled), indent=2, ensure_ascii=False) + "\n"
    elif fmt == "mermaid":
        text = graph_to_mermaid(fe.compiled)
    else:
        text = graph_to_dot(fe.compiled)
    if out:
        from .datarun import OutputError

        try:
            with open(out, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as e:
            raise OutputError(
                f"cannot write -o {out}: {e.strerror or e}", hint="the folder must exist and be writable"
            ) from None
    else:
        click.echo(text, nl=False)


@main.command()
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
    from .models.loader import list_models

    rows = list_models() + _engine_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(models_table(rows), nl=False)


def _engine_rows() -> list[dict]:
    """The vLLM engine lmlang serves `vllm` models with: whether its venv is built."""
    from .serving.vllm_env import installed_vllm

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
    from . import program as P
    from .graph import node_label
    from .models.sources import SOURCE_KINDS
    from .runtime.engines import source_kind_of

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
        table.add_row(m["name"], m["kind"], ready, _size_text(m.get("size")), m.get("path") or "-")
    with open(os.devnull, "w") as sink:  # render once, wide enough that paths never fold
        console = Console(width=width or 400, record=True, file=sink, color_system=None)
        console.print(table)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


def _size_text(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@main.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--threads", type=click.IntRange(min=1), envvar="LMLANG_THREADS", metavar="N", help=_THREADS_HELP)
@_allow_path_option
def repl(file, device, threads, allow_paths):
    """Enter declarations, statements and expressions one at a time.

    On a terminal: syntax highlighting, multi-line blocks and a history file
    (LMLANG_HOME/repl_history). Otherwise entries are read from stdin, so
    `lmlang repl < session.txt` works; the exit code is then the worst of
    the failed entries (2 script error, 1 runtime error), 0 if none failed.
    """
    from .repl import run_repl

    _set_threads(threads)
    sys.exit(run_repl(file, device=device, allow_paths=allow_paths))


@main.command()
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
@click.option("--threads", type=click.IntRange(min=1), envvar="LMLANG_THREADS", metavar="N", help=_THREADS_HELP)
@_allow_path_option
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
    from . import compare as C
    from . import program as P
    from .errors import DataError

    _set_threads(threads)
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
        _print_error(e)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False, default=str))
    else:
        click.echo(report.render(max_rows=show))


@main.group()
def cache():
    """Show or clear the result cache (LMLANG_HOME/results)."""


@cache.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def cache_info(as_json):
    """Where the result cache is, how many entries, how large."""
    from .runtime.result_cache import cache_info as info

    d = info()
    if as_json:
        click.echo(json.dumps(d))
        return
    click.echo(f"{d['path']}: {d['entries']} entr{'y' if d['entries'] == 1 else 'ies'}, {_size_text(d['bytes'])}")


@cache.command("clear")
def cache_clear():
    """Delete every cached result."""
    from .runtime.result_cache import cache_clear as clear

    n = clear()
    click.echo(f"removed {n} cached result{'s' * (n != 1)}")


def _register_lazy_commands() -> None:
    # The merge engine's click command lives with the merge package.
    from .merge.cli import merge_command

    main.add_command(merge_command, "merge")


_register_lazy_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
