"""The lifecycle statements: data sets (`data`), evaluations (`eval`) and
exports (`export`).

A data set's columns are known at check time when its rows come from a file
(the first row's keys, or a CSV header) or from a selection (the pool's
columns): every use of the data set (an eval's query parameters and
expected field, a selection, training) is checked against them here, before
any model loads. A generation's rows are training rows (prompt, completion);
its options and its internal query (the instruction, the row's text, the
hole `output` under the block's where clauses) are checked here too, the
query by the same code as any query. A source whose columns are known only
when it runs would have columns None, its uses checked at run time.

What an export cannot write is refused here with the declaration's
position: a router (no weights of its own), a fusion (its members' logits
mix at each step: no single set of weights), a served model (its weights
live in the server).
"""

from __future__ import annotations

from pathlib import Path

from .. import ast as A
from ..lifecycle.tables import (
    DATA_FORMATS,
    DEMO_ANSWER,
    GENERATE_OPTIONS,
    GENERATED_COLUMNS,
    GENERATED_HOLE,
    METRICS,
    SELECT_METHODS,
    VOTE_TEMPERATURE,
    demos_ref,
    generate_query_name,
)
from ..values import NOT_PLAIN, key_name, key_text, plain_value
from .context import Context, probe
from .program import PathRefused


def check_lifecycle(cx: Context) -> None:
    for d in cx.out.datasets.values():
        cx.out.data_columns[d.name] = _dataset_columns(cx, d, ())
    for d in cx.out.datasets.values():
        if isinstance(d.source, A.DataGenerate):  # its options and query: add_generate_queries
            data_ref_columns(cx, d.source.source, (d.name,))
            _check_demos_columns(cx, d)
    for e in cx.out.evals.values():
        _check_eval(cx, e)
    seen: dict[Path, A.ExportDecl] = {}
    for x in cx.out.exports:
        _check_export(cx, x, seen)


# ---------------------------------------------------------------- data sets


def _dataset_columns(cx: Context, d: A.DataDecl, stack: tuple) -> tuple | None:
    """The data set's columns (None: known only at run time, or an error
    already reported). `stack` holds the data sets being resolved, so a
    selection from itself is a cycle error, not a recursion."""
    if d.name in cx.out.data_columns:
        return cx.out.data_columns[d.name]
    src = d.source
    if isinstance(src, A.DataFile):
        cols = file_columns(cx, "data file", src.path, src)
    elif isinstance(src, A.DataSelect):
        cols = _check_select(cx, d, src, (*stack, d.name))
    elif isinstance(src, A.DataGenerate):
        cols = GENERATED_COLUMNS  # its source is checked by check_lifecycle, its query by add_generate_queries
    else:
        return None  # a source checked by its own pass (columns known when it runs)
    cx.out.data_columns[d.name] = cols
    return cols


def _check_select(cx: Context, d: A.DataDecl, src: A.DataSelect, stack: tuple) -> tuple | None:
    if src.k <= 0:
        cx.error(f"select takes a positive number of rows, got {src.k}", src, "e.g. `select 100 from POOL ...`")
    if src.method not in SELECT_METHODS:
        cx.error(
            f"unknown selection method '{src.method}'",
            src.method_span or src,
            cx.did_you_mean(src.method, SELECT_METHODS) or f"methods: {', '.join(SELECT_METHODS)}",
        )
    pool = data_ref_columns(cx, src.pool, stack)
    data_ref_columns(cx, src.target, stack)
    return pool


def add_generate_queries(cx: Context) -> None:
    """A pass before the query passes: each generation's internal query
    (its options checked first) joins the script's queries, so the query
    passes check it like any query (holes, where clauses, the model, what a
    served engine can decode) at the script's own words."""
    for d in cx.out.datasets.values():
        if isinstance(d.source, A.DataGenerate) and _check_generate_options(cx, d.source):
            q = generate_query(d.name, d.source)
            cx.out.query_decls[q.name] = q
            cx.decls.append(q)


def _check_generate_options(cx: Context, src: A.DataGenerate) -> bool:
    """Errors in a generation's options; False when it has no instruction."""
    seen: set = set()
    for e in src.options.entries:
        key = key_name(e.key)
        if key not in GENERATE_OPTIONS:
            text = key_text(e.key)
            cx.error(
                f"unknown generate option '{text}'", e.key, cx.did_you_mean(text, GENERATE_OPTIONS, known="options")
            )
            continue
        if key in seen:
            cx.error(f"option '{key}' given twice", e.key)
        seen.add(key)
        want = GENERATE_OPTIONS[key][0]
        value = plain_value(e.value)
        if want is A.DataRef:
            if demos_ref(src) is None:
                cx.error(
                    f"generate option '{key}' takes a data file or a data set's name",
                    e.value,
                    'e.g. demos: "examples.jsonl" (rows with prompt and completion)',
                )
        elif value is NOT_PLAIN or type(value) is not want:
            cx.error(f"generate option '{key}' takes {'a string' if want is str else 'an integer'}", e.value)
        elif key == "n" and isinstance(value, int) and value <= 0:
            cx.error(f"generate takes a positive number of rows, got n: {value}", e.value)
        elif key == "vote" and isinstance(value, int) and value < 2:
            cx.error(f"a vote needs at least 2 samples, got vote: {value}", e.value, "leave vote out for one answer")
        elif key == "agree":
            _check_agree(cx, src, e.value, value)
        elif key == "shots":
            _check_shots(cx, src, e.value, value)
        elif key == "instruction" and isinstance(value, str) and not value.strip():
            cx.error("the instruction is empty", e.value, "say what the model writes for each row")
    if "instruction" not in seen:
        cx.error(
            "generate needs an instruction",
            src.options,
            'e.g. { instruction: "Label the review positive or negative." }',
        )
        return False
    return True


def _check_agree(cx: Context, src: A.DataGenerate, at, value) -> None:
    """`agree: m` counts the votes of `vote: k`: 1 <= m <= k."""
    vote = next((plain_value(e.value) for e in src.options.entries if key_name(e.key) == "vote"), None)
    if not isinstance(vote, int):
        cx.error("agree needs vote (the samples it counts)", at, "e.g. { vote: 5, agree: 4 }")
    elif isinstance(value, int) and not 1 <= value <= vote:
        cx.error(f"agree counts votes of {vote} samples: between 1 and {vote}, got {value}", at)


def _check_shots(cx: Context, src: A.DataGenerate, at, value) -> None:
    """`shots: k` picks demonstrations: it needs demos, and k >= 1."""
    if demos_ref(src) is None:
        cx.error("shots needs demos (the rows it picks)", at, 'e.g. { demos: "examples.jsonl", shots: 4 }')
    elif isinstance(value, int) and value <= 0:
        cx.error(f"shots takes a positive number of rows, got {value}", at)


def _check_demos_columns(cx: Context, d: A.DataDecl) -> None:
    """The demonstrations are labelled rows: prompt and completion."""
    assert isinstance(d.source, A.DataGenerate)
    ref = demos_ref(d.source)
    if ref is None:
        return
    cols = data_ref_columns(cx, ref, (d.name,))
    missing = [c for c in GENERATED_COLUMNS if cols is not None and c not in cols]
    if missing:
        cx.error(
            f"the demonstrations {ref.describe()} have no {' or '.join(missing)} column",
            ref,
            "demos are labelled rows: {\"prompt\": ..., \"completion\": ...}",
        )


def generate_query(name: str, src: A.DataGenerate) -> A.QueryDecl:
    """The internal query of a generation: the instruction (after the task's
    name, if given) and the row's text as the user's message, the model's
    answer as the hole `output`, under the generation's where clauses.

    With `demos`, a few-shot prompt in plain text (no chat template): the
    instruction, the worked examples (parameter `demos`, written by
    lifecycle.tables.demo_text), the row's text and `Answer: [output]`,
    ended by a newline. A small chat model answers a bare question with a
    sentence ("To solve this...") and, held to a number, copies an operand;
    after worked examples in plain text it continues the pattern (SmolLM2-135M
    on one-digit sums: 0 of 20 right in chat, 12 of 20 few-shot)."""
    opts = {key_name(e.key): plain_value(e.value) for e in src.options.entries}
    head = f"Task: {opts['task']}\n" if isinstance(opts.get("task"), str) else ""
    at = src.span
    param = A.Param("input", A.TypeRef("str", span=at), span=at)
    intro = A.Text(f"{head}{opts.get('instruction', '')}\n\n", span=at)
    if demos_ref(src) is not None:
        parts = (
            intro,
            A.Interp(("demos",), span=at),
            A.Interp(("input",), span=at),
            A.Text(f"\n{DEMO_ANSWER}", span=at),
            A.Hole(GENERATED_HOLE, span=at),
            A.Text("\n", span=at),
        )
        segments: tuple = (A.Segment(None, parts, span=at),)
        params: tuple = (param, A.Param("demos", A.TypeRef("str", span=at), span=at))
    else:
        user = A.Segment("user", (intro, A.Interp(("input",), span=at)), span=at)
        answer = A.Segment("assistant", (A.Hole(GENERATED_HOLE, span=at),), span=at)
        segments, params = (user, answer), (param,)
    decoder = None  # argmax: one answer per row
    if isinstance(opts.get("vote"), int):  # vote: k samples, the rows they agree on (generate.filter_votes)
        seed = opts.get("seed", 0)
        kwargs = (
            ("n", opts["vote"]),
            ("temperature", VOTE_TEMPERATURE),
            ("seed", seed if isinstance(seed, int) else 0),
        )
        decoder = A.Decoder("vote", tuple(A.KwArg(k, A.Literal(v, span=at), span=at) for k, v in kwargs), span=at)
    return A.QueryDecl(generate_query_name(name), params, src.model, decoder, segments, src.wheres, None, span=at)


def data_ref_columns(cx: Context, ref: A.DataRef, stack: tuple = ()) -> tuple | None:
    """The columns of a data argument (a file or a data set's name); None
    when unknown or wrong (the error is reported)."""
    if ref.path is not None:
        return file_columns(cx, "data file", ref.path, ref)
    name = ref.name or ""
    d = cx.out.datasets.get(name)
    if d is None:
        kind = cx.out.kind_of(name)
        cx.error(
            f"'{name}' is {kind}, not a data set" if kind else f"undefined data set '{name}'",
            ref,
            "" if kind else cx.did_you_mean(name, cx.out.datasets) or 'declare it: data NAME = "rows.jsonl"',
        )
        return None
    if name in stack:
        cx.error(f"data set '{name}' is selected from itself", ref, "select from another data set or a file")
        return None
    return _dataset_columns(cx, d, stack)


def file_columns(cx: Context, kind: str, text: str, node) -> tuple | None:
    """A data file's columns: the first row's keys (JSONL) or the header
    (CSV), read with the reader data runs use. Only the first row is read."""
    from ..datarun import read_rows
    from ..errors import LmlangError

    suffix = Path(text).suffix.lower()
    if suffix not in DATA_FORMATS:
        cx.error(f"a data file is .jsonl or .csv, not {suffix or 'a file without extension'}", node)
        return None
    path = cx.file_ref(kind, text, node)
    if path is None:
        return None
    try:
        rows = read_rows(path)
        first = next(iter(rows), None)
    except LmlangError as e:
        cx.error(f"cannot read {kind} {text}: {e.message}", node, e.hint)
        return None
    if first is None:
        cx.error(f"{kind} {text} has no rows", node)
        return None
    if first.error is not None or first.values is None:
        msg = first.error.message if first.error is not None else "unreadable"
        cx.error(f"bad first row in {kind} {text}: {msg}", node)
        return None
    return tuple(first.values)


# ---------------------------------------------------------------- evaluations


def _check_eval(cx: Context, e: A.EvalDecl) -> None:
    if e.metric not in METRICS:
        cx.error(
            f"unknown metric '{e.metric}'",
            e.metric_span or e,
            cx.did_you_mean(e.metric, METRICS) or f"metrics: {', '.join(METRICS)}",
        )
    if e.keyword != "expected":
        cx.error(
            f"an eval names its expected field with `expected:`, not `{e.keyword}:`",
            e.keyword_span or e,
            f"write `expected: {e.expected}`",
        )
    info = cx.out.queries.get(e.query)
    if info is None:
        kind = cx.out.kind_of(e.query)
        cx.error(
            f"'{e.query}' is {kind}, not a query" if kind else f"undefined query '{e.query}'",
            e.query_span or e,
            "" if kind else cx.did_you_mean(e.query, cx.out.query_decls),
        )
    elif e.expected not in info.holes:
        cx.error(
            f"query '{e.query}' has no hole '{e.expected}'",
            e.expected_span or e,
            cx.did_you_mean(e.expected, info.holes) or f"its holes: {', '.join(info.holes) or 'none'}",
        )
    cols = data_ref_columns(cx, e.data)
    if cols is None or info is None:
        return
    missing = [p.name for p in info.decl.params if p.name not in cols]
    if e.expected not in cols:
        missing.append(e.expected)
    if missing:
        cx.error(
            f"data {e.data.describe()} has no column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}",
            e.data,
            f"its columns: {', '.join(cols) or 'none'}; an eval needs the query's parameters and the expected field",
        )


# ---------------------------------------------------------------- exports


def _check_export(cx: Context, x: A.ExportDecl, seen: dict) -> None:
    at = x.target_span or x
    if x.target in cx.out.routers:
        cx.error(
            f"'{x.target}' is a router, which cannot be exported",
            at,
            "a router picks a model per input and has no weights of its own; export its experts",
        )
    elif x.target in cx.out.models:
        why = unexportable(cx, cx.out.models[x.target].expr, ())
        if why:
            cx.error(f"model '{x.target}' cannot be exported: {why[0]}", at, why[1])
    elif x.target not in cx.out.adapters:
        kind = cx.out.kind_of(x.target)
        cx.error(
            f"'{x.target}' is {kind}; export takes a model or an adapter"
            if kind
            else f"undefined model or adapter '{x.target}'",
            at,
            "" if kind else cx.did_you_mean(x.target, [*cx.out.models, *cx.out.adapters]),
        )
    try:
        path = cx.out.confined_path(x.path, x)
    except PathRefused as e:
        cx.refuse("export", x.path, x, e)
        return
    except (OSError, ValueError, RuntimeError):
        cx.error(f"invalid export path {x.path!r}", x)
        return
    if path in seen:
        cx.error(f"two exports write {x.path!r}", x, f"the other is at line {seen[path].span.line}")
    seen[path] = x
    if probe(path, "file"):
        cx.error(f"export path {x.path!r} is a file", x, "export writes a folder: name a new or empty folder")


def unexportable(cx: Context, e, stack: tuple) -> tuple[str, str] | None:
    """Why a model expression has no weights to write (message, hint), or None."""
    if isinstance(e, A.ModelRef):
        d = cx.out.models.get(e.name)
        return unexportable(cx, d.expr, (*stack, e.name)) if d is not None and e.name not in stack else None
    if isinstance(e, A.FuseExpr):
        return (
            "a fusion mixes its members' logits at each step and has no single set of weights",
            "export its members, or merge them (`merge linear { ... }`) and export the merge",
        )
    if isinstance(e, (A.ServerModel, A.VllmModel)):
        return ("a served model's weights live in its server", "export the local model or adapter it serves")
    if isinstance(e, A.MergeExpr) and e.method == "twin":
        return (
            "a twin merge weighs its experts per input and has no single set of weights",
            "export its adapters, or a static merge of them (`merge ties { ... }`)",
        )
    if isinstance(e, A.Adapted):
        return unexportable(cx, e.base, stack)
    return None
