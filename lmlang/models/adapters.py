"""PEFT adapters (LoRA, DoRA, AdaLoRA, IA3) applied at query time, on top of an untouched base model.

`model tuned = base + polite * 0.8 + math` must not copy or merge weights, and
two queries in a row (or two rows of one batch) may use different adapters. So
an adapter here is never injected into the model the way PEFT does it: each
adapted module of the base gets one forward hook, installed once, that adds
``sum_i scale_i * (alpha_i / r_i) * B_i(A_i(x))`` for the adapters active at that
moment. Switching is O(1) (it swaps one reference), the base weights are never
written, and a stack of several adapters or a per-row choice of stacks costs one
small matmul pair per adapter and module.

The other PEFT kinds are computed the way PEFT's own layers compute them, as a
delta on the module's output: DoRA (LoRA with ``use_dora``) rescales each
output row to its learned magnitude, ``(m / ||W + s B A||_row - 1) * W x +
(m / ||W + s B A||_row) * s B A x`` (the norm is a constant of the frozen base,
computed once at load); AdaLoRA's SVD form ``B (A * E) x * alpha / init_r`` is a
LoRA; IA3 multiplies a module's output by a vector (``(v - 1) * out``), or,
for its feed-forward modules, the module's input (``W ((v - 1) * x)``). A
scale on any of them scales the delta (interpolates towards the base).

Every adapter is checked against its base before it is used: PEFT type and
features, the architecture it was trained on, that its target modules exist,
that the shapes of A and B fit the base layers and agree with the rank in the
config, and the vocabulary when it touches embeddings or carries replacement
modules (``modules_to_save``). Only safetensors are read; a pickle
``adapter_model.bin`` is refused.

Per-row stacks have two strategies, chosen by measurement (``bench/adapters.py``):
``"mixed"`` runs the whole batch once with row-indexed deltas, ``"grouped"``
runs one forward per distinct stack. ``DEFAULT_ROW_STRATEGY`` is the faster one
on the bundled model.
"""

from __future__ import annotations

import contextlib
import threading
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LmlangRuntimeError
from ..suggest import did_you_mean

Stack = tuple[tuple[str, float], ...]
"""An adapter stack: ((name, scale), ...); () is the plain base model."""

DEFAULT_ROW_STRATEGY = "mixed"
ROW_STRATEGIES = ("mixed", "grouped")

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
LMLANG_META = "lmlang_adapter.json"  # written by lmlang's trainer; optional

_PREFIX = "base_model.model."
# PEFT flags that change the forward in ways the hooks do not implement.
_UNSUPPORTED = {
    "lora_bias": "LoRA bias terms (lora_bias)",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
    "target_parameters": "parameter targeting (target_parameters)",
    "layer_replication": "layer replication (layer_replication)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "use_qalora": "QA-LoRA (use_qalora)",
}


def _fail(path: Path, message: str, hint: str = "") -> LmlangRuntimeError:
    return LmlangRuntimeError(f"adapter {path}: {message}", hint=hint)


# ---------------------------------------------------------------- operations


class _Op:
    """One adapter's contribution to one base module's output (unscaled)."""

    def to(self, device, dtype) -> "_Op":  # pragma: no cover - interface
        raise NotImplementedError

    def delta(self, module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


@dataclass
class _LinearLora(_Op):
    A: torch.Tensor  # (r, in)
    B: torch.Tensor  # (out, r), already multiplied by alpha / r

    def to(self, device, dtype):
        return _LinearLora(self.A.to(device, dtype), self.B.to(device, dtype))

    def delta(self, module, x, out):
        if x.dtype != self.A.dtype:
            x = x.to(self.A.dtype)
        return F.linear(F.linear(x, self.A), self.B).to(out.dtype)


@dataclass
class _DoraLinear(_Op):
    """DoRA on a linear layer: `norm_scale` is m / ||W + B A||_row (B scaled)."""

    A: torch.Tensor  # (r, in)
    B: torch.Tensor  # (out, r), already multiplied by alpha / r
    norm_scale: torch.Tensor  # (out,)
    bias: torch.Tensor | None  # the base layer's bias, taken out of W x

    def to(self, device, dtype):
        bias = None if self.bias is None else self.bias.to(device, dtype)
        return _DoraLinear(self.A.to(device, dtype), self.B.to(device, dtype), self.norm_scale.to(device, dtype), bias)

    def delta(self, module, x, out):
        if x.dtype != self.A.dtype:
            x = x.to(self.A.dtype)
        wx = out.to(self.A.dtype) if self.bias is None else out.to(self.A.dtype) - self.bias
        lora = F.linear(F.linear(x, self.A), self.B)
        return ((self.norm_scale - 1) * wx + self.norm_scale * lora).to(out.dtype)


@dataclass
class _IA3(_Op):
    """IA3: a learned vector scales the module's output, or its input
    (`on_input`, PEFT's feedforward_modules)."""

    v: torch.Tensor  # (out,) or (in,)
    on_input: bool

    def to(self, device, dtype):
        return _IA3(self.v.to(device, dtype), self.on_input)

    def delta(self, module, x, out):
        if not self.on_input:
            return (out.to(self.v.dtype) * (self.v - 1)).to(out.dtype)
        xs = x.to(self.v.dtype) * (self.v - 1)
        return F.linear(xs, module.weight.to(self.v.dtype)).to(out.dtype)


@dataclass
class _EmbeddingLora(_Op):
    A: torch.Tensor  # (r, num_embeddings)
    B: torch.Tensor  # (dim, r), already multiplied by alpha / r

    def to(self, device, dtype):
        return _EmbeddingLora(self.A.to(device, dtype), self.B.to(device, dtype))

    def delta(self, module, ids, out):
        return F.linear(F.embedding(ids, self.A.T), self.B).to(out.dtype)


@dataclass
class _Replace(_Op):
    """A full replacement module (PEFT modules_to_save): delta = new(x) - base(x),
    so a scale s interpolates the weights: base + s * (saved - base)."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None

    def to(self, device, dtype):
        bias = None if self.bias is None else self.bias.to(device, dtype)
        return _Replace(self.weight.to(device, dtype), bias)

    def delta(self, module, x, out):
        if isinstance(module, nn.Embedding):
            new = F.embedding(x, self.weight, module.padding_idx)
        else:
            if x.dtype != self.weight.dtype:
                x = x.to(self.weight.dtype)
            new = F.linear(x, self.weight, self.bias)
        return new.to(out.dtype) - out


@dataclass
class LoraAdapter:
    """A checked adapter, its tensors already on the base's device and dtype."""

    name: str
    path: Path
    config: dict
    ops: dict[str, list[_Op]] = field(default_factory=dict)  # module name -> ops

    @property
    def modules(self) -> list[str]:
        return sorted(self.ops)


# ---------------------------------------------------------------- reading + checks


def read_adapter_files(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """adapter_config.json + adapter_model.safetensors of a PEFT folder; never pickle."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise _fail(
            path,
            "folder not found",
            "an adapter is a PEFT folder with adapter_config.json and adapter_model.safetensors",
        )
    config_file = path / CONFIG_FILE
    weights = path / WEIGHTS_FILE
    if not config_file.is_file():
        raise _fail(path, f"missing {CONFIG_FILE}; not a PEFT adapter folder")
    if not weights.is_file():
        pickles = [name for name in PICKLE_FILES if (path / name).is_file()]
        if pickles:
            raise _fail(
                path,
                f"refusing to load pickle weights {pickles[0]} (unpickling can run arbitrary code)",
                "convert it once in a trusted environment: load it with PEFT and save_pretrained(..., safe_serialization=True)",
            )
        raise _fail(path, f"missing {WEIGHTS_FILE}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _fail(path, f"unreadable {CONFIG_FILE}: {exc}") from exc
    if not isinstance(config, dict):
        raise _fail(path, f"{CONFIG_FILE} is not a JSON object")
    try:
        tensors = load_file(str(weights), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise _fail(path, f"unreadable {WEIGHTS_FILE}: {exc}") from exc
    return config, tensors


PEFT_TYPES = ("LORA", "ADALORA", "IA3")


def _check_config(path: Path, config: dict) -> None:
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type not in PEFT_TYPES:
        raise _fail(
            path,
            f"PEFT type {config.get('peft_type')!r} is not supported",
            "supported: LoRA (and DoRA), AdaLoRA, IA3",
        )
    if config.get("use_dora") and peft_type != "LORA":
        raise _fail(path, f"DoRA (use_dora) on a {peft_type} adapter is not supported")
    if config.get("fan_in_fan_out") and (peft_type == "IA3" or config.get("use_dora")):
        raise _fail(path, "fan_in_fan_out (GPT-2 style Conv1D layers) is not supported for IA3 and DoRA")
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise _fail(path, f"{what} is not supported")
    if config.get("bias", "none") != "none":
        raise _fail(path, f"trained bias (bias={config.get('bias')!r}) is not supported")


def _check_architecture(path: Path, config: dict, base: nn.Module) -> None:
    base_class = type(base).__name__
    base_type = getattr(getattr(base, "config", None), "model_type", None)
    mapping = config.get("auto_mapping") or {}
    trained_class = mapping.get("base_model_class") if isinstance(mapping, dict) else None
    if trained_class and trained_class != base_class:
        raise _fail(path, f"was trained on a {trained_class}; the base model is a {base_class}")
    trained_type = None
    meta = path / LMLANG_META
    if meta.is_file():
        try:
            trained_type = json.loads(meta.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError):
            trained_type = None
    origin = config.get("base_model_name_or_path")
    if trained_type is None and isinstance(origin, str) and origin:
        origin_config = Path(origin) / "config.json"
        try:
            if origin_config.is_file():
                trained_type = json.loads(origin_config.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError):
            trained_type = None
    if trained_type and base_type and trained_type != base_type:
        raise _fail(path, f"was trained on a '{trained_type}' model; the base model is '{base_type}'")


def _module_key(path: Path, key: str) -> tuple[str, str]:
    """'base_model.model.X.lora_A.weight' -> ('X', 'lora_A')."""
    if not key.startswith(_PREFIX):
        raise _fail(path, f"unexpected tensor name {key!r} (expected the PEFT prefix {_PREFIX!r})")
    rest = key[len(_PREFIX) :]
    for suffix, kind in (
        (".lora_A.weight", "lora_A"),
        (".lora_B.weight", "lora_B"),
        (".lora_A", "lora_A"),  # AdaLoRA: parameters, not Linear modules
        (".lora_B", "lora_B"),
        (".lora_E", "lora_E"),
        (".lora_magnitude_vector", "magnitude"),  # DoRA
        (".ia3_l", "ia3"),
        (".lora_embedding_A", "emb_A"),
        (".lora_embedding_B", "emb_B"),
        (".base_layer.weight", "base_weight"),
        (".weight", "weight"),
        (".bias", "bias"),
    ):
        if rest.endswith(suffix):
            return rest[: -len(suffix)], kind
    raise _fail(path, f"unsupported tensor {key!r}")


from .peft_config import pattern_value as _pattern_value  # noqa: E402  (one rule with merge/lora.py)


def _target_matches(target: Any, names: list[str]) -> bool:
    if isinstance(target, str):
        return any(n == target or n.endswith("." + target) for n in names)
    return False


def _check_targets(path: Path, config: dict, base: nn.Module) -> None:
    targets = config.get("target_modules")
    names = [n for n, _ in base.named_modules() if n]
    leaves = sorted(
        {
            n.rsplit(".", 1)[-1]
            for n, m in base.named_modules()
            if isinstance(m, (nn.Linear, nn.Embedding)) or _is_int8_linear(m) or type(m).__name__ == "Conv1D"
        }
    )
    if isinstance(targets, str):
        if targets == "all-linear":
            return
        if not any(re.fullmatch(targets, n) for n in names):
            raise _fail(
                path,
                f"target_modules pattern {targets!r} matches no module of the base model ({type(base).__name__})",
                f"its adaptable layers are: {', '.join(leaves)}",
            )
        return
    for target in targets or []:
        if not _target_matches(target, names):
            close = did_you_mean(str(target), leaves)
            raise _fail(
                path,
                f"target module {target!r} does not exist in the base model ({type(base).__name__})",
                f"{close + ' ' if close else ''}its adaptable layers are: {', '.join(leaves)}",
            )


def _is_int8_linear(module: nn.Module) -> bool:
    """A Linear that dtype int8 replaced (torch's dynamic quantization). LoRA
    hooks see its float input and output like a plain Linear's; only its
    weight is packed (`module.weight()` unpacks it)."""
    return type(module).__module__.startswith("torch.ao.nn.quantized") and hasattr(module, "in_features")


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or _is_int8_linear(module)


def _linear_weight(module: nn.Module) -> torch.Tensor:
    """The float weight of a plain or an int8 Linear (int8: dequantized once)."""
    if _is_int8_linear(module):
        return module.weight().dequantize()  # type: ignore[operator]
    return module.weight  # type: ignore[return-value]


def _linear_bias(module: nn.Module) -> torch.Tensor | None:
    bias = module.bias() if _is_int8_linear(module) else getattr(module, "bias", None)  # type: ignore[operator]
    return bias


def _layer_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a layer LoRA can adapt, else None."""
    if _is_linear(module):
        return module.in_features, module.out_features  # type: ignore[return-value]
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # GPT-2 style, weight (in, out)
        return module.weight.shape[0], module.weight.shape[1]  # type: ignore[index, return-value]  # torch types Module attributes as Tensor | Module
    return None


def _vocab_error(path: Path, module: str, got: int, want: int) -> LmlangRuntimeError:
    return _fail(
        path,
        f"vocabulary mismatch at {module}: the adapter has {got} tokens, the base model has {want}",
        "the adapter was trained on a model with another tokenizer or resized embeddings",
    )


def build_adapter(
    name: str, path: Path, config: dict, tensors: dict[str, torch.Tensor], base: nn.Module, tokenizer=None
) -> LoraAdapter:
    """Check an adapter's config and tensors against `base`; raise LmlangRuntimeError with
    the first problem, else return the adapter with tensors on the base's device/dtype."""
    path = Path(path)
    _check_config(path, config)
    _check_architecture(path, config, base)
    _check_targets(path, config, base)

    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        owner, kind = _module_key(path, key)
        grouped.setdefault(owner, {})[kind] = tensor

    peft_type = str(config.get("peft_type", "")).upper()
    adalora = peft_type == "ADALORA"
    dora = bool(config.get("use_dora"))
    r_default = config.get("r", 8)
    alpha_default = config.get("lora_alpha", r_default)
    rslora = bool(config.get("use_rslora", False))
    modules = dict(base.named_modules())
    touches_vocab = False
    ops: dict[str, list[_Op]] = {}
    for module_name, parts in sorted(grouped.items()):
        module = modules.get(module_name)
        if module is None:
            raise _fail(
                path,
                f"has weights for {module_name!r}, which the base model ({type(base).__name__}) does not have",
                "was it trained on a model of another size or family?",
            )
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        module_ops: list[_Op] = []
        lora_parts = {"lora_A", "lora_B", "lora_E", "emb_A", "emb_B", "magnitude"} & set(parts)
        if dora and "lora_A" in parts and "magnitude" not in parts:
            raise _fail(path, f"{module_name}: a DoRA adapter (use_dora) needs its lora_magnitude_vector")
        if (
            ("ia3" in parts and peft_type != "IA3")
            or (lora_parts and peft_type == "IA3")
            or ("magnitude" in parts and not dora)
        ):
            raise _fail(
                path, f"{module_name}: its tensors ({', '.join(sorted(parts))}) do not fit a {peft_type} config"
            )
        if "ia3" in parts:
            module_ops.append(_ia3_op(path, config, module_name, module, parts["ia3"]).to(device, dtype))
        if "lora_E" in parts and not adalora:
            raise _fail(path, f"{module_name}: lora_E (AdaLoRA) in a {peft_type} adapter")
        if "lora_A" in parts or "lora_B" in parts or "emb_A" in parts or "emb_B" in parts:
            embedding = "emb_A" in parts or "emb_B" in parts
            a = parts.get("emb_A" if embedding else "lora_A")
            b = parts.get("emb_B" if embedding else "lora_B")
            if a is None or b is None:
                raise _fail(path, f"{module_name} has only one of the two LoRA matrices")
            if adalora:  # SVD form: B (A * E); E holds the singular values, pruned ones are 0
                e = parts.get("lora_E")
                if e is None or e.shape != (a.shape[0], 1):
                    raise _fail(path, f"{module_name}: AdaLoRA needs lora_E shaped ({a.shape[0]}, 1)")
                a = a * e
            if a.dim() != 2 or b.dim() != 2:
                raise _fail(
                    path, f"{module_name}: LoRA matrices must be 2-D, got {tuple(a.shape)} and {tuple(b.shape)}"
                )
            expected_r = int(_pattern_value(config.get("rank_pattern") or {}, module_name, r_default))
            alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module_name, alpha_default))
            if embedding:
                if not isinstance(module, nn.Embedding):
                    raise _fail(
                        path,
                        f"{module_name} has embedding LoRA weights but is a {type(module).__name__} in the base model",
                    )
                touches_vocab = True
                rank = a.shape[0]
                if a.shape[1] != module.num_embeddings:
                    raise _vocab_error(path, module_name, a.shape[1], module.num_embeddings)
                if b.shape != (module.embedding_dim, rank):
                    raise _fail(
                        path,
                        f"shape mismatch at {module_name}: lora_embedding_B is {tuple(b.shape)}, expected {(module.embedding_dim, rank)}",
                    )
            else:
                shape = _layer_shape(module)
                if shape is None:
                    raise _fail(
                        path,
                        f"{module_name} is a {type(module).__name__} in the base model; only linear and embedding layers are supported",
                    )
                in_f, out_f = shape
                rank = a.shape[0]
                if a.shape[1] != in_f:
                    raise _fail(
                        path,
                        f"shape mismatch at {module_name}: lora_A is {tuple(a.shape)} but the base layer takes {in_f} inputs",
                        "was it trained on a model of another size?",
                    )
                if b.shape[0] != out_f:
                    raise _fail(
                        path,
                        f"shape mismatch at {module_name}: lora_B is {tuple(b.shape)} but the base layer has {out_f} outputs",
                        "was it trained on a model of another size?",
                    )
                if b.shape[1] != rank:
                    raise _fail(
                        path, f"rank mismatch at {module_name}: lora_A has rank {rank}, lora_B has rank {b.shape[1]}"
                    )
            if adalora:  # PEFT: lora_alpha / (ranknum + 1e-5); ranknum stays init_r when pruning shrinks A
                scaling = float(alpha_default) / (float(config.get("init_r", r_default)) + 1e-5)
            elif rank != expected_r:
                raise _fail(
                    path,
                    f"rank mismatch at {module_name}: the config says r={expected_r}, the weights have rank {rank}",
                )
            else:
                scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
            a32, b32 = a.float(), b.float() * scaling
            if dora:
                module_ops.append(_dora_op(path, module_name, module, a32, b32, parts["magnitude"]).to(device, dtype))
            else:
                op = _EmbeddingLora(a32, b32) if embedding else _LinearLora(a32, b32)
                module_ops.append(op.to(device, dtype))
        if "base_weight" in parts:  # PEFT saves the embedding itself with save_embedding_layers
            saved = parts["base_weight"]
            weight = getattr(module, "weight", None)
            if weight is None:
                raise _fail(path, f"{module_name}.base_layer.weight has no counterpart in the base model")
            touches_vocab = True
            if saved.shape != weight.shape:
                if saved.dim() == 2 and weight.dim() == 2 and saved.shape[1] == weight.shape[1]:
                    raise _vocab_error(path, module_name, saved.shape[0], weight.shape[0])
                raise _fail(
                    path, f"shape mismatch at {module_name}: saved {tuple(saved.shape)}, base {tuple(weight.shape)}"
                )
            if not torch.allclose(saved.to(weight.device, torch.float32), weight.float(), rtol=1e-3, atol=1e-5):
                module_ops.append(_Replace(saved).to(device, dtype))
        if "weight" in parts or "bias" in parts:  # modules_to_save replacements
            if _is_int8_linear(module):
                raise _fail(
                    path,
                    f"{module_name} is replaced whole by this adapter (modules_to_save) and the model is loaded as int8",
                    "load this model as float32 or bfloat16 (dtype option)",
                )
            if not isinstance(module, (nn.Linear, nn.Embedding)):
                raise _fail(
                    path,
                    f"replacement module {module_name} is a {type(module).__name__}; only linear and embedding replacements are supported",
                )
            saved = parts.get("weight", module.weight)
            if saved.shape != module.weight.shape:
                is_vocab = isinstance(module, nn.Embedding) or module is _output_embeddings(base)
                if is_vocab and saved.dim() == 2 and saved.shape[1] == module.weight.shape[1]:
                    raise _vocab_error(path, module_name, saved.shape[0], module.weight.shape[0])
                raise _fail(
                    path,
                    f"shape mismatch at {module_name}: saved {tuple(saved.shape)}, base {tuple(module.weight.shape)}",
                )
            if "bias" in parts and getattr(module, "bias", None) is None:
                raise _fail(path, f"{module_name}.bias has no counterpart in the base model")
            # torch types Module attributes as Tensor | Module: name them as tensors once.
            base_bias: Any = getattr(module, "bias", None)
            base_weight: Any = module.weight
            bias = parts.get("bias", base_bias)
            if bias is not None and base_bias is not None and bias.shape != base_bias.shape:
                raise _fail(
                    path,
                    f"shape mismatch at {module_name}.bias: saved {tuple(bias.shape)}, base {tuple(base_bias.shape)}",
                )
            touches_vocab = touches_vocab or isinstance(module, nn.Embedding) or module is _output_embeddings(base)
            same = torch.allclose(
                saved.to(base_weight.device, torch.float32), base_weight.float(), rtol=1e-3, atol=1e-5
            ) and (
                bias is None
                or base_bias is None
                or torch.allclose(bias.to(base_bias.device, torch.float32), base_bias.float(), rtol=1e-3, atol=1e-5)
            )
            if not same:  # an unchanged copy of the base module costs a matmul and adds nothing
                module_ops.append(_Replace(saved.detach(), None if bias is None else bias.detach()).to(device, dtype))
        if module_ops:
            ops[module_name] = module_ops
    if not ops:
        raise _fail(path, f"{WEIGHTS_FILE} holds no weights that change the base model")
    if touches_vocab and tokenizer is not None:
        _check_tokenizer(path, tokenizer)
    return LoraAdapter(name=name, path=path, config=config, ops=ops)


def _dora_op(path: Path, name: str, module: nn.Module, a32, b32, magnitude) -> _DoraLinear:
    """DoRA's constant m / ||W + s B A||_row, from the frozen base weight (PEFT
    detaches the norm too: it is not a function of the input)."""
    if not _is_linear(module):
        raise _fail(path, f"DoRA on {name} ({type(module).__name__}) is not supported; only on linear layers")
    weight = _linear_weight(module).detach().float().cpu()
    if magnitude.shape != (weight.shape[0],):
        raise _fail(
            path,
            f"shape mismatch at {name}: lora_magnitude_vector is {tuple(magnitude.shape)}, expected ({weight.shape[0]},)",
        )
    norm = torch.linalg.norm(weight + b32 @ a32, dim=1)
    base_bias = _linear_bias(module)
    bias = None if base_bias is None else base_bias.detach().float().cpu()
    return _DoraLinear(a32, b32, magnitude.float() / norm, bias)


def _ia3_op(path: Path, config: dict, name: str, module: nn.Module, vector) -> _IA3:
    """IA3's vector of one module: on the input when the module is one of the
    config's feedforward_modules (shaped (1, in)), else on the output ((out, 1))."""
    if not _is_linear(module):
        raise _fail(path, f"IA3 on {name} ({type(module).__name__}) is not supported; only on linear layers")
    ff = config.get("feedforward_modules") or []
    on_input = bool(re.fullmatch(ff, name)) if isinstance(ff, str) else _target_matches_one(ff, name)
    if on_input and _is_int8_linear(module):  # its delta multiplies the weight again at every step
        raise _fail(
            path,
            f"IA3 on the input of {name} needs the layer's float weight, and the model is loaded as int8",
            "load this model as float32 or bfloat16 (dtype option), or use a LoRA adapter",
        )
    want = (1, module.in_features) if on_input else (module.out_features, 1)
    if tuple(vector.shape) != want:
        raise _fail(
            path,
            f"shape mismatch at {name}: ia3_l is {tuple(vector.shape)}, expected {want}"
            f" ({'input' if on_input else 'output'} scaling)",
        )
    return _IA3(vector.float().reshape(-1), on_input)


def _target_matches_one(targets: list, name: str) -> bool:
    """PEFT's list rule: a target is a module name or a suffix at a dot."""
    return any(isinstance(t, str) and (name == t or name.endswith("." + t)) for t in targets)


def _output_embeddings(base: nn.Module):
    getter = getattr(base, "get_output_embeddings", None)
    return getter() if callable(getter) else None


def _check_tokenizer(path: Path, tokenizer) -> None:
    """An adapter that touches the vocabulary and ships its tokenizer must ship the base's."""
    if not ((path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()):
        return
    try:
        from transformers import AutoTokenizer

        theirs = AutoTokenizer.from_pretrained(str(path))
    except Exception:  # an unreadable tokenizer there says nothing about compatibility
        return
    if theirs.get_vocab() != tokenizer.get_vocab():
        raise _fail(
            path,
            f"its tokenizer ({len(theirs)} tokens) differs from the base model's ({len(tokenizer)} tokens)",
            "the adapter was trained with another vocabulary",
        )


# ---------------------------------------------------------------- the host


@dataclass(frozen=True)
class _Uniform:
    entries: tuple[tuple[LoraAdapter, float], ...]


@dataclass(frozen=True)
class _Rows:
    rows: int
    # adapter, row indices (None = all rows), per-row scales shaped (k,)
    entries: tuple[tuple[LoraAdapter, torch.Tensor | None, torch.Tensor], ...]
    _expanded: dict = field(default_factory=dict, compare=False)

    def for_batch(self, batch: int) -> tuple:
        """Entries for a forward of `batch` rows. A multiple of the selected rows is
        read as generate()'s expansion (num_return_sequences, beams): each row
        repeated in place (repeat_interleave), so row i's copies keep its stack."""
        if batch == self.rows:
            return self.entries
        if self.rows == 0 or batch % self.rows:
            raise LmlangRuntimeError(
                f"per-row adapters were selected for {self.rows} rows but a forward got a batch of {batch}"
            )
        if batch not in self._expanded:
            k = batch // self.rows
            entries: list[tuple[LoraAdapter, torch.Tensor | None, torch.Tensor]] = []
            for adapter, index, scales in self.entries:
                if index is None:
                    entries.append((adapter, None, scales.repeat_interleave(k)))
                else:
                    offsets = torch.arange(k, device=index.device)
                    entries.append((adapter, (index[:, None] * k + offsets).reshape(-1), scales.repeat_interleave(k)))
            self._expanded[batch] = tuple(entries)
        return self._expanded[batch]


def normalize_stack(stack: Sequence[tuple[str, float]] | None) -> Stack:
    if not stack:
        return ()
    out = []
    for item in stack:
        try:
            name, scale = item
        except (TypeError, ValueError) as exc:
            raise LmlangRuntimeError(f"an adapter stack is a sequence of (name, scale) pairs, got {item!r}") from exc
        scale = float(scale)
        if not math.isfinite(scale):
            raise LmlangRuntimeError(f"adapter {name!r}: scale must be a finite number, got {scale}")
        out.append((str(name), scale))
    return tuple(out)


class AdapterHost:
    """Named LoRA adapters over one loaded base model, switched per query.

    ``host.add("polite", path)`` checks and loads an adapter once.
    ``with host.activate((("polite", 0.8), ("math", 1.0))):`` makes every forward of
    ``host.model`` compute base + 0.8 * polite + math; ``activate(())`` is the base.
    ``with host.activate_rows([stack_row0, stack_row1, ...]):`` gives each row of the
    batch its own stack (every forward inside must have that batch size).
    The selection is per thread (threads may run different stacks on the one
    base model); nested selections restore the outer one on exit.
    """

    def __init__(self, loaded_model):
        """loaded_model: a LoadedModel (models/loader.py), which records its
        host in its `adapter_host` field: one host, one set of hooks, per model."""
        self.loaded = loaded_model
        base = loaded_model.model
        if loaded_model.adapter_host is not None:
            raise LmlangRuntimeError(
                "this model already has an AdapterHost; use AdapterHost.for_model(loaded) to share it"
            )
        self._base = base
        self._tokenizer = getattr(loaded_model, "tokenizer", None)
        self._adapters: dict[str, LoraAdapter] = {}
        self._hooks: dict[str, Any] = {}
        self._local = threading.local()  # the active selection is per thread
        loaded_model.adapter_host = self

    @classmethod
    def for_model(cls, loaded_model) -> "AdapterHost":
        """The host of this base model, created on first use."""
        host = loaded_model.adapter_host
        return host if host is not None else cls(loaded_model)

    @property
    def model(self) -> nn.Module:
        """The base model; its forward applies whatever is active."""
        return self._base

    @property
    def names(self) -> list[str]:
        return list(self._adapters)

    def adapter(self, name: str) -> LoraAdapter:
        try:
            return self._adapters[name]
        except KeyError:
            hint = did_you_mean(name, self._adapters) or f"loaded adapters: {', '.join(self._adapters) or '(none)'}"
            raise LmlangRuntimeError(f"unknown adapter {name!r}", hint=hint) from None

    def add(self, name: str, path: Path) -> None:
        """Check the PEFT folder at `path` against the base and load it as `name` (once)."""
        path = Path(path)
        if name in self._adapters:
            if self._adapters[name].path.resolve() == path.resolve():
                return
            raise LmlangRuntimeError(f"adapter name {name!r} is already used for {self._adapters[name].path}")
        config, tensors = read_adapter_files(path)
        adapter = build_adapter(name, path, config, tensors, self._base, self._tokenizer)
        self._adapters[name] = adapter
        modules = dict(self._base.named_modules())
        for module_name in adapter.ops:
            if module_name not in self._hooks:
                self._hooks[module_name] = modules[module_name].register_forward_hook(self._make_hook(module_name))

    def remove(self, name: str) -> None:
        self.adapter(name)
        if self._state is not None:
            raise LmlangRuntimeError(f"cannot remove adapter {name!r} while a selection is active")
        del self._adapters[name]
        used = {m for a in self._adapters.values() for m in a.ops}
        for module_name in list(self._hooks):
            if module_name not in used:
                self._hooks.pop(module_name).remove()

    def close(self) -> None:
        """Remove every hook; the base model is exactly what it was."""
        for handle in self._hooks.values():
            handle.remove()
        self._hooks.clear()
        self._adapters.clear()
        self._state = None
        if self.loaded.adapter_host is self:
            self.loaded.adapter_host = None

    # ---- selection

    @property
    def _state(self) -> _Uniform | _Rows | None:
        return getattr(self._local, "state", None)

    @_state.setter
    def _state(self, value) -> None:
        self._local.state = value

    def _resolve(self, stack: Sequence[tuple[str, float]] | None) -> tuple[tuple[LoraAdapter, float], ...]:
        return tuple((self.adapter(name), scale) for name, scale in normalize_stack(stack) if scale != 0.0)

    @contextlib.contextmanager
    def activate(self, stack: Sequence[tuple[str, float]] | None) -> Iterator[nn.Module]:
        """Within the block, the model computes base + sum(scale_i * delta_i)."""
        entries = self._resolve(stack)
        state = _Uniform(entries) if entries else None
        with self._swap(state):
            yield self._base

    @contextlib.contextmanager
    def activate_rows(self, stacks: Sequence[Sequence[tuple[str, float]] | None]) -> Iterator[nn.Module]:
        """Within the block, row i of every forward uses stacks[i] (the "mixed" strategy)."""
        resolved = [self._resolve(s) for s in stacks]
        rows = len(resolved)
        first = resolved[0] if resolved else ()
        if all(r == first for r in resolved):  # one stack for all: the cheap path
            with self._swap(_Uniform(first) if first else None):
                yield self._base
            return
        per_adapter: dict[str, tuple[LoraAdapter, list[int], list[float]]] = {}
        for row, entries in enumerate(resolved):
            for adapter, scale in entries:
                slot = per_adapter.setdefault(adapter.name, (adapter, [], []))
                if slot[1] and slot[1][-1] == row:  # the same adapter twice in one stack
                    slot[2][-1] += scale
                else:
                    slot[1].append(row)
                    slot[2].append(scale)
        built = []
        for adapter, idx, scales in per_adapter.values():
            device = _first_device(adapter)
            index = None if len(idx) == rows else torch.tensor(idx, dtype=torch.long, device=device)
            built.append((adapter, index, torch.tensor(scales, dtype=torch.float32, device=device)))
        with self._swap(_Rows(rows, tuple(built))):
            yield self._base

    @contextlib.contextmanager
    def _swap(self, state):
        previous = self._state
        self._state = state
        try:
            yield
        finally:
            self._state = previous

    def group_rows(self, stacks: Sequence[Sequence[tuple[str, float]] | None]) -> list[tuple[Stack, list[int]]]:
        """Rows grouped by identical stack, in order of first appearance (the "grouped" strategy)."""
        groups: dict[Stack, list[int]] = {}
        for row, stack in enumerate(stacks):
            key = tuple((n, s) for n, s in normalize_stack(stack) if s != 0.0)
            for name, _ in key:
                self.adapter(name)
            groups.setdefault(key, []).append(row)
        return list(groups.items())

    def forward_rows(
        self, stacks: Sequence[Sequence[tuple[str, float]] | None], strategy: str | None = None, **inputs
    ) -> torch.Tensor:
        """Logits of one batch whose row i uses stacks[i]; `inputs` are the model's
        batch-first keyword inputs (input_ids, attention_mask, ...)."""
        strategy = strategy or DEFAULT_ROW_STRATEGY
        if strategy not in ROW_STRATEGIES:
            raise LmlangRuntimeError(f"unknown row strategy {strategy!r}; expected one of {', '.join(ROW_STRATEGIES)}")
        if strategy == "mixed":
            with self.activate_rows(stacks):
                return self._base(**inputs).logits
        logits: torch.Tensor | None = None
        for stack, rows in self.group_rows(stacks):
            index = torch.tensor(rows, dtype=torch.long)
            sub = {k: (v.index_select(0, index.to(v.device)) if torch.is_tensor(v) else v) for k, v in inputs.items()}
            with self.activate(stack):
                part = self._base(**sub).logits
            if logits is None:
                logits = part.new_empty((len(stacks),) + tuple(part.shape[1:]))
            logits[index.to(part.device)] = part
        assert logits is not None  # stacks is never empty: one group at least
        return logits

    # ---- the hook

    def _make_hook(self, module_name: str):
        def hook(module, args, out):
            state = self._state
            if state is None or not args:
                return None
            x = args[0]
            base_out = out
            if isinstance(state, _Uniform):
                for adapter, scale in state.entries:
                    for op in adapter.ops.get(module_name, ()):
                        out = out + op.delta(module, x, base_out) * scale
                return out
            for adapter, index, scales in state.for_batch(x.shape[0]):
                module_ops = adapter.ops.get(module_name)
                if not module_ops:
                    continue
                shape = (-1,) + (1,) * (out.dim() - 1)
                # A model spread over several devices (device_map) runs this
                # module wherever its layer sits: bring the row index there.
                scales = scales.view(shape).to(device=out.device, dtype=out.dtype)
                if index is None:
                    for op in module_ops:
                        out = out + op.delta(module, x, base_out) * scales
                else:
                    if index.device != x.device:
                        index = index.to(x.device)
                    xs, bs = x.index_select(0, index), base_out.index_select(0, index)
                    for op in module_ops:
                        out = out.index_add(0, index, op.delta(module, xs, bs) * scales)
            return out

        return hook


def _first_device(adapter: LoraAdapter) -> torch.device:
    for ops in adapter.ops.values():
        for op in ops:
            for attr in ("A", "weight", "v"):
                tensor = getattr(op, attr, None)
                if tensor is not None:
                    return tensor.device
    return torch.device("cpu")


def load_adapter(loaded_model, name: str, path: Path) -> AdapterHost:
    """Convenience: the model's host with `path` added as `name`."""
    host = AdapterHost.for_model(loaded_model)
    host.add(name, path)
    return host
