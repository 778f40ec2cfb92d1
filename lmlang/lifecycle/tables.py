"""The lifecycle's names, read by the checker and the runtime alike (torch-free)."""

from __future__ import annotations

from .. import ast as A

# eval metrics: name -> what it scores (docs/language.md, "Evaluations")
METRICS = {
    "exact_match": "the value equals the expected one, after trimming whitespace",
    "accuracy": "the value equals the expected one, compared case-insensitively after trimming",
    "f1": "token-level F1 between the value and the expected text (SQuAD style), averaged over rows",
}

# data selection methods: name -> how a pool row's closeness to the target set is measured
SELECT_METHODS = {
    "gzip": "normalized compression distance (gzip) to the target set (ZIP-FIT)",
    "embedding": "cosine of the mean-pooled hidden state to the target set's centroid, on the base model",
}

DATA_FORMATS = (".jsonl", ".csv")

# `data NAME = generate using MODEL from DATA { ... }`: option -> (type, what it is)
GENERATE_OPTIONS = {
    "instruction": (str, "what the model is asked to do with each row (required)"),
    "task": (str, "the task's name, written before the instruction"),
    "n": (int, "how many rows to generate (default: one per source row; at most that)"),
    "seed": (int, "picks which n source rows (default 0); seeds the vote's samples"),
    "vote": (int, "sample this many answers per row and keep only the rows they agree on (default: one greedy answer)"),
    "agree": (int, "with vote: how many of the samples must give the kept answer (default: all of them)"),
    "demos": (
        A.DataRef,
        "labelled rows (prompt, completion) shown to the model as worked examples (a file or a data set)",
    ),
    "shots": (int, "with demos: how many of its rows to show, picked by seed (default: every row)"),
}
VOTE_TEMPERATURE = 0.7  # the vote's samples: varied enough that a guess splits the vote
GENERATED_HOLE = "output"  # the hole the model writes; a generation's where clauses constrain it
GENERATED_COLUMNS = ("prompt", "completion")  # a generated row: a training row


def generate_query_name(data_name: str) -> str:
    """The internal query of data set `data_name`'s generation (not a name a
    script can write, so it never collides with a declaration)."""
    return f"{data_name}.generate"


def demos_ref(src: A.DataGenerate) -> A.DataRef | None:
    """The generation's `demos:` as a data argument: a string is a file,
    a bare name a declared data set; None without demos (or a value of
    another kind, which the checker refuses)."""
    for e in src.options.entries:
        if isinstance(e.key, A.ModelRef) and e.key.name == "demos":
            v = e.value
            if isinstance(v, A.Literal) and isinstance(v.value, str):
                return A.DataRef(path=v.value, span=v.span)
            if isinstance(v, A.ModelRef):
                return A.DataRef(name=v.name, span=v.span)
    return None


def demo_text(rows: list[dict]) -> str:
    """The worked examples a generation with `demos` shows before each input:
    each row's prompt, then `Answer: ` and its completion (the format the
    internal query ends in, so the model's answer continues the pattern)."""
    return "".join(f"{r['prompt']}\n{DEMO_ANSWER}{r['completion']}\n\n" for r in rows)


DEMO_ANSWER = "Answer: "  # before each demonstration's completion and before the hole
