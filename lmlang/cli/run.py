"""`lmlang run`: a script's flow once, or once per row of a data file
(`--data`, optionally over Ray), printing or appending what it emits."""

from __future__ import annotations

import functools
import json
import os
import sys

import click

from ..errors import LmlangError
from .common import THREADS_HELP, allow_path_option, parse_dtypes, parse_sets


@click.command()
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
    "--stream", is_flag=True, help="Print each value to stderr as it grows, token by token (one flow run, not --data)."
)
@click.option(
    "--trace", "trace_path", type=click.Path(dir_okay=False), help="Append a JSONL trace of every query to this file."
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--no-progress", is_flag=True, help="Do not draw the progress bar of a data run.")
@click.option("--threads", type=click.IntRange(min=1), envvar="LMLANG_THREADS", metavar="N", help=THREADS_HELP)
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
@allow_path_option
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
    stream,
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
    from .. import program as P

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
    elif stream:
        raise click.UsageError("--stream runs the flow once; it cannot be used with --data")
    prog = P.compile_file(
        file,
        device=device,
        batch_size=batch_size,
        trace_file=trace_path,
        allow_paths=allow_paths,
        threads=threads,
        cache=False if no_cache else None,
        dtype=parse_dtypes(dtypes),
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
        result = _run_once(prog, parse_sets(sets), stream)
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
        from ..builtins import value_text

        for k, v in result.items():
            click.echo(f"{k}: {value_text(v)}")


def _run_once(prog, inputs: dict, stream: bool) -> dict:
    """One flow run; with --stream each value is printed to stderr as it grows (streaming.py)."""
    if not stream:
        return prog.run(**inputs)
    from ..streaming import StreamPrinter

    printer = StreamPrinter(sys.stderr)
    try:
        return prog.run_streamed(printer, **inputs)
    finally:
        printer.close()


def _check_trace(path: str, protect: dict) -> None:
    """--trace must be a file lmlang can append to, and not one the run
    reads or writes; found out before any model loads."""
    from ..datarun import OutputError, _same_file

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
    from .. import datarun as D

    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    if resume and not out:
        raise click.UsageError("--resume needs --out")
    fixed = parse_sets(sets)  # --set values apply to every row unless a column gives one
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
                from ..distributed import run_data_ray

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
