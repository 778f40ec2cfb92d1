"""Guards a query may carry (issue #15), with their options: one table the
checker validates against and the runtime reads defaults from. Torch-free.

`guard leak(max_overlap: F, ngram: K)` (seed: "Why Are My Prompts Leaked?"):
while a value of the query is decoded, a token that would copy one more
token K-gram of the system prompt into the value is masked once the value
holds F x (the system prompt's distinct K-grams) of them already (F = 0: no
K-gram may be copied at all). The runtime is runtime/leak_guard.py.
"""

from __future__ import annotations

from typing import Any

from .decoders import Opt, validate_options
from .problems import Problem
from .suggest import did_you_mean

GUARDS: dict[str, dict[str, Opt]] = {
    "leak": {
        "max_overlap": Opt(float, 0.0, 0.0, 1.0, doc="share of the system prompt's token n-grams a value may copy"),
        "ngram": Opt(int, 3, 2, 64, doc="n-gram size, in tokens"),
    },
}


def resolve(name: str, given: dict) -> tuple:
    """(name, sorted (option, value) pairs with defaults); assumes validate() passed."""
    out: dict[str, Any] = {k: o.default for k, o in GUARDS[name].items()}
    out.update(given)
    for k, o in GUARDS[name].items():
        out[k] = o.type(out[k])
    return name, tuple(sorted(out.items()))


def validate(name: str, given: dict) -> list[Problem]:
    if name not in GUARDS:
        return [Problem(f"unknown guard '{name}'", did_you_mean(name, GUARDS, known="guards"), "unknown-guard")]
    return validate_options("guard", name, GUARDS[name], given)
