"""Model merging: methods, torch-free option schemas, streaming execution, LoRA algebra.

Importing this package (or `lmlang.merge.options`) does not import torch;
the heavy parts load on first use of the names below.
"""

from __future__ import annotations

from .options import OptionSpec, method_names, method_options, option_problems, validate_options

__all__ = [
    "OptionSpec",
    "method_names",
    "method_options",
    "option_problems",
    "validate_options",
    "merge_models",
    "MergeResult",
    "get_method",
    "merge_loras",
    "LoraMergeResult",
    "run_mergekit_yaml",
]

_LAZY = {
    "merge_models": ".stream",
    "MergeResult": ".stream",
    "get_method": ".methods",
    "merge_loras": ".lora",
    "LoraMergeResult": ".lora",
    "run_mergekit_yaml": ".mergekit_yaml",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
