"""How two shapes on one hole combine: one rule, read by the checker (which
merges the shapes a script writes), by lowering (which turns a constraint into
one mask plan) and by constraint checking (which warns about dead options).

The question every layer asks is the same: which options of a choice are
values of the other shape? `option_fits` answers it for one option, with the
regexes the decoder enforces (so the checker and the mask never disagree),
and `split_options` for a whole choice. What a layer does with the answer is
its own policy: the checker calls a partial fit a contradiction (the author
should see it), check.py warns about the options that can never be chosen,
lowering keeps the ones that fit.

Torch-free and backend-free: `lmlang check` imports it.
"""

from __future__ import annotations

import json
import re

from .spec import AnyOf, BoolType, Choice, ChoiceParam, Constraint, FloatType, Grammar, IntType, JsonSchema, Regex

# `x is int` without bounds is an int64: a model never writes 256 digits,
# and every value fits the integer types of the languages that read it.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# `x is float`: at most 16 digits before the point and 16 after it, and an
# exponent of at most two digits, so every value is a finite double
# (|x| < 1e116) written the way people write numbers.
FLOAT_REGEX = r"-?(?:0|[1-9][0-9]{0,15})(?:\.[0-9]{1,16})?(?:[eE][+-]?[0-9]{1,2})?"
BOOL_REGEX = r"true|false"


def strip_anchors(pattern: str) -> str:
    """`matches` is a full match already: drop a leading ^/\\A and a trailing $/\\Z."""
    p = pattern
    if p.startswith("^"):
        p = p[1:]
    elif p.startswith("\\A"):
        p = p[2:]
    if p.endswith("\\Z") and not p.endswith("\\\\Z"):
        p = p[:-2]
    elif p.endswith("$") and not p.endswith("\\$"):
        p = p[:-1]
    return p


def shape_regex(c: Constraint) -> str | None:
    """The full-match regex a regex-like shape is decoded with (None for
    choices, JSON and grammars)."""
    if isinstance(c, Regex):
        return strip_anchors(c.pattern)
    if isinstance(c, IntType):
        return int_regex(*int_range(c))
    if isinstance(c, FloatType):
        return FLOAT_REGEX
    if isinstance(c, BoolType):
        return BOOL_REGEX
    if isinstance(c, AnyOf):
        return union_regex(c)
    return None


# ---- second wave (issue #15): `or` over one hole's shapes --------------------


def alternative_regex(c: Constraint) -> str | None:
    """One alternative of an `or` as a regex (a choice as its literals)."""
    if isinstance(c, Choice):
        from .lower import choice_regex  # lower.py imports this module

        return choice_regex(c.options)
    return shape_regex(c)


def union_regex(c: AnyOf) -> str | None:
    """The union of the alternatives' regexes, each group-wrapped; None when
    one has no regex (a run-time list not yet resolved, a JSON or grammar
    shape: the checker refuses those inside `or`)."""
    parts = [alternative_regex(a) for a in c.alternatives]
    if any(p is None for p in parts):
        return None
    return "|".join(f"(?:{p})" for p in parts)


def int_bounds(c: IntType) -> tuple[int | None, int | None]:
    """The bounds the script wrote (None where it left an end open)."""
    return getattr(c, "lo", None), getattr(c, "hi", None)


def int_range(c: IntType) -> tuple[int, int]:
    """The inclusive range an int hole decodes: its bounds, int64 where open."""
    lo, hi = int_bounds(c)
    return (INT64_MIN if lo is None else lo), (INT64_MAX if hi is None else hi)


def int_regex(lo: int, hi: int) -> str:
    """The decimal integers from lo to hi, exactly ("-0" and leading zeros
    excluded), as a regex; one that matches nothing when lo > hi."""
    parts = []
    if lo > hi:
        return r"[^\s\S]"
    if lo <= -1:
        parts += ["-" + p for p in _naturals(-min(hi, -1), -lo)]
    if hi >= 0:
        parts += _naturals(max(lo, 0), hi)
    return "(?:" + "|".join(parts) + ")" if parts else r"[^\s\S]"


def _naturals(a: int, b: int) -> list[str]:
    """Alternatives for the naturals a..b (0 <= a <= b), one per digit count."""
    out = []
    for n in range(len(str(a)), len(str(b)) + 1):
        x = str(a) if n == len(str(a)) else "1" + "0" * (n - 1)
        y = str(b) if n == len(str(b)) else "9" * n
        out.append(_group(_digits(x, y)))
    return out


def _digits(x: str, y: str) -> str:
    """Digit strings of one length between x and y (x <= y)."""
    if x == y:
        return x
    if x[0] == y[0]:
        return x[0] + _group(_digits(x[1:], y[1:]))
    rest = len(x) - 1
    tail = "" if rest == 0 else "[0-9]" if rest == 1 else f"[0-9]{{{rest}}}"
    lo_d, hi_d, alts, last = int(x[0]), int(y[0]), [], ""
    if x[1:] != "0" * rest:
        alts.append(x[0] + _group(_digits(x[1:], "9" * rest)))
        lo_d += 1
    if y[1:] != "9" * rest:
        last = y[0] + _group(_digits("0" * rest, y[1:]))
        hi_d -= 1
    if lo_d <= hi_d:
        alts.append((str(lo_d) if lo_d == hi_d else f"[{lo_d}-{hi_d}]") + tail)
    return "|".join(alts + ([last] if last else []))


def _group(r: str) -> str:
    return f"(?:{r})" if "|" in r else r


def option_fits(option: str, other: Constraint) -> bool:
    """Whether one option of a choice is a value of the shape `other`."""
    if isinstance(other, Choice):
        return option in other.options
    if isinstance(other, AnyOf):
        return any(option_fits(option, a) for a in other.alternatives)
    if isinstance(other, ChoiceParam):
        return True  # known only at run time (runtime_lists.resolve filters then)
    if isinstance(other, IntType):
        if not re.fullmatch(r"-?(?:0|[1-9][0-9]*)", option) or option == "-0":
            return False
        lo, hi = int_range(other)
        return lo <= int(option) <= hi
    pattern = shape_regex(other)
    if pattern is not None:
        # linear time: a ReDoS pattern checked against options took seconds
        # per character with `re`; a pattern the engine cannot run cannot be
        # decoded either (check_regex reports it), so no option fits it
        from . import linear_regex

        try:
            return linear_regex.fullmatch(pattern, option)
        except ValueError:
            return False
    if isinstance(other, JsonSchema):
        try:
            import jsonschema

            from .formats import lower_schema_text

            jsonschema.validate(json.loads(option), json.loads(lower_schema_text(other.schema, other.formats)))
            return json.dumps(json.loads(option), ensure_ascii=False) == option
        except Exception:
            return False
    if isinstance(other, Grammar):
        try:
            import lark

            lark.Lark(other.lark, start="start").parse(option)
            return True
        except Exception:
            return False
    return True


def split_options(options, other: Constraint) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the options that are values of `other`, those that are not), each in order."""
    if isinstance(other, Choice):  # set membership: two long lists stay linear
        allowed = set(other.options)
        fits = [o in allowed for o in options]
    else:
        fits = [option_fits(o, other) for o in options]
    return (tuple(o for o, f in zip(options, fits) if f), tuple(o for o, f in zip(options, fits) if not f))


def merge_shapes(a: Constraint, b: Constraint) -> Constraint | None:
    """Two shapes a script writes on one hole, as one shape, or None when
    they contradict. Two choices keep their common options (both lists are
    the author's); a choice and a regex-like shape (int, float, bool,
    `matches`) make the choice, if every option fits: a partial fit is a
    contradiction the author should see, not a silent narrowing. A JSON or
    grammar shape combines with nothing (as in lowering). An `or` with
    another shape distributes (every alternative must merge, or it is a
    contradiction); a run-time list merges with nothing (the checker says why)."""
    if isinstance(a, ChoiceParam) or isinstance(b, ChoiceParam):
        return None
    if isinstance(b, Choice) and not isinstance(a, Choice):
        a, b = b, a
    if isinstance(a, Choice):
        if isinstance(b, (JsonSchema, Grammar)):
            return None
        if isinstance(b, Regex):
            try:
                re.compile(strip_anchors(b.pattern))
            except re.error:
                return None
        fit, unfit = split_options(a.options, b)
        if isinstance(b, Choice):
            return Choice(fit) if fit else None
        return a if not unfit else None
    if isinstance(b, AnyOf) and not isinstance(a, AnyOf):
        a, b = b, a
    if isinstance(a, AnyOf):
        if a == b:
            return a
        merged = [merge_shapes(alt, b) for alt in a.alternatives]
        if any(m is None for m in merged):
            return None
        return any_of([m for m in merged if m is not None])
    if type(a) is type(b) and a == b:
        return a
    return None


def any_of(alternatives) -> Constraint:
    """Alternatives of `or` as one shape: nested `or`s flattened, duplicates
    dropped, all-choice alternatives folded into one Choice (their union),
    a single alternative as itself."""
    flat: list[Constraint] = []
    for a in alternatives:
        flat.extend(a.alternatives if isinstance(a, AnyOf) else (a,))
    flat = list(dict.fromkeys(flat))
    if all(isinstance(a, Choice) for a in flat):
        return Choice(tuple(dict.fromkeys(o for a in flat for o in a.options)))  # type: ignore[attr-defined]
    return flat[0] if len(flat) == 1 else AnyOf(tuple(flat))
