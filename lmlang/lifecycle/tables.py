"""The lifecycle's names, read by the checker and the runtime alike (torch-free)."""

from __future__ import annotations

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
}
VOTE_TEMPERATURE = 0.7  # the vote's samples: varied enough that a guess splits the vote
GENERATED_HOLE = "output"  # the hole the model writes; a generation's where clauses constrain it
GENERATED_COLUMNS = ("prompt", "completion")  # a generated row: a training row


def generate_query_name(data_name: str) -> str:
    """The internal query of data set `data_name`'s generation (not a name a
    script can write, so it never collides with a declaration)."""
    return f"{data_name}.generate"
