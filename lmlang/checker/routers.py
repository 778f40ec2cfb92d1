"""Routers: `route KIND [using MODEL] { expert: how to pick it, ... }`.

An embedding router picks by similarity to example texts or a description,
a classify router asks a model to pick by description, a rules router by
regexes and keywords (with one `default:` for inputs no rule matches).
A pool router (`route pool "adapters/*" { base: MODEL, top_k: 2 }`) takes
a glob of LoRA folders instead of experts, and its block holds options:
the glob is resolved here, so a pattern that matches nothing, a folder
outside the script's reach or a non-LoRA member is an error before the run.
"""

from __future__ import annotations

import re

import glob as globlib
import json
from pathlib import Path

from .. import ast as A
from ..router_kinds import DESCRIPTION, EXAMPLES, ROUTER_KINDS, RULE, BlockOption, RouterKind
from ..values import key_name, key_text, plain_value
from .context import Context, name_span
from .models import check_model_expr, model_source
from .program import PathRefused


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
        if kind.takes_source:
            _check_pool(cx, r, kind)
            continue
        if r.source is not None:
            cx.error(
                f"route {r.kind} takes no folder pattern", r.source, "only `route pool \"GLOB\" { ... }` takes one"
            )
        _check_experts(cx, r)


# ---------------------------------------------------------------- pools


def _check_pool(cx: Context, r: A.RouterDecl, kind: RouterKind) -> None:
    if r.source is None or not isinstance(r.source.value, str):
        cx.error(
            f"route {r.kind} needs a glob of adapter folders",
            name_span(r),
            f'for example: route {r.kind} "adapters/*" {{ base: base, top_k: 2 }}',
        )
        return
    given: dict = {}
    for e in r.experts.entries:
        name = key_name(e.key)
        option = kind.block_option(name) if name else None
        if option is None:
            cx.error(
                f"unknown option '{key_text(e.key)}' for route {r.kind}",
                e.key,
                cx.did_you_mean(name or "", [o.name for o in kind.block_options], known="options")
                or "options: " + ", ".join(o.name for o in kind.block_options),
            )
            continue
        if name in given:
            cx.error(f"option '{name}' is given twice", e.key, f"first at line {given[name].span.line}")
            continue
        given[name] = e
        _check_block_option(cx, r, option, e.value)
    for option in kind.block_options:
        if option.required and option.name not in given:
            cx.error(
                f"route {r.kind} needs `{option.name}:` ({option.doc})",
                r.experts,
                f"for example: {option.name}: base",
            )
    names = _pool_members(cx, r)
    examples = given.get("examples")
    if names and examples is not None and isinstance(examples.value, A.Block):
        for e in examples.value.entries:
            member = e.key.value if isinstance(e.key, A.Literal) else key_name(e.key)
            if member not in names:
                cx.error(
                    f"route {r.kind} holds no adapter folder named {member!r}",
                    e.key,
                    cx.did_you_mean(str(member), names, known="members") or "members: " + ", ".join(names),
                )


def _check_block_option(cx: Context, r: A.RouterDecl, option: BlockOption, v) -> None:
    """One option's value, by the type the router kind's table gives it."""
    if option.type == "model":
        check_model_expr(cx, v, allow_router=False)
        source = model_source(cx, v)
        if source is not None and source.engine == "served":
            cx.error(
                f"route {r.kind}: {option.name} must run in this process (its adapters are loaded into it)",
                v,
                "use a local model: default, a folder, a hub id",
                code="served-unsupported",
            )
        return
    if option.type == "word":
        word = v.name if isinstance(v, A.ModelRef) else plain_value(v)
        if word not in option.words:
            cx.error(f"{option.name} must be one of {', '.join(option.words)}", v, f"{option.name}: {option.doc}")
        return
    pv = plain_value(v)
    if option.type == "int":
        if isinstance(pv, bool) or not isinstance(pv, int) or pv < option.lo:
            cx.error(f"{option.name} must be a whole number of at least {option.lo:g}", v, option.doc)
    elif option.type == "number":
        if isinstance(pv, bool) or not isinstance(pv, (int, float)) or not pv > option.lo:
            cx.error(f"{option.name} must be a number above {option.lo:g}", v, option.doc)
    elif option.type == "examples":
        ok = isinstance(v, A.Block) and all(
            isinstance(e.key, (A.Literal, A.ModelRef))
            and isinstance(plain_value(e.value), list)
            and plain_value(e.value)
            and all(isinstance(x, str) for x in plain_value(e.value))
            for e in v.entries
        )
        if not ok:
            cx.error(f"{option.name} takes {{ \"folder name\": [\"text\", ...], ... }}", v, option.doc)


def _pool_members(cx: Context, r: A.RouterDecl) -> list[str]:
    """The folder names the glob matches (PEFT folders with an
    adapter_config.json), checked where their configs tell: LoRA adapters,
    one base model, distinct names. [] after an error."""
    assert r.source is not None  # _check_pool asked
    pattern = str(r.source.value)
    try:
        full = cx.out.path_for(pattern, r.source)
    except (OSError, ValueError, RuntimeError):
        cx.error(f"invalid folder pattern {pattern!r}", r.source)
        return []
    try:
        found = sorted(Path(p) for p in globlib.glob(str(full)) if (Path(p) / "adapter_config.json").is_file())
    except (OSError, ValueError):
        found = []
    if not found:
        cx.error(
            f"route {r.kind}: no adapter folder matches {pattern!r}",
            r.source,
            f"the pattern resolves relative to the script's folder (looked for {full}); "
            "each match must be a PEFT folder with adapter_config.json",
        )
        return []
    bases: dict = {}
    names: list[str] = []
    for folder in found:
        try:
            cx.out.confined_path(str(folder), r.source)
        except PathRefused as e:
            cx.refuse("adapter", str(folder), r.source, e)
            return []
        if folder.name in names:
            cx.error(f"route {r.kind}: two matched folders are both named {folder.name!r}", r.source)
            return []
        names.append(folder.name)
        try:
            config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cx.error(f"route {r.kind}: {folder.name}/adapter_config.json is not readable JSON", r.source)
            return []
        peft = str(config.get("peft_type", "LORA")).upper()
        if peft != "LORA":
            cx.error(
                f"route {r.kind}: adapter {folder.name!r} is a {peft} adapter; a pool mixes LoRA adapters",
                r.source,
                "narrow the pattern to LoRA folders",
            )
            return []
        base = config.get("base_model_name_or_path")
        if base:
            bases.setdefault(str(base), folder.name)
    if len(bases) > 1:
        (a, fa), (b, fb) = list(bases.items())[:2]
        cx.error(
            f"route {r.kind}: the adapters were trained on different bases ({fa}: {a}; {fb}: {b})",
            r.source,
            "a pool mixes adapters of one base model",
        )
        return []
    return names


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
