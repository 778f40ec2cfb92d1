"""`data NAME = generate using MODEL from DATA { task, instruction, n, seed, where ... }`:
training rows a model writes (Bonito, Nayak et al. 2024; SELF-GUIDE, Zhao et al. 2024).

Each picked source row's text (its `text` column, else all its values, as
selection compares rows: select.row_text) goes to the generation's internal
query (checker/lifecycle.generate_query): the instruction, after the task's
name, then the text, as the user's message; the model's answer is the hole
`output`, decoded under the generation's where clauses like any hole (the
same constraint machinery, batched by the executor). A row becomes
{"prompt": the user's message, "completion": the output}, a training row, so
`train ... on NAME` learns to answer the instruction without the base's help.

Which rows: all of them, or `n` of them picked by `seed` (kept in source
order). With `vote: k` the internal query decodes with `vote(n: k,
temperature: 0.7, seed)` and a row is kept only when at least `agree`
(default k) of its k samples give the winning answer: the self-consistency
filter of SELF-GUIDE-style generation, which drops the rows the model is
unsure of (a wrong guess rarely wins every sample), so an adapter learns
fewer wrong labels from fewer rows.

With `demos: DATA` (labelled rows: prompt, completion) the internal query is
few-shot, as SELF-GUIDE prompts its generator with a few seed examples: the
instruction, `shots` of the rows (picked by `seed`; default all) written as
worked examples (tables.demo_text), then the input and `Answer: [output]`.
The training row's prompt stays the zero-shot user message, so the adapter
learns to answer without the examples what the base answered with them.
The rows are cached under LMLANG_HOME/generate, keyed by the
internal query (its prompt, constraints, decoder), the generating model's
content and the input texts: a second run, or `lmlang data show`, reads them
instead of decoding again.
"""

from __future__ import annotations

import hashlib
import json
import random

from .. import ast as A
from .. import cachefile
from ..errors import LmlangError, LmlangRuntimeError
from ..values import key_name, plain_value
from .select import row_text
from .tables import GENERATED_HOLE, demo_text, demos_ref, generate_query_name

CACHE_KIND = "generate-v1"  # a list of answers; with vote, [answer, its votes] pairs


def options(src: A.DataGenerate) -> dict:
    """The generation's options as plain values (the checker checked them)."""
    return {key_name(e.key): plain_value(e.value) for e in src.options.entries}


def pick_rows(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    """`n` rows picked by `seed`, in source order; every row without `n`."""
    if n is None or n >= len(rows):
        return list(rows)
    chosen = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in chosen]


def user_message(opts: dict, text: str) -> str:
    """The text the internal query sends as the user's message (its segments
    are the instruction, a blank line, then the row's text)."""
    head = f"Task: {opts['task']}\n" if isinstance(opts.get("task"), str) else ""
    return f"{head}{opts['instruction']}\n\n{text}"


def demonstrations(src: A.DataGenerate, opts: dict, demo_rows: list[dict] | None) -> str:
    """The worked examples the internal query shows ("" without demos)."""
    if demos_ref(src) is None or demo_rows is None:
        return ""
    return demo_text(pick_rows(demo_rows, opts.get("shots"), int(opts.get("seed", 0))))


def generate_rows(
    program, name: str, src: A.DataGenerate, source: list[dict], demo_rows: list[dict] | None = None
) -> list[dict]:
    """The generated training rows of data set `name` (cached by content);
    `demo_rows`: the rows of its `demos` (None without)."""
    opts = options(src)
    demos = demonstrations(src, opts, demo_rows)
    picked = pick_rows(source, opts.get("n"), int(opts.get("seed", 0)))
    if not picked:
        raise LmlangRuntimeError(f"data set '{name}': the source {src.source.describe()} has no rows")
    texts = [row_text(r) for r in picked]
    qname = generate_query_name(name)
    execu = program._executor()
    key = _cache_key(execu, qname, texts, demos)
    path = _cache_path(key)
    cached = cachefile.read(path, CACHE_KIND)
    if cached is not None:
        stored = json.loads(cached)
        if isinstance(stored, list) and len(stored) == len(texts) and all(_well_formed(o, opts) for o in stored):
            return _rows(opts, texts, stored)
    outputs: list = []
    size = max(1, program.batch_size)
    for start in range(0, len(texts), size):
        extra = {"demos": demos} if demos_ref(src) is not None else {}
        calls: list[tuple] = [
            (qname, [], {"input": t, **extra}, start + j, None, None) for j, t in enumerate(texts[start : start + size])
        ]
        for j, out in enumerate(execu.run_calls(calls)):
            if isinstance(out, LmlangError):
                raise LmlangRuntimeError(
                    f"data set '{name}': generating row {start + j} failed: {out.message}",
                    hint=f"at {src.span.location()}",
                )
            text = _text(out.get(GENERATED_HOLE))
            won = max(out.get("votes", {}).values(), default=0)  # the winner's count: the most votes
            outputs.append([text, int(won)] if "vote" in opts else text)
    cachefile.write(path, CACHE_KIND, json.dumps(outputs, ensure_ascii=False).encode("utf-8"))
    return _rows(opts, texts, outputs)


def _well_formed(output, opts: dict) -> bool:
    if "vote" in opts:
        return (
            isinstance(output, list) and len(output) == 2 and isinstance(output[0], str) and isinstance(output[1], int)
        )
    return isinstance(output, str)


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _rows(opts: dict, texts: list[str], outputs: list) -> list[dict]:
    """The training rows; with vote, only those whose answer won `agree`
    votes (default: every sample's)."""
    if "vote" not in opts:
        return [{"prompt": user_message(opts, t), "completion": o} for t, o in zip(texts, outputs)]
    need = int(opts.get("agree", opts["vote"]))
    return [
        {"prompt": user_message(opts, t), "completion": o} for t, (o, votes) in zip(texts, outputs) if votes >= need
    ]


def _cache_key(execu, qname: str, texts: list[str], demos: str = "") -> str:
    """The internal query's spec (model replaced by its content hash, the
    result cache's own node hash), the demonstrations and the inputs."""
    from ..graph.specs import to_jsonable
    from ..runtime.result_cache import CallKeys

    nid = execu.query_ids[qname]
    spec = execu.c.spec(nid)
    form = to_jsonable(spec)
    form.pop("loc", None)
    form["model"] = CallKeys(execu.c, {}).model_hash(spec.model)
    h = hashlib.sha256(json.dumps([CACHE_KIND, form], sort_keys=True, default=str).encode())
    if demos:  # without demos the key is what it was: earlier caches stay valid
        h.update(b"demos:" + hashlib.sha256(demos.encode("utf-8", "surrogatepass")).digest())
    for t in texts:
        h.update(hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest())
    return h.hexdigest()


def _cache_path(key: str):
    from ..home import cache_dir

    return cache_dir("generate") / f"{key}.json"
