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

MAX_REF_HOPS = 32  # model NAME = other = ... chains followed to a source


def model_source(cx: Context, e, hops: int = 0):
    """Where a model expression's weights come from, as a key: ("default",),
    ("folder", path) or ("gguf", path); None when unknown. Fine-tunes and
    adapters of one base share its key, so they are never compared."""
    from ..models.facts import hub_snapshot

    if hops > MAX_REF_HOPS:
        return None
    if isinstance(e, A.ModelRef):
        decl = cx.out.models.get(e.name)
        expr = getattr(decl, "expr", None) if decl is not None else None
        return model_source(cx, expr, hops + 1) if expr is not None else None
    if isinstance(e, A.Adapted):
        return model_source(cx, e.base, hops + 1)
    if isinstance(e, A.DefaultModel) or (isinstance(e, A.PathModel) and e.path == "default"):
        return ("default",)
    if not isinstance(e, A.PathModel):
        return None
    kind = sources.classify(e.path)
    try:
        local = cx.out.confined_path(e.path, e)
    except Exception:  # noqa: BLE001 - refused or unreadable paths are reported by the source check
        local = None
    if kind == "gguf":
        return ("gguf", local) if local is not None else None
    if local is not None and local.is_dir():
        return ("folder", local.resolve())
    if kind == "hub":
        folder = hub_snapshot(e.path)[0]
        return ("folder", folder.resolve()) if folder is not None else None
    return None


def _facts(key):
    from ..models.facts import folder_facts

    if key[0] == "default":
        return _converted_facts(None)
    if key[0] == "gguf":
        return _converted_facts(key[1])
    return folder_facts(key[1])


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
    member's (`what`: "merge" or "fuse"). Facts are read only when members
    come from different sources, once per source."""
    keyed = [(m, k) for m in members if (k := model_source(cx, m)) is not None]
    if len({k for _, k in keyed}) < 2:
        return
    facts: dict = {}
    known = []
    for node, key in keyed:
        if key not in facts:
            facts[key] = _facts(key)
        if facts[key] is not None:
            known.append((node, facts[key]))
    if len(known) < 2:
        return
    first_node, first = known[0]
    for node, f in known[1:]:
        diff = first.mismatch(f)
        if diff:
            cx.error(
                f"cannot {what} models that differ: {_label(node)} has {diff} of {_label(first_node)}",
                node,
                f"{what} only fine-tunes of one base model (same architecture, vocabulary and tokenizer)",
            )
            return


def _label(node) -> str:
    if isinstance(node, A.ModelRef):
        return f"'{node.name}'"
    if isinstance(node, A.Adapted) and isinstance(node.base, A.ModelRef):
        return f"'{node.base.name} + ...'"
    return "this model"
