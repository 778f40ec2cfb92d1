"""Model sources: where a model comes from, and what the runtime can do with it.

One registry for every layer: the checker validates a `model NAME = ...`
declaration against it (which strings are hub ids, which are paths, which
options a kind takes, which features a kind supports), the compiler records
the kind in the graph, `lmlang models` and the graph export describe it, and
the runtime picks the engine module a kind names. Torch-free and cheap to
import: the checker reads it on every `lmlang check`.

Adding a source kind: one module that implements it (see `engine`), one entry
in `SOURCE_KINDS`, and the grammar rule that writes it.
"""
from __future__ import annotations

import re

from ..frozen import frozen

# A hub id: `name` or `org/name`, optionally `@revision`. The loader and the
# checker read the same pattern (they used to disagree on `gpt2` and `@rev`).
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?(@[\w./-]+)?")
PATH_PREFIXES = (".", "/", "~")


@frozen
class SourceKind:
    """A kind of model source and the features its models offer.

    `logits`: next-token logits in this process, token by token (logit
    fusion, exact token masks, beam search, routing by scores need them).
    `raw_prompt`: the engine continues an arbitrary token prefix (token
    healing of a seam space needs it). `adapters`: how `model + adapter`
    is applied ("hooks": LoRA deltas in process; "modules": LoRA modules the
    engine serves; "": none). `engine`: the runtime module that runs queries
    on models of this kind (imported only when a program runs)."""
    name: str
    summary: str
    logits: bool = True
    raw_prompt: bool = True
    adapters: str = "hooks"
    engine: str = "lmlang.runtime.decode"


SOURCE_KINDS: dict[str, SourceKind] = {k.name: k for k in (
    SourceKind("default", "the bundled SmolLM2-135M-Instruct (offline)"),
    SourceKind("folder", "a local folder of safetensors weights with its tokenizer"),
    SourceKind("gguf", "a local .gguf file, dequantized once into the lmlang home"),
    SourceKind("hub", "a hub id, resolved from the local Hugging Face cache only"),
)}


def classify(text: str) -> str | None:
    """The kind of a model source string as written in a script: "gguf" or
    "folder" for what can only be a path, "hub" for a hub id, None for
    neither. (A string that reads as a hub id may still name a folder next
    to the script: the compiler and the loader prefer an existing path.)"""
    if text == "default":
        return "default"
    if not text.strip():
        return None
    if text.lower().endswith(".gguf"):
        return "gguf"
    if text.startswith(PATH_PREFIXES):
        return "folder"
    if HUB_ID.fullmatch(text):
        return "hub"
    return None


def is_hub_id(text: str) -> bool:
    return classify(text) == "hub"
