"""Merged and fused models must share architecture, vocabulary and
tokenizer (docs/language.md promises a check error). The facts come from
each model's config.json and tokenizer.json (lmlang/models/facts.py), read
at check time; a model whose facts cannot be read cheaply (the bundled
default before its first conversion, a .gguf file) is not compared, so this
check never refuses what it cannot prove.
"""
from __future__ import annotations

from .. import ast as A
from ..models import sources
from .context import Context

MAX_REF_HOPS = 32          # model NAME = other = ... chains followed to a source


def model_facts(cx: Context, e, hops: int = 0):
    """ModelFacts of a model expression, or None when unknown."""
    from ..models.facts import folder_facts, hub_snapshot

    if hops > MAX_REF_HOPS:
        return None
    if isinstance(e, A.ModelRef):
        decl = cx.out.models.get(e.name)
        expr = getattr(decl, "expr", None) if decl is not None else None
        return model_facts(cx, expr, hops + 1) if expr is not None else None
    if isinstance(e, A.Adapted):
        return model_facts(cx, e.base, hops + 1)
    if isinstance(e, A.DefaultModel) or (isinstance(e, A.PathModel) and e.path == "default"):
        return _converted_facts(None)
    if isinstance(e, A.PathModel):
        kind = sources.classify(e.path)
        folder = None
        if kind == "folder" or kind == "hub":
            try:
                local = cx.out.confined_path(e.path, e)
                folder = local if local is not None and local.is_dir() else None
            except Exception:  # noqa: BLE001 - refused or unreadable paths are reported by the source check
                folder = None
        if folder is None and kind == "hub":
            folder = hub_snapshot(e.path)[0]
        if kind == "gguf":
            try:
                return _converted_facts(cx.out.confined_path(e.path, e))
            except Exception:  # noqa: BLE001 - reported by the source check
                return None
        return folder_facts(folder) if folder is not None else None
    return None


def _converted_facts(gguf):
    """Facts of a GGUF model (the bundled default when gguf is None) from its
    converted folder, when a run has converted it already; else unknown."""
    from ..models import loader
    from ..models.facts import folder_facts

    try:
        gguf = gguf or loader.default_gguf_path()
        folder = loader.converted_path(gguf) if gguf.is_file() else None
    except Exception:  # noqa: BLE001 - a missing bundled model is reported when the model loads
        return None
    return folder_facts(folder) if folder is not None and loader.is_complete(folder) else None


def check_compatible(cx: Context, members: list, what: str) -> None:
    """One error on the first member whose known facts differ from the first
    member's (`what`: "merge" or "fuse")."""
    known = [(m, f) for m in members if (f := model_facts(cx, m)) is not None]
    if len(known) < 2:
        return
    first_node, first = known[0]
    for node, facts in known[1:]:
        diff = first.mismatch(facts)
        if diff:
            cx.error(f"cannot {what} models that differ: {_label(node)} has {diff} of {_label(first_node)}", node,
                     f"{what} only fine-tunes of one base model (same architecture, vocabulary and tokenizer)")
            return


def _label(node) -> str:
    if isinstance(node, A.ModelRef):
        return f"'{node.name}'"
    if isinstance(node, A.Adapted) and isinstance(node.base, A.ModelRef):
        return f"'{node.base.name} + ...'"
    return "this model"
