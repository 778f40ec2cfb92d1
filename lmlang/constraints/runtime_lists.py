"""Run-time lists (`where label in labels`, `labels: list[str]` a parameter
of the query): the constraint the checker built names the parameter
(spec.ChoiceParam); when the query is called, its argument's strings replace
it, and the hole's mask is compiled from that choice exactly as from a literal
list (compiled masks are cached by content, so a list seen again costs
nothing). Torch-free: the served engines resolve with it too.

The checker has typed the parameter `list[str]` and refused every combination
it could not judge without the list (a run-time list with another shape, see
checker/holes.py). What only the values can show is a run-time error naming
the hole: an empty list, a non-string item, or (with `not in`) no option left.
"""

from __future__ import annotations

from ..errors import LmlangRuntimeError
from . import spec as C
from .shapes import any_of


def has_runtime_list(c: C.Constraint | None) -> bool:
    """Whether a hole's constraint names a query parameter (it must be resolved per call)."""
    for p in C.flatten(c):
        if isinstance(p, C.ChoiceParam):
            return True
        if isinstance(p, C.AnyOf) and any(isinstance(a, C.ChoiceParam) for a in p.alternatives):
            return True
    return False


def resolve(constraints: dict, env: dict) -> dict:
    """Each hole's constraint with its run-time lists replaced by the call's
    arguments (env: parameter -> value). Holes without one come back as they were."""
    out = {}
    for h, c in constraints.items():
        if has_runtime_list(c):
            c = _resolve(h, c, env)
            check_resolved(h, c)
        out[h] = c
    return out


def _resolve(hole: str, c: C.Constraint | None, env: dict) -> C.Constraint | None:
    if isinstance(c, C.All):
        return C.All(tuple(_resolve(hole, p, env) or p for p in c.parts))
    if isinstance(c, C.ChoiceParam):
        return C.Choice(_options(hole, c.param, env))
    if isinstance(c, C.AnyOf):
        return any_of([_resolve(hole, a, env) or a for a in c.alternatives])
    return c


def _options(hole: str, param: str, env: dict) -> tuple[str, ...]:
    value = env.get(param)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise LmlangRuntimeError(
            f"hole [{hole}]: `in {param}` needs a list of strings, got {type(value).__name__}",
            hint=f"pass {param} as a list of strings",
            code="runtime-list",
        )
    options = tuple(dict.fromkeys(value))
    if not options:
        raise LmlangRuntimeError(
            f"hole [{hole}]: `in {param}` got an empty list: no value is possible",
            hint=f"pass at least one option in {param}",
            code="runtime-list",
        )
    return options


def check_resolved(hole: str, c: C.Constraint | None) -> None:
    """After resolving: a `not in` (or stops, or a length bound) that leaves no
    option of the run-time list is an error here, not an empty mask."""
    from .kinds import split
    from .lower import lower

    plan = lower(c)
    if plan.options is not None and not plan.options:
        parts = split(c)
        raise LmlangRuntimeError(
            f"hole [{hole}]: no option of the run-time list is left"
            + (f" after `not in {list(parts.excluded)}`" if parts.excluded else ""),
            hint="pass options that the hole's other constraints allow",
            code="runtime-list",
        )
