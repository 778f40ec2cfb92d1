"""Engines: one interface (base.Engine) between the executor and whatever
computes a model's tokens, chosen per model node.

    ENGINES         engine name -> (module, class); the name comes from the
                    source kind of the node's model (lmlang.models.sources)
    engine_for_node(executor, nid) -> Engine
    source_kind_of(compiled, nid) -> str    "default" | "folder" | ... | "server" | "vllm"

The local engine (local.py) runs the decoding loop over LM/Batch in this
process; the served engine (served.py) sends requests to an OpenAI-compatible
server (deploy.py: which server, which model name, which tokenizer). Adding
an engine (SGLang's native API, TGI) is one module with one Engine subclass,
one entry here, and the source kind that names it. Modules are imported only
when a program runs a query on such a node; nothing registers on import.
"""

from __future__ import annotations

import importlib

from .base import Engine, RowsJob

ENGINES: dict[str, tuple[str, str]] = {
    "local": ("lmlang.runtime.engines.local", "LocalEngine"),
    "served": ("lmlang.runtime.engines.served", "ServedEngine"),
}


def source_kind_of(compiled, nid: str) -> str:
    """The source kind a model node runs on: adapters applied keep their base's;
    merges and fusions run in this process."""
    spec = compiled.spec(nid)
    for _ in range(256):
        if spec.kind != "apply":
            break
        spec = compiled.spec(spec.base)
    if spec.kind in ("server", "vllm"):
        return spec.kind
    if spec.kind == "model":
        from ...models import sources

        return sources.classify(spec.source) or "folder"
    return "folder"


def engine_for_node(executor, nid: str) -> Engine:
    from ...models.sources import SOURCE_KINDS

    name = SOURCE_KINDS[source_kind_of(executor.c, nid)].engine
    module, cls = ENGINES[name]
    return getattr(importlib.import_module(module), cls)(executor, nid)


__all__ = ["ENGINES", "Engine", "RowsJob", "engine_for_node", "source_kind_of"]
