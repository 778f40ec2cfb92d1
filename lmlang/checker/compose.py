"""The composition forms of issue #17, judged before anything is built:

    adapter small = compress senti { density: 0.1, quantize: ternary }
    model twin = merge twin { base: base, models: [base + a, base + b], router: by_example }
    model fit = merge atlas { base: base, models: [base + a, base + b], fit_on: "dev.jsonl" }

Plain options are judged by merge/compose_options.py (the table the runtime
reads its defaults from); this module reads the keys that name things: the
compressed adapter, `base`, `models` (each the base plus one LoRA adapter:
the library functions take LoRA folders on one base), `router` (the default
`by_example` or a declared embedding router over the same models) and
`fit_on` (a file or data set whose rows are training rows, read like
`train ... on`'s data).
"""

from __future__ import annotations

from .. import ast as A
from ..merge import compose_options as C
from ..values import NOT_PLAIN, key_name, key_text, merge_members, plain_value
from .compat import check_compatible, model_source
from .context import Context


def check_compress(cx: Context, src: A.AdapterCompress) -> None:
    """The compressed adapter is a declared LoRA adapter; options by the table."""
    from .models import adapter_method

    at = src.adapter_span or src
    if src.adapter not in cx.out.adapters:
        kind = cx.out.kind_of(src.adapter)
        cx.error(
            f"'{src.adapter}' is {kind}, not an adapter" if kind else f"undefined adapter '{src.adapter}'",
            at,
            "" if kind else cx.did_you_mean(src.adapter, cx.out.adapters),
        )
    else:
        method = adapter_method(cx, src.adapter)
        if method != "lora":
            cx.error(
                f"adapter '{src.adapter}' is a {method} adapter; compress takes LoRA adapters",
                at,
                "ComPEFT sparsifies LoRA factors; train it with `train lora`",
                code="compress-method",
            )
    _plain_options(cx, "compress", src.options.entries)


def check_compose_merge(cx: Context, e: A.MergeExpr) -> None:
    """`merge twin { ... }` / `merge atlas { ... }` of a model expression."""
    form = e.method
    seen: dict[str, A.Entry] = {}
    plain = []
    for entry in e.options.entries:
        text = key_text(entry.key)
        if text in seen:
            cx.error(f"merge option '{text}' given twice", entry.key)
            continue
        seen[text] = entry
        if key_name(entry.key) not in C.MODEL_KEYS[form]:
            plain.append(entry)
    for key in C.REQUIRED[form]:
        if key not in seen:
            cx.error(f"merge {form} needs {key}: ...", e, _REQUIRED_HINT[key])
    _plain_options(cx, form, plain)
    base = seen.get("base")
    if base is not None:
        from .models import _refuse, check_model_expr

        check_model_expr(cx, base.value, allow_router=False)
        _refuse(cx, base.value, "merge", "be merged")
    members = _check_members(cx, form, seen["models"], base) if "models" in seen else []
    if form == "twin" and "router" in seen:
        _check_router(cx, seen["router"], members)
    if form == "atlas" and "fit_on" in seen:
        _check_fit_on(cx, seen["fit_on"])
    if base is not None and members:
        check_compatible(cx, [base.value, *members], "merge")


_REQUIRED_HINT = {
    "base": "name the model the adapters were trained on: base: base",
    "models": "list the base with each adapter: models: [base + a, base + b]",
    "fit_on": 'give the labelled rows the coefficients are fitted on: fit_on: "dev.jsonl"',
}


def _plain_options(cx: Context, form: str, entries) -> None:
    """Each plain option judged by the table, then the rules across them."""
    given: dict[str, tuple] = {}
    for entry in entries:
        text = key_text(entry.key)
        value = plain_value(entry.value)
        if value is NOT_PLAIN and isinstance(entry.value, A.ModelRef):
            value = entry.value.name  # bare words: `quantize: ternary`, `granularity: block`
        if value is NOT_PLAIN and text in C.FORMS[form]:
            cx.error(f"option '{text}' must be a number or a word", entry.value)
            continue
        problem = C.check_option(form, text, None if value is NOT_PLAIN else value)
        if problem is not None:
            at = entry.key if problem.code == "unknown-option" else entry.value
            cx.error(problem.message, at, problem.hint, code=problem.code)
        else:
            given[text] = (value, entry)
    problem = C.check_combination(form, {k: v for k, (v, _) in given.items()})
    if problem is not None:
        cx.error(problem.message, given[problem.option][1].value, problem.hint, code=problem.code)


def _same_base(cx: Context, a, b) -> bool:
    """Whether two model expressions are the same base: the same name (or
    both `default`), or the same source (a folder, the bundled model)."""
    names = [
        x.name if isinstance(x, A.ModelRef) else "default" if isinstance(x, A.DefaultModel) else None for x in (a, b)
    ]
    if names[0] is not None and names[0] == names[1]:
        return True
    keys = [model_source(cx, x) for x in (a, b)]
    return keys[0] is not None and keys[0] == keys[1]


def _check_members(cx: Context, form: str, entry: A.Entry, base: A.Entry | None) -> list:
    """`models: [base + a, base + b]`: each the merge's base plus one LoRA
    adapter at scale 1, no adapter twice. Returns the members that read."""
    from .models import _refuse_unmergeable, check_model_expr

    if not isinstance(entry.value, A.ListValue):
        cx.error(f"merge {form} takes a list of models: [base + a, base + b]", entry.value)
        return []
    members, adapters = [], set()
    for member, _ in merge_members(entry.value):
        check_model_expr(cx, member, allow_router=False)
        if not (isinstance(member, A.Adapted) and len(member.adapters) == 1 and member.adapters[0].scale == 1.0):
            cx.error(
                f"merge {form}: each model is the base plus one LoRA adapter",
                member,
                f"write it as {_base_text(base)} + ADAPTER",
            )
            continue
        adapter = member.adapters[0].adapter
        if adapter in adapters:
            cx.error(f"merge {form}: adapter '{adapter}' is listed twice", member)
            continue
        adapters.add(adapter)
        _refuse_unmergeable(cx, member)
        if base is not None and not _same_base(cx, member.base, base.value):
            cx.error(
                f"merge {form}: '{adapter}' is applied to another model than the base",
                member.base,
                f"the adapters compose on one base: write {_base_text(base)} + {adapter}",
            )
            continue
        members.append(member)
    if len(merge_members(entry.value)) < C.MIN_MODELS[form]:
        cx.error(f"merge {form} needs at least {C.MIN_MODELS[form]} models", entry.value)
    return members


def _base_text(base: A.Entry | None) -> str:
    if base is not None and isinstance(base.value, A.ModelRef):
        return base.value.name
    return "default" if base is not None and isinstance(base.value, A.DefaultModel) else "BASE"


def _check_router(cx: Context, entry: A.Entry, members: list) -> None:
    """`router: by_example` (each expert's training prompts) or a declared
    embedding router whose experts are exactly the twin's models."""
    v = entry.value
    name = v.name if isinstance(v, A.ModelRef) else None
    choices = [C.DEFAULT_ROUTER, *cx.out.routers]
    if name is None:
        cx.error("router: names a router", v, f"routers: {', '.join(choices)}")
        return
    r = cx.out.routers.get(name)  # a declared router of that name wins over the default
    if r is None and name == C.DEFAULT_ROUTER:
        return
    if r is None:
        kind = cx.out.kind_of(name)
        hint = cx.did_you_mean(name, choices) or f"routers: {', '.join(choices)}"
        cx.error(f"'{name}' is {kind}, not a router" if kind else f"undefined router '{name}'", v, hint)
        return
    if r.kind != "embedding":
        cx.error(
            f"merge twin weighs experts by embedding scores; router '{name}' is a {r.kind} router",
            v,
            f"declare `route embedding` over the same models, or use router: {C.DEFAULT_ROUTER}",
        )
        return
    wanted = sorted(_member_key(m) for m in members)
    have = sorted(_member_key(x.key) for x in r.experts.entries)
    if members and wanted != have:
        cx.error(
            f"router '{name}' routes among other models than the twin's",
            v,
            "its experts must be the twin's models: " + ", ".join(w for w in wanted),
        )


def _member_key(e) -> str:
    """A `base + adapter` expression as text, to match a router's experts."""
    if isinstance(e, A.Adapted):
        return " + ".join([_member_key(e.base), *(a.adapter for a in e.adapters)])
    if isinstance(e, A.ModelRef):
        return e.name
    return "default" if isinstance(e, A.DefaultModel) else repr(e)


def _check_fit_on(cx: Context, entry: A.Entry) -> None:
    """fit_on: a file or a data set whose rows are training rows (read as
    `train ... on` reads its data: the atlas loss is the completion loss)."""
    from .models import _check_train_source_data

    v = entry.value
    if isinstance(v, A.Literal) and isinstance(v.value, str):
        ref = A.DataRef(path=v.value, span=v.span)
    elif isinstance(v, A.ModelRef):
        ref = A.DataRef(name=v.name, span=v.span)
    else:
        cx.error('fit_on: takes a data file or a data set', v, 'write fit_on: "dev.jsonl" or fit_on: NAME')
        return
    _check_train_source_data(cx, A.TrainSource(ref, A.Block((), span=v.span), span=v.span))
