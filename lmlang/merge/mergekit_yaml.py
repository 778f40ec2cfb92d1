"""mergekit YAML recipes, run by lmlang's streaming merge.

Accepted: `merge_method`, `base_model`, `models: [{model, parameters}]`,
`parameters` (scalars, gradient lists, `{filter, value}` conditions),
`dtype`, `out_dtype`, `tokenizer_source` (base / a folder). Not accepted (a
clear error, exit code 2): `slices`, `modules`, `tokenizer:`, `chat_template`,
`model+lora` references, `tokenizer_source: union`.

mergekit's `dtype` is both the compute and the output dtype; with
compat="mergekit" lmlang computes in it too (so results match), otherwise it
computes in fp32 and only writes that dtype.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from .stream import MergeConfigError, MergeResult, merge_models

_KNOWN = {
    "merge_method",
    "base_model",
    "models",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "name",
    "chat_template",
    "tokenizer",
    "slices",
    "modules",
}


def _model_path(ref: Any, root: Path) -> str:
    if isinstance(ref, Mapping):  # mergekit's long form {model: {path: ...}}
        ref = ref.get("path") or ref.get("model")
    if not isinstance(ref, str) or not ref:
        raise MergeConfigError(f"a model reference must be a path, got {ref!r}")
    if "+" in ref and not Path(ref).exists():
        raise MergeConfigError(
            f"model reference '{ref}': 'model+lora' references are not supported; "
            "merge the LoRA first (lmlang.merge.merge_loras)"
        )
    p = Path(ref).expanduser()
    if not p.is_absolute() and not p.exists() and (root / p).exists():
        p = root / p
    return str(p)


def parse_mergekit_yaml(text: str, root: str | os.PathLike = ".") -> dict:
    """YAML text -> keyword arguments of `merge_models` (without out_dir/compat)."""
    import yaml

    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise MergeConfigError(f"invalid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(cfg, Mapping):
        raise MergeConfigError("a mergekit config must be a YAML mapping")
    root = Path(root)
    unknown = set(cfg) - _KNOWN
    if unknown:
        raise MergeConfigError(f"unknown mergekit config key(s): {', '.join(sorted(unknown))}")
    for key in ("slices", "modules", "tokenizer", "chat_template"):
        if cfg.get(key) is not None:
            raise MergeConfigError(f"mergekit '{key}:' is not supported by lmlang's merge (use models: ...)")
    method = cfg.get("merge_method")
    if not isinstance(method, str):
        raise MergeConfigError("missing 'merge_method'")
    models_cfg = cfg.get("models")
    if not isinstance(models_cfg, list) or not models_cfg:
        raise MergeConfigError("'models' must be a non-empty list of {model: PATH, parameters: {...}}")
    models = []
    for i, entry in enumerate(models_cfg):
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, Mapping) or "model" not in entry:
            raise MergeConfigError(f"models[{i}] must be a mapping with 'model'")
        extra = set(entry) - {"model", "parameters"}
        if extra:
            raise MergeConfigError(f"models[{i}]: unknown key(s) {', '.join(sorted(extra))}")
        params = entry.get("parameters") or {}
        if not isinstance(params, Mapping):
            raise MergeConfigError(f"models[{i}].parameters must be a mapping")
        models.append((_model_path(entry["model"], root), dict(params)))
    params = cfg.get("parameters") or {}
    if not isinstance(params, Mapping):
        raise MergeConfigError("'parameters' must be a mapping")
    base = cfg.get("base_model")
    tok = cfg.get("tokenizer_source")
    if tok is not None and tok not in ("base", "union"):
        tok = _model_path(tok, root)
    return {
        "method": method,
        "models": models,
        "base": _model_path(base, root) if base is not None else None,
        "params": dict(params),
        "yaml_dtype": cfg.get("dtype"),
        "out_dtype": cfg.get("out_dtype"),
        "tokenizer_source": tok,
    }


def run_mergekit_yaml(
    config: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    compat: str = "lmlang",
    dtype: str | None = None,
    **kwargs: Any,
) -> MergeResult:
    """Run a mergekit YAML file (a path) with lmlang's merge; `dtype` overrides
    the output dtype the YAML asks for."""
    path = Path(config)
    try:
        text = path.read_text()
    except OSError as e:
        raise MergeConfigError(f"cannot read {path}: {e.strerror}") from None
    spec = parse_mergekit_yaml(text, path.parent)
    yaml_dtype = spec.pop("yaml_dtype")
    out_dtype = dtype or spec.pop("out_dtype") or yaml_dtype
    if compat == "mergekit":
        compute = yaml_dtype  # None: the inputs' own dtype, as mergekit does
    else:
        compute = "float32"
    return merge_models(
        spec["method"],
        spec["models"],
        base=spec["base"],
        params=spec["params"],
        out_dir=out_dir,
        compat=compat,
        dtype=out_dtype,
        compute_dtype=compute,
        tokenizer_source=spec["tokenizer_source"],
        **kwargs,
    )
