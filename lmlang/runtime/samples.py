"""What the sampling decoders put in a result beside the values (issue #15),
one rule for the local and the served engine. Torch-free.

* `sample(n: k)` with k > 1: every hole's value is the list of its k samples
  (sample i drawn with seed + i, as best_of and vote draw theirs);
* `vote(n)`: the winner's values, plus `samples` (the voted hole's value in
  each sample, in draw order) and `votes` (each distinct value, as text, with
  its count, most frequent first);
* `best_of(n)`: the winner's values, plus `scores` (each sample's total
  log-probability, in draw order; the winner is the highest).

The checker types these fields (checker/queries.py; decoders.DETAIL_FIELDS names them) and reserves their names
on queries with that decoder; the trace records them too (QueryTrace.details).
"""

from __future__ import annotations

import json
from collections import Counter


def sample_count(decoder: tuple) -> int:
    """How many values per hole a decoder returns (sample(n: k) -> k; else 1)."""
    name, opts = decoder
    return int(dict(opts).get("n", 1)) if name == "sample" else 1


def vote_key(value) -> str:
    """A value as the text it is counted under (strings as they are)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def vote(values: list[dict], last: str) -> tuple[int, dict]:
    """(index of the winning sample, details): the most frequent value of the
    last hole wins; ties go to the value drawn first."""
    keys = [vote_key(v[last]) for v in values]
    tally = Counter(keys)
    winner = max(tally, key=lambda k: (tally[k], -keys.index(k)))
    votes = dict(sorted(tally.items(), key=lambda kv: (-kv[1], keys.index(kv[0]))))
    return keys.index(winner), {"samples": [v[last] for v in values], "votes": votes}


def best_of(logprobs: list[float]) -> tuple[int, dict]:
    """(index of the most likely sample, details)."""
    best = max(range(len(logprobs)), key=lambda i: logprobs[i])
    return best, {"scores": [float(x) for x in logprobs]}


def as_lists(per_sample: list[dict], holes) -> dict:
    """sample(n: k): each hole's k values, in draw order."""
    return {h: [d[h] for d in per_sample] for h in holes}
