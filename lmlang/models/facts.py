"""What the checker can know about a model without loading it: where a hub
id's snapshot is in the local cache, and the small facts (architecture,
vocabulary size, tokenizer) that decide whether models can be merged or
fused. config.json and tokenizer.json are small and read in milliseconds,
so `lmlang check` can refuse what the run would refuse after minutes.

Torch-free: the loader's cache lookup imports torch only inside functions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..frozen import frozen


@frozen
class ModelFacts:
    """Facts that must agree between merged or fused models (None: unknown)."""

    architecture: str | None
    vocab_size: int | None
    tokenizer: str | None  # digest of the tokenizer's vocabulary and merges
    shape: str | None = None  # "hidden H, L layers": merges need equal tensor shapes

    def mismatch(self, other: "ModelFacts") -> str:
        """What differs, as a phrase ("" when nothing known differs)."""
        for label, a, b in (
            ("architecture", self.architecture, other.architecture),
            ("vocabulary size", self.vocab_size, other.vocab_size),
            ("tokenizer", self.tokenizer, other.tokenizer),
            ("shape", self.shape, other.shape),
        ):
            if a is not None and b is not None and a != b:
                if label == "tokenizer":
                    return "a different tokenizer (vocabulary or merges differ)"
                return f"{label} {b} against {a}"
        return ""


def hub_snapshot(repo_id: str) -> tuple[Path | None, str, str]:
    """(snapshot folder, "", "") when the hub id is in the local cache, else
    (None, message, hint) as the loader would raise them at run time."""
    from ..errors import LmlangError
    from .loader import find_in_hub_cache

    try:
        return find_in_hub_cache(repo_id), "", ""
    except LmlangError as e:
        return None, e.message, e.hint


def folder_facts(folder: Path) -> ModelFacts | None:
    """Facts from a model folder's config.json and tokenizer.json (None when
    it has no readable config)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    text_config = config.get("text_config")
    text = text_config if isinstance(text_config, dict) else config
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else config.get("model_type")
    vocab = text.get("vocab_size")
    hidden, layers = text.get("hidden_size"), text.get("num_hidden_layers")
    shape = f"hidden size {hidden}, {layers} layers" if isinstance(hidden, int) and isinstance(layers, int) else None
    return ModelFacts(
        arch if isinstance(arch, str) else None,
        vocab if isinstance(vocab, int) else None,
        _tokenizer_digest(folder / "tokenizer.json"),
        shape,
    )


def _tokenizer_digest(path: Path) -> str | None:
    """A digest of the vocabulary and merges (not of the file: added-token
    flags and padding settings may differ between fine-tunes of one model)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict):
        return None
    core = {"type": model.get("type"), "vocab": model.get("vocab"), "merges": model.get("merges")}
    return hashlib.sha256(json.dumps(core, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
