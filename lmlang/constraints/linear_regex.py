"""Regex matching in time linear in the text, for the places a script's
regex meets text outside decoding: `route rules { matches r"..." }` on each
input row, and a choice's options checked against a `matches` shape at check
time.

Python's `re` backtracks: `(a+)+b` took 108 s on a 30-character row and
doubles with each character. llguidance's regex engine (derivatives, a
lazily built DFA, the engine that already enforces `matches` while
decoding) has no backtracking, so one pass over the text's bytes decides.
It has no look-around, backreferences or `\\b`; `unsupported()` says so, and
the checker refuses such rule patterns with that reason.
"""

from __future__ import annotations

from functools import lru_cache

_ANY = "(?s:.*)"


def _escaped(pattern: str, i: int) -> bool:
    """Whether pattern[i] is escaped by an odd run of backslashes before it."""
    n = 0
    while i - n - 1 >= 0 and pattern[i - n - 1] == "\\":
        n += 1
    return n % 2 == 1


def search_pattern(pattern: str) -> str:
    """The fullmatch pattern equivalent to `re.search(pattern, text)`: any
    text around it, except where a leading `^` or trailing `$` anchors it."""
    start = pattern.startswith("^")
    end = pattern.endswith("$") and not _escaped(pattern, len(pattern) - 1) and len(pattern) > int(start)
    core = pattern[int(start) : len(pattern) - int(end)]
    return ("" if start else _ANY) + f"(?:{core})" + ("" if end else _ANY)


@lru_cache(maxsize=512)
def _grammar(pattern: str) -> tuple[str | None, str]:
    """(llguidance grammar, "") or (None, why the engine cannot take it)."""
    import llguidance

    try:
        grammar = llguidance.LLMatcher.grammar_from_regex(pattern)
        err = llguidance.LLMatcher.validate_grammar(grammar).strip()
    except Exception as e:  # noqa: BLE001 - llguidance raises plain exceptions for bad input
        return None, _reason(str(e))
    return (None, _reason(err)) if err else (grammar, "")


def _reason(err: str) -> str:
    lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("error:"):
            return ln[len("error:") :].strip()
    for ln in lines:
        if "not supported" in ln or "not suppo" in ln:
            return ln.split(": ")[-1]
    return lines[0] if lines else "not a regular expression"


def unsupported(pattern: str, search: bool = True) -> str:
    """Why the linear-time engine cannot run this pattern ("" when it can);
    the checker's question, so the answer is kept in the check cache
    (constraints/check.py: `lmlang check` imports llguidance only the first time)."""
    from .check import cached_verdict

    full = search_pattern(pattern) if search else pattern
    return cached_verdict(f"linear-regex unsupported\n{full}", lambda: _grammar(full)[1])


def _fullmatch(full: str, text: str) -> bool:
    import llguidance

    from .check import _byte_tokenizer

    grammar, why = _grammar(full)
    if grammar is None:
        raise ValueError(why)
    m = llguidance.LLMatcher(_byte_tokenizer(), grammar, log_level=0)
    data = text.encode("utf-8", "surrogatepass")
    return bool(m.consume_tokens(list(data))) and m.is_accepting() and not m.is_error()


def search(pattern: str, text: str) -> bool:
    """`re.search(pattern, text) is not None`, in linear time. ValueError
    when `unsupported(pattern)`."""
    return _fullmatch(search_pattern(pattern), text)


def fullmatch(pattern: str, text: str) -> bool:
    """`re.fullmatch(pattern, text) is not None`, in linear time. ValueError
    when `unsupported(pattern, search=False)`."""
    return _fullmatch(pattern, text)
