"""Queries on served models: what a server cannot do is a check error.

A query whose model (or one of whose routed experts) is served (`server`,
`vllm`) runs through the served engine, which sends requests instead of
masking logits. What that engine cannot do with the same meaning as the local
one is refused here, naming the model and the feature, never run differently:

* `decode beam`: lmlang's beam search masks every step and normalises by
  length; no server offers that (vLLM's beam search ignores constraints);
* a constraint the server cannot enforce (lmlang.serving.structured.to_request
  says which, for the features the declaration promises);
* `distribution` on an endpoint without prompt log-probabilities (api: chat);
* a hole that continues text (a plain prompt, text before it in its message,
  token healing of a seam space) on an endpoint without raw prompts;
* routers: `route classify using` a served model, and `encoder: base` over
  served experts (both need this process's logits or hidden states).

Runs after the query pass, on queries that checked clean.
"""

from __future__ import annotations

from .. import ast as A
from ..models import sources
from ..values import key_name, plain_value
from .context import Context
from .holes import _span_over
from .models import model_source, source_options
from .prompt_flow import is_grown


def check_served(cx: Context) -> None:
    for info in cx.out.queries.values():
        for expr, label in _targets(cx, info.using):
            kind = model_source(cx, expr)
            if kind is not None and kind.engine == "served":
                _check_query_on(cx, info, expr, label, kind)
    for r in cx.out.routers.values():
        _check_router(cx, r)


def _targets(cx: Context, using) -> list:
    """(model expression, name for messages) a query may run on: its model,
    or every expert (and the default) of the router it routes with."""
    if isinstance(using, A.RouterCall):
        r = cx.out.routers.get(using.router)
        if r is None:
            return []
        out = []
        for e in r.experts.entries:
            if r.source is not None:  # a pool's block holds options: it runs on its base
                if key_name(e.key) == "base":
                    out.append((e.value, _name(e.value)))
                continue
            if r.kind == "rules" and key_name(e.key) == "default":
                out.append((e.value, _name(e.value)))
            else:
                out.append((e.key, _name(e.key)))
        return out
    return [(using, _name(using))]


def _name(e) -> str:
    return e.name if isinstance(e, A.ModelRef) else "default" if isinstance(e, A.DefaultModel) else "this model"


def _declared_options(cx: Context, expr) -> dict:
    """The options of the `server` declaration under a model expression."""
    seen = 0
    while seen < 64:
        seen += 1
        if isinstance(expr, A.ModelRef) and expr.name in cx.out.models:
            expr = cx.out.models[expr.name].expr
        elif isinstance(expr, A.Adapted):
            expr = expr.base
        else:
            break
    if isinstance(expr, (A.ServerModel, A.VllmModel)):
        return source_options(expr.options)
    return {}


def _check_query_on(cx: Context, info, expr, model: str, kind: sources.SourceKind) -> None:
    from ..serving.structured import ServerFeatures, Unsupported, to_request

    q = info.decl
    where = f"served model '{model}' ({kind.name})"
    if is_grown(q):  # issue 15: the prompt grows between holes in this process's KV cache
        cx.error(
            f"{where} cannot run a prompt with control flow or tool calls: it grows one KV cache between holes",
            q,
            "run this query on a local model",
            code="served-unsupported",
        )
        return
    if info.decoder[0] == "beam":
        cx.error(
            f"{where} cannot run `decode beam`: lmlang's beam search masks and scores every step in this "
            "process, which a server does not offer",
            q.decoder or q,
            "use best_of(n: ...) or vote, or run this query on a local model",
            code="served-unsupported",
        )
    if info.distribution is not None and not kind.prompt_logprobs:
        cx.error(
            f"{where} cannot score a distribution: its endpoint (api: chat) returns no prompt log-probabilities",
            q.distribution,
            'use api: "completions"',
            code="served-unsupported",
        )
    if info.guard is not None:  # second wave: the leak guard masks logits in this process
        cx.error(
            f"{where} cannot run `guard {info.guard[0]}`: the guard masks tokens while decoding, "
            "which needs this process's logits",
            q.guard or q,
            "run this query on a local model",
            code="served-unsupported",
        )
    if not kind.raw_prompt:
        _check_chat_only(cx, info, where)
    options = _declared_options(cx, expr)
    features = ServerFeatures(*sources.served_features(kind.name, options))
    for hole in info.holes:
        if info.distribution is not None and hole == info.distribution[0]:
            continue
        served = to_request(info.constraints.get(hole), features, payload=False)
        if isinstance(served, Unsupported):
            p = served.problem(model)
            cx.error(
                p.message.replace("(x)", f"({hole})"),
                _hole_span(q, hole),
                p.hint.replace("(x)", f"({hole})"),
                code=p.code,
            )


def _hole_span(q: A.QueryDecl, hole: str):
    conds = [c for w in q.wheres for c in w.conds if c.hole == hole]
    if conds:
        return _span_over(conds)
    for s in q.segments:
        for part in s.parts:
            if isinstance(part, A.Hole) and part.name == hole:
                return part.span
    return q.span


def _check_chat_only(cx: Context, info, where: str) -> None:
    """On a chat-only endpoint the server writes one whole assistant message:
    the query's one hole must be all of the last (assistant) message."""
    q = info.decl
    hint = 'make the hole the whole last assistant message (assistant "[x]"), or use api: "completions"'
    if not info.chat:
        cx.error(
            f"{where} has no raw-prompt endpoint (api: chat), so it cannot continue a plain prompt",
            q,
            hint,
            code="served-unsupported",
        )
        return
    last = q.segments[-1]
    parts = [p for p in last.parts if not (isinstance(p, A.Text) and not p.text.strip())]
    whole = last.role == "assistant" and len(parts) == 1 and isinstance(parts[0], A.Hole)
    if len(info.holes) != 1 or not whole:
        at = next((p for s in q.segments for p in s.parts if isinstance(p, A.Hole)), q)
        cx.error(
            f"{where} has no raw-prompt endpoint (api: chat): a hole that follows text in its message "
            "(or several holes) needs one, and so does token healing",
            at,
            hint,
            code="served-unsupported",
        )


def _check_router(cx: Context, r: A.RouterDecl) -> None:
    if r.kind == "classify" and r.using is not None:
        kind = model_source(cx, r.using)
        if kind is not None and kind.engine == "served":
            cx.error(
                f"route classify cannot ask served model '{_name(r.using)}': it scores the expert names with "
                "this process's model",
                r.using,
                "classify with a local model (e.g. using base = default), or route by embedding or rules",
                code="served-unsupported",
            )
    encoder = next(
        (
            plain_value(kw.value) if not isinstance(kw.value, A.ModelRef) else kw.value.name
            for kw in r.options
            if kw.name == "encoder"
        ),
        None,
    )
    if r.kind == "embedding" and encoder == "base":
        for e in r.experts.entries:
            kind = model_source(cx, e.key)
            if kind is not None and kind.engine == "served":
                cx.error(
                    f"encoder: base reads hidden states of expert '{_name(e.key)}', which is served",
                    e.key,
                    "use encoder: minilm (the default)",
                    code="served-unsupported",
                )
                return
