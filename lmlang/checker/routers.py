"""Routers: `route KIND [using MODEL] { expert: how to pick it, ... }`.

An embedding router picks by similarity to example texts or a description,
a classify router asks a model to pick by description, a rules router by
regexes and keywords (with one `default:` for inputs no rule matches).
"""

from __future__ import annotations

import re

from .. import ast as A
from ..router_kinds import DESCRIPTION, EXAMPLES, ROUTER_KINDS, RULE
from ..values import key_name, plain_value
from .context import Context, name_span
from .models import check_model_expr


def check_routers(cx: Context) -> None:
    for r in cx.out.routers.values():
        if r.kind not in ROUTER_KINDS:
            cx.error(
                f"unknown router kind '{r.kind}'", name_span(r), cx.did_you_mean(r.kind, ROUTER_KINDS, known="kinds")
            )
            continue
        kind = ROUTER_KINDS[r.kind]
        _check_options(cx, r)
        if kind.needs_using:
            if r.using is None:
                cx.error(
                    f"route {r.kind} needs `using MODEL` to classify with",
                    name_span(r),
                    f"for example: route {r.kind} using base {{ ... }}",
                )
            else:
                check_model_expr(cx, r.using, allow_router=False)
        elif r.using is not None:
            cx.error(f"route {r.kind} takes no `using`", r.using)
        _check_experts(cx, r)


def _check_options(cx: Context, r: A.RouterDecl) -> None:
    kind = ROUTER_KINDS[r.kind]
    for kw in r.options:
        option = kind.option(kw.name)
        if option is None:
            cx.error(f"unknown option '{kw.name}' for route {r.kind}", kw, kind.options_text())
            continue
        name, allowed, meaning = option
        v = kw.value.name if isinstance(kw.value, A.ModelRef) else plain_value(kw.value)
        if v not in allowed:
            cx.error(f"unknown {name} {v!r}", kw.value, f"{name}s: {meaning}")


def _check_experts(cx: Context, r: A.RouterDecl) -> None:
    kind = ROUTER_KINDS[r.kind]
    if len(r.experts.entries) < kind.min_experts:
        cx.error("a router needs at least two experts", r.experts)
    defaults = 0
    seen: dict = {}
    for e in r.experts.entries:
        if e.key in seen:  # AST equality ignores spans: same expression
            cx.error("this expert is listed twice", e.key, f"first at line {seen[e.key].span.line}")
            continue
        seen[e.key] = e.key
        if kind.has_default and key_name(e.key) == "default":
            defaults += 1
            check_model_expr(cx, e.value, allow_router=False)
            continue
        check_model_expr(cx, e.key, allow_router=False)
        _check_how(cx, kind.payloads, e.value)
    if kind.has_default and defaults != 1:
        cx.error(
            f"route {r.kind} needs exactly one `default: MODEL`",
            r.experts,
            "the default catches inputs no rule matches",
        )


def _check_how(cx: Context, payloads: tuple, v) -> None:
    """What picks one expert: example texts, a description or a rule."""
    if EXAMPLES in payloads:
        pv = plain_value(v)
        if not (isinstance(pv, str) or (isinstance(pv, list) and pv and all(isinstance(x, str) for x in pv))):
            cx.error("an embedding expert takes example texts [\"...\", ...] or a description \"...\"", v)
    elif DESCRIPTION in payloads:
        if not isinstance(plain_value(v), str):
            cx.error("a classify expert takes a description string", v)
    elif RULE not in payloads:
        cx.error("this router kind takes no rules", v)
    elif isinstance(v, A.MatchesValue):
        try:
            re.compile(v.pattern)
        except re.error as e:
            cx.error(f"invalid regex: {e}", v)
            return
        from ..constraints.linear_regex import unsupported

        why = unsupported(v.pattern)
        if why:  # rules run on a linear-time engine, so a row can never take minutes
            cx.error(
                f"rules match with a linear-time regex engine, which cannot run this pattern: {why}",
                v,
                "rewrite it without look-around, backreferences or \\b; `contains [\"...\"]` matches words",
            )
    elif isinstance(v, A.ContainsValue):
        words = plain_value(v.words)
        if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
            cx.error("contains [...] takes a list of strings", v)
    else:
        cx.error("a rule is `matches r\"...\"` or `contains [\"...\"]`", v)
