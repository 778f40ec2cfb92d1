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
