"""One "did you mean" for every layer: the same matching, the same words.

Every unknown name a user can type (a declaration, an option, a decoder, a
merge method, a JSON type, a tool, a target module) is answered through
`did_you_mean`, so the hints read alike wherever they come from:
`did you mean 'ties'?`, or, with no close match, the list of known names.
"""

from __future__ import annotations

from typing import Iterable

CUTOFF = 0.6  # difflib's default: 'tis' -> 'ties', 'defualt' -> 'default'
MAX_LISTED = 12  # a longer list of known names is cut with '...'


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate to `name`, or None."""
    import difflib  # only a script with a mistake pays for it

    found = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=CUTOFF)
    return found[0] if found else None


def did_you_mean(name: str, candidates: Iterable[str], known: str = "") -> str:
    """`did you mean 'x'?` for the closest candidate; otherwise, when `known`
    names the kind of thing (`known="decoders"`), a hint listing them
    (`decoders: argmax, sample, ...`); otherwise "" (no hint)."""
    candidates = list(candidates)
    match = closest(name, candidates)
    if match is not None:
        return f"did you mean '{match}'?"
    if known and candidates:
        shown = ", ".join(str(c) for c in candidates[:MAX_LISTED])
        return f"{known}: {shown}{', ...' if len(candidates) > MAX_LISTED else ''}"
    return ""
