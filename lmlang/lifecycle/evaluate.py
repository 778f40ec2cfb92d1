"""`eval NAME = METRIC(QUERY, DATA, expected: FIELD)`: a query over every
row of a data set, scored against the row's FIELD.

Rows go to the executor in chunks of the program's batch size (one
`run_calls` per chunk: the rows decode together, and the result cache
answers rows already seen). A row whose call fails scores 0 and is counted
in `errors`. The metrics (tables.METRICS):

- exact_match: the value equals the expected text after trimming whitespace.
- accuracy: the same, case-insensitive (a label's case is not its meaning).
- f1: token F1 (SQuAD's: lower case, punctuation and articles removed,
  whitespace tokens, bag overlap), averaged over rows.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import asdict, dataclass

from ..errors import LmlangError, LmlangRuntimeError
from .data import DataSets


@dataclass(frozen=True)
class EvalResult:
    name: str
    metric: str
    query: str
    model: str  # the query's model, by its name in the script
    n: int
    score: float
    errors: int

    def to_dict(self) -> dict:
        return asdict(self)


def _text(v) -> str:
    return v if isinstance(v, str) else str(v)


def exact_match(value, expected) -> float:
    return float(_text(value).strip() == _text(expected).strip())


def accuracy(value, expected) -> float:
    return float(_text(value).strip().casefold() == _text(expected).strip().casefold())


_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _tokens(s: str) -> list[str]:
    return _ARTICLES.sub(" ", _PUNCT.sub("", s.lower())).split()


def f1(value, expected) -> float:
    got, want = _tokens(_text(value)), _tokens(_text(expected))
    if not got or not want:
        return float(got == want)
    common = sum((Counter(got) & Counter(want)).values())
    if common == 0:
        return 0.0
    p, r = common / len(got), common / len(want)
    return 2 * p * r / (p + r)


SCORERS = {"exact_match": exact_match, "accuracy": accuracy, "f1": f1}


def run_evals(program, only: tuple[str, ...] = (), data: DataSets | None = None) -> list[EvalResult]:
    """Every `eval` of the script (those named in `only`, if given), in script order."""
    checked = program.frontend.checked
    data = data or DataSets(program)
    unknown = [n for n in only if n not in checked.evals]
    if unknown:
        raise LmlangRuntimeError(
            f"no eval '{unknown[0]}' in this script", hint=f"evals: {', '.join(checked.evals) or 'none'}"
        )
    return [run_eval(program, d, data) for name, d in checked.evals.items() if not only or name in only]


def run_eval(program, decl, data: DataSets) -> EvalResult:
    checked, compiled = program.frontend.checked, program.frontend.compiled
    info = checked.queries[decl.query]
    params = [p.name for p in info.decl.params]
    rows = data.rows_of_ref(decl.data)
    for i, row in enumerate(rows):  # a generated data set's columns are known only now
        missing = [c for c in (*params, decl.expected) if c not in row]
        if missing:
            raise LmlangRuntimeError(
                f"eval {decl.name}: row {i} of {decl.data.describe()} has no column {missing[0]!r}",
                hint=f"at {decl.span.location()}",
            )
    execu = program._executor()
    score_of = SCORERS[decl.metric]
    total, errors = 0.0, 0
    size = max(1, program.batch_size)
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        calls: list[tuple] = [
            (decl.query, [], {p: row[p] for p in params}, start + j, None, None) for j, row in enumerate(chunk)
        ]
        for row, out in zip(chunk, execu.run_calls(calls)):
            if isinstance(out, LmlangError) or not isinstance(out, dict):
                errors += 1
                continue
            total += score_of(out.get(decl.expected), row[decl.expected])
    nid = compiled.names[decl.query]
    model = compiled.display_name(compiled.spec(nid).model)
    return EvalResult(decl.name, decl.metric, decl.query, model, len(rows), total / len(rows) if rows else 0.0, errors)
