"""AST -> checked program: names, kinds and types, with every diagnostic
collected (up to MAX_DIAGNOSTICS) before stopping. It never loads weights
and never imports torch.

One module per concern, all sharing one Context (its Reporter holds the
diagnostics); the passes run in the order of passes.PASSES:

    names.py     declarations in one namespace, `use` imports, inputs, types
    models.py    model expressions, adapters, merges, fusion, training, cycles
    routers.py   routers and their experts
    queries.py   a query's model, decoder and prompt (roles, holes, interpolation)
    holes.py     a hole's constraints lowered and judged
    flow.py      flow statements, expressions and calls

Each option block is validated against the table the runtime executes from
(lmlang.decoders, lmlang.merge.options, lmlang.models.options,
lmlang.builtins, lmlang.constraints); the checker only maps their structured
problems onto spans.
"""

from __future__ import annotations

from .context import MAX_DIAGNOSTICS
from .passes import PASSES, check, check_program
from .program import CheckedProgram, QueryInfo, resolve_path

__all__ = ["CheckedProgram", "QueryInfo", "check_program", "check", "resolve_path", "MAX_DIAGNOSTICS", "PASSES"]
