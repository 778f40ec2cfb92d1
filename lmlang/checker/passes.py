"""The checker's passes, in order, and the one entry that runs them.

Each pass is a plain function of the check's Context; every pass runs even
after errors (so one `lmlang check` shows all that is wrong) until the
diagnostic cap stops the check. Declarations are collected first: every
later pass looks names up in the tables that collection fills.
"""

from __future__ import annotations

from pathlib import Path

from .. import ast as A
from ..errors import CheckError
from ..source import Source
from .context import Context, Stop
from .flow import check_flow, check_unused
from .lifecycle import add_generate_queries, check_lifecycle
from .models import check_models_and_adapters
from .names import check_inputs, collect
from .program import CheckedProgram, allowed_roots
from .defs import check_defs
from .queries import check_queries
from .routers import check_routers
from .served import check_served

PASSES = (
    check_inputs,
    check_models_and_adapters,
    check_routers,
    add_generate_queries,  # a generation's internal query, checked by the query passes
    check_queries,
    check_served,
    check_defs,
    check_flow,
    check_lifecycle,
    check_unused,
)


def check(
    program: A.Program,
    source: Source,
    base_dir: Path,
    functions: frozenset = frozenset(),
    schemas: dict | None = None,
    import_stack: tuple = (),
    roots: tuple = (),
) -> CheckedProgram:
    """The checked program; CheckError with every diagnostic if it has errors.
    `roots`: the folders file references may reach (default: base_dir's)."""
    out = CheckedProgram(source, base_dir, program, functions=functions, roots=roots or allowed_roots(base_dir))
    out.sources[source.filename] = source
    cx = Context(source, base_dir, out, functions, dict(schemas or {}), import_stack)
    try:
        cx.decls = collect(cx, program)
        for run in PASSES:
            run(cx)
    except Stop:
        pass
    cx.report.sort(source.filename)
    out.warnings = cx.report.warnings
    if cx.report.errors:
        err = CheckError(cx.report.errors, cx.report.warnings)
        err.source = source
        err.sources = dict(out.sources)
        raise err
    return out


def check_program(
    program: A.Program,
    source: Source,
    base_dir: Path,
    functions=frozenset(),
    schemas: dict | None = None,
    allow_paths=(),
) -> CheckedProgram:
    return check(program, source, base_dir, frozenset(functions), schemas, roots=allowed_roots(base_dir, allow_paths))
