"""Streaming merges over HF safetensors folders.

`merge_models` checks the inputs from config.json and safetensors headers
only (architecture, tensor names and shapes, tokenizer, tied embeddings,
rope), then walks the tensors in file order: a reader thread prefetches the
next tensor of every input while the main thread merges the current one in
fp32 and the writer puts the result at its planned offset. Memory stays at a
few tensors, whatever the model size.

Results are ordinary HF folders (config, tokenizer, shards, a README model
card with the recipe) published atomically: built in a temporary folder,
renamed into place. Without `out_dir` they are cached under
`cache_dir("merges")` by a key over the method, options, inputs' content keys,
compat mode and dtypes, so a rerun is free and concurrent runs are safe.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import resource
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import MergeError
from .options import METHODS, resolve_setting, validate_options, unknown_method_message
from .safetensors_io import NAME_TO_ST, ShardWriter, TensorMeta, TensorReader, scan_tensors, weight_files

FORMAT_VERSION = 1
MARKER = "lmlang_merge.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
CONFIG_KEYS = (
    "architectures",
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
)
ROPE_KEYS = ("rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor")
LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


class MergeConfigError(MergeError):
    """A bad merge recipe (unknown method or option, wrong counts): exit code 2."""

    exit_code = 2


@dataclass
class MergeResult:
    path: Path
    seconds: float
    cached: bool
    stats: dict = field(default_factory=dict)


@dataclass
class ModelInput:
    path: Path
    config: dict
    tensors: dict[str, TensorMeta]
    header_hash: str
    tokenizer_key: str | None

    @property
    def content_key(self) -> str:
        h = hashlib.sha256(self.header_hash.encode())
        for p in sorted(self.path.iterdir()):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


def _dtype_name(dtype: Any) -> str | None:
    if dtype is None:
        return None
    name = str(dtype).replace("torch.", "")
    aliases = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16", "float": "float32"}
    name = aliases.get(name, name)
    if name not in NAME_TO_ST:
        raise MergeConfigError(f"unknown dtype '{dtype}' (use float32, bfloat16 or float16)")
    return name


def tokenizer_key(folder: Path) -> str | None:
    """A hash of what defines the vocabulary, ignoring cosmetic tokenizer_config changes."""
    tj = folder / "tokenizer.json"
    h = hashlib.sha256()
    if tj.exists():
        try:
            data = json.loads(tj.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise MergeError(f"{tj}: unreadable tokenizer: {e}") from None
        h.update(
            json.dumps({"model": data.get("model"), "added_tokens": data.get("added_tokens")}, sort_keys=True).encode()
        )
        return h.hexdigest()
    found = False
    for name in ("tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json"):
        p = folder / name
        if p.exists():
            h.update(name.encode() + p.read_bytes())
            found = True
    return h.hexdigest() if found else None


def load_input(path: str | os.PathLike) -> ModelInput:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise MergeError(f"model folder not found: {folder}")
    cfg_path = folder / "config.json"
    try:
        config = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    except (OSError, ValueError) as e:
        raise MergeError(f"{cfg_path}: unreadable config: {e}") from None
    tensors, header_hash = scan_tensors(weight_files(folder))
    return ModelInput(folder.resolve(), config, tensors, header_hash, tokenizer_key(folder))


def _tied(cfg: dict) -> bool:
    if "tie_word_embeddings" in cfg:
        return bool(cfg["tie_word_embeddings"])
    text_cfg = cfg.get("text_config") or {}
    return bool(text_cfg.get("tie_word_embeddings", False))


def check_compatible(inputs: Sequence[ModelInput], tokenizer_policy: str = "strict") -> list[str]:
    """Raise MergeError if the inputs cannot be merged tensor by tensor; return the
    names to drop (an lm_head tied to the embeddings). Reads no weights."""
    first = inputs[0]
    for other in inputs[1:]:
        for key in CONFIG_KEYS + ROPE_KEYS + ("tie_word_embeddings",):
            a, b = first.config.get(key), other.config.get(key)
            if a != b:
                what = "rope settings differ" if key in ROPE_KEYS else "architectures differ"
                raise MergeError(
                    f"cannot merge {first.path.name} and {other.path.name}: {what}: config.json {key} is {a!r} vs {b!r}"
                )
    if tokenizer_policy not in ("strict", "ignore"):
        raise MergeConfigError(f"unknown tokenizer_policy '{tokenizer_policy}' (use 'strict' or 'ignore')")
    if tokenizer_policy == "strict":
        keys = {m.tokenizer_key for m in inputs if m.tokenizer_key is not None}
        if len(keys) > 1:
            listed = ", ".join(m.path.name for m in inputs)
            raise MergeError(
                f"cannot merge {listed}: their tokenizers differ (different vocabularies make rows of "
                "the embedding matrices mean different tokens); use tokenizer_policy='ignore' if the "
                "vocabularies are known to agree"
            )
    drop: set[str] = set()
    if _tied(first.config):
        drop = {n for m in inputs for n in m.tensors if n.endswith("lm_head.weight")}
    names = set(first.tensors) - drop
    for other in inputs[1:]:
        other_names = set(other.tensors) - drop
        if other_names != names:
            missing = sorted(names - other_names)[:3]
            extra = sorted(other_names - names)[:3]
            raise MergeError(
                f"cannot merge {first.path.name} and {other.path.name}: tensor names differ "
                f"(missing in the second: {missing}, extra: {extra})"
            )
        for n in names:
            a, b = first.tensors[n], other.tensors[n]
            if a.shape != b.shape:
                hint = " (vocabulary sizes differ)" if "embed" in n or "lm_head" in n else ""
                raise MergeError(
                    f"cannot merge {first.path.name} and {other.path.name}: tensor {n} has shape "
                    f"{list(a.shape)} vs {list(b.shape)}{hint}"
                )
            if a.is_float != b.is_float:
                raise MergeError(f"cannot merge: tensor {n} is {a.dtype} in one model and {b.dtype} in another")
    return sorted(drop)


def layer_positions(names: Sequence[str], config: dict) -> dict[str, float]:
    """mergekit's gradient position t: layer i of L gets i / (L - 1) (1 if L == 1);
    tensors outside the layers get 0."""
    n_layers = config.get("num_hidden_layers")
    found = [int(m.group(1)) for n in names if (m := LAYER_RE.search(n))]
    if not n_layers:
        n_layers = max(found) + 1 if found else 0
    out = {}
    for n in names:
        m = LAYER_RE.search(n)
        if m is None:
            out[n] = 0.0
        else:
            out[n] = int(m.group(1)) / (n_layers - 1) if n_layers > 1 else 1.0
    return out


class ParamResolver:
    """Per-tensor values of the merge options, with mergekit's precedence:
    the model's own setting, then the global one, then the method default."""

    def __init__(self, method: str, params: Mapping[str, Any], per_model: Sequence[Mapping[str, Any]]):
        self.opts = METHODS[method].options
        self.params = dict(params)
        self.per_model = [dict(p or {}) for p in per_model]

    def _value(self, name: str, sources: Sequence[Mapping[str, Any]], tensor: str, t: float) -> Any:
        spec = self.opts[name]
        for src in sources:
            if name in src:
                v = resolve_setting(src[name], tensor, t, spec.type)
                if v is not None:
                    return v
        if spec.default is None:
            raise MergeConfigError(f"option '{name}' has no value for tensor {tensor}")
        return spec.default

    def resolve(self, tensor: str, t: float) -> tuple[dict, list[dict]]:
        glob = {n: self._value(n, [self.params], tensor, t) for n, s in self.opts.items() if not s.per_model}
        models = [
            {n: self._value(n, [own, self.params], tensor, t) for n, s in self.opts.items() if s.per_model}
            for own in self.per_model
        ]
        return glob, models


def _write_card(folder: Path, recipe: dict, inputs: list[dict], seconds: float) -> None:
    import yaml

    lines = [
        "---",
        "library_name: transformers",
        "tags:",
        "- merge",
        "- lmlang",
        "---",
        "",
        f"# Merged model ({recipe['merge_method']})",
        "",
        f"Built by lmlang's streaming merge (compat mode `{recipe.get('compat', 'lmlang')}`) in {seconds:.1f} s.",
        "",
        "## Recipe",
        "",
        "```yaml",
        yaml.safe_dump(recipe, sort_keys=False).rstrip(),
        "```",
        "",
        "## Inputs",
        "",
        "| role | path | tensor-content sha256 |",
        "| --- | --- | --- |",
    ]
    for inp in inputs:
        lines.append(f"| {inp['role']} | `{inp['path']}` | `{inp['sha256']}` |")
    lines += [
        "",
        "The content hash is the sha256 over the sorted lines `name dtype shape sha256(bytes)` of the input's tensors.",
        "",
    ]
    (folder / "README.md").write_text("\n".join(lines))


OWNER_FILE = ".lmlang-owner"
# A temp folder with no owner file is from an older lmlang, or one being set
# up this instant: it is left alone until it is this old (seconds).
UNOWNED_STALE_AFTER = 24 * 3600


class WorkFolder:
    """The temporary folder a merge writes before publishing it as `final`.

    A killed merge leaves its folder behind (hundreds of MB under the merges
    cache), so every new one first removes the stale ones beside it. Stale
    means provably abandoned: each folder holds an owner file that its
    process keeps flock'ed while it works, and the kernel drops the lock
    when the process dies, however it dies. A concurrent merge's folder is
    locked, so it is never touched. The owner file is renamed into place
    only once locked, so a folder seen without a lock really has no owner."""

    def __init__(self, final: Path, *, whole_dir: bool = False):
        clean_stale_work(final.parent, None if whole_dir else final.name)
        self.path = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        partial = self.path / (OWNER_FILE + ".new")
        self._fd: int | None = os.open(partial, os.O_WRONLY | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        os.write(self._fd, f"{os.getpid()}\n".encode())
        os.rename(partial, self.path / OWNER_FILE)

    def release(self) -> None:
        """Drop the owner file (it is not part of the result) before publishing."""
        if self._fd is not None:
            try:
                os.unlink(self.path / OWNER_FILE)
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        self.release()
        shutil.rmtree(self.path, ignore_errors=True)


def clean_stale_work(folder: Path, name: str | None = None) -> list[Path]:
    """Remove abandoned merge temp folders in `folder` (those of `name` only,
    when given: an --out folder's parent is the user's, not the cache's).
    Returns what was removed."""
    pattern = f".{name}.tmp-*" if name else ".*.tmp-*"
    removed = []
    for tmp in folder.glob(pattern):
        if tmp.is_dir() and not tmp.is_symlink() and _abandoned(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def _abandoned(tmp: Path) -> bool:
    try:
        fd = os.open(tmp / OWNER_FILE, os.O_RDONLY)
    except FileNotFoundError:
        try:
            return time.time() - tmp.stat().st_mtime > UNOWNED_STALE_AFTER
        except OSError:
            return False
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # its merge is running
    finally:
        os.close(fd)  # (also releases the lock we may have taken)
    return True


def _publish(tmp: Path, final: Path, replace: bool) -> bool:
    """Rename tmp into place. Without `replace`, False if another run published
    `final` first (its result is equivalent: same key)."""
    if final.exists() and replace:
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{threading.get_ident()}")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        return True
    try:
        os.rename(tmp, final)
    except OSError:
        if (final / MARKER).exists():
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        raise
    return True


def copy_side_files(src: Path, dst: Path, tokenizer_src: Path, out_dtype: str | None, drop_tied: bool) -> None:
    cfg_path = src / "config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        if out_dtype:
            for key in ("torch_dtype", "dtype"):
                if key in cfg or key == "dtype":
                    cfg[key] = out_dtype
        (dst / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    gen = src / "generation_config.json"
    if gen.exists():
        shutil.copy2(gen, dst / gen.name)
    for name in TOKENIZER_FILES:
        p = tokenizer_src / name
        if p.exists():
            shutil.copy2(p, dst / name)


class _DigestCache:
    """sha256 tensor-content digests of inputs, keyed by their content key, so
    repeated merges of the same inputs do not hash them again."""

    def __init__(self) -> None:
        from ..home import cache_dir

        self.path = cache_dir("merges") / "input_digests.json"

    def get(self, key: str) -> str | None:
        try:
            return json.loads(self.path.read_text()).get(key)
        except (OSError, ValueError):
            return None

    def put(self, key: str, digest: str) -> None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        data[key] = digest
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}-{threading.get_ident()}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)


def stream_tensors(
    out_folder: Path,
    names: Sequence[str],
    inputs: Sequence[ModelInput],
    compute: Callable[[str, list], Any],
    out_dtypes: Mapping[str, str],
    shapes: Mapping[str, tuple],
    digests: Sequence[bool],
    max_shard_bytes: int = 2 << 30,
    prefix: str = "model",
    workers: int = 1,
) -> tuple[list[str | None], dict]:
    """Read tensor `name` of every input, call compute(name, tensors), write the
    result; returns the inputs' tensor-content digests (None where not asked).

    workers + 1 threads each take one tensor through read -> compute -> write;
    at most `workers` compute at once, so one thread is always free to read
    ahead (reads and writes release the GIL, so do torch kernels).
    """
    writer = ShardWriter(out_folder, [(n, out_dtypes[n], shapes[n]) for n in names], max_shard_bytes, prefix)
    reader = TensorReader()
    per_input: list[list[str]] = [[] for _ in inputs]
    stats = {"read_s": 0.0, "compute_s": 0.0, "write_s": 0.0, "bytes_read": 0, "workers": workers}
    gate = threading.Semaphore(workers)
    lock = threading.Lock()

    def process(name: str) -> None:
        t0 = time.perf_counter()
        tensors: list[Any] = []  # a tensor per input, None where the input lacks it
        for i, inp in enumerate(inputs):
            meta = inp.tensors.get(name)
            if meta is None:
                tensors.append(None)
                continue
            tensor, sha = reader.read(meta, digests[i])
            tensors.append(tensor)
            with lock:
                if sha:
                    per_input[i].append(f"{name} {meta.dtype} {list(meta.shape)} {sha}")
                stats["bytes_read"] += meta.nbytes
        t1 = time.perf_counter()
        with gate:
            t2 = time.perf_counter()
            result = compute(name, tensors)
            t3 = time.perf_counter()
        del tensors
        writer.write(name, result)
        del result
        with lock:
            stats["read_s"] += t1 - t0
            stats["compute_s"] += t3 - t2
            stats["write_s"] += time.perf_counter() - t3

    try:
        with ThreadPoolExecutor(workers + 1, thread_name_prefix="lmlang-merge") as pool:
            futures = [pool.submit(process, n) for n in names]
            try:
                for f in futures:
                    f.result()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    finally:
        reader.close()
        writer.close()
    out_digests = []
    for i, lines in enumerate(per_input):
        out_digests.append(hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest() if digests[i] else None)
    return out_digests, stats


# Methods whose kernels reduce over whole tensors: their float sums depend on
# torch's intra-op thread count, so compat="mergekit" keeps torch's default
# (mergekit's) there; everything else runs one torch thread per tensor on
# several tensors at once, which is faster on busy machines and makes lmlang
# mode's results independent of the core count.
def _reduces(method: str, params: Mapping[str, Any]) -> bool:
    if method in ("slerp", "model_stock", "pcb"):
        return True
    opts = METHODS[method].options
    return "rescale" in opts and method != "task_arithmetic" and bool(params.get("rescale", opts["rescale"].default))


def merge_models(
    method: str,
    models: Sequence[tuple[str | os.PathLike, Mapping[str, Any] | None]],
    base: str | os.PathLike | None = None,
    params: Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike | None = None,
    compat: str = "lmlang",
    dtype: str | None = None,
    tokenizer_source: str | os.PathLike | None = None,
    tokenizer_policy: str = "strict",
    compute_dtype: str | None = "float32",
    max_shard_size: int = 2 << 30,
    announce: Callable[[], None] | None = None,
) -> MergeResult:
    """Merge HF safetensors folders tensor by tensor; see the module docstring.

    announce: called once, just before the work starts, when the result is
    not already there (a caller's "merging X..." line: a cached result is
    not merged again, and the caller says so instead).

    models: [(folder, per-model options)] (a base listed among them is the base).
    dtype: output dtype (default: each tensor keeps the base's / first model's).
    compute_dtype: float32 (default); compat="mergekit" with a YAML `dtype`
    computes in that dtype like mergekit does.
    tokenizer_source: "base" (default: the base, else the first model) or a folder.
    """
    t_start = time.perf_counter()
    from .methods import COMPAT_MODES, get_method

    if method not in METHODS:
        raise MergeConfigError(unknown_method_message(method))
    if compat not in COMPAT_MODES:
        raise MergeConfigError(f"unknown compat mode '{compat}' (use 'lmlang' or 'mergekit')")
    params = dict(params or {})
    out_name = _dtype_name(dtype)
    compute_name = _dtype_name(compute_dtype)  # None: the inputs' promoted dtype (mergekit without dtype)
    info = METHODS[method]
    base_path = Path(base).expanduser().resolve() if base is not None else None
    entries = [(Path(p).expanduser().resolve(), dict(o or {})) for p, o in models]
    if info.base == "ignored":
        others = entries
        use_base = None
    else:
        others = [(p, o) for p, o in entries if p != base_path]
        use_base = base_path
    problems = validate_options(
        method, params, [o for _, o in others], compat=compat, n_models=len(others), has_base=use_base is not None
    )
    if problems:
        raise MergeConfigError("; ".join(problems))

    base_input = load_input(use_base) if use_base is not None else None
    other_inputs = [load_input(p) for p, _ in others]
    inputs = ([base_input] if base_input else []) + other_inputs
    drop = check_compatible(inputs, tokenizer_policy)
    tokenizer_folder = _tokenizer_folder(tokenizer_source, base_input or inputs[0], inputs)

    recipe: dict[str, Any] = {"merge_method": method}
    if base_input:
        recipe["base_model"] = str(base_input.path)
    recipe["models"] = [{"model": str(p), **({"parameters": o} if o else {})} for p, o in others]
    if params:
        recipe["parameters"] = params
    recipe.update(
        {
            "dtype": out_name or "inherit",
            "compute_dtype": compute_name or "inherit",
            "compat": compat,
            "tokenizer_source": str(tokenizer_folder),
            "tokenizer_policy": tokenizer_policy,
        }
    )
    key = hashlib.sha256(
        json.dumps(
            {
                "v": FORMAT_VERSION,
                "recipe": {k: v for k, v in recipe.items() if k not in ("base_model", "models", "tokenizer_source")},
                "base": base_input.content_key if base_input else None,
                "models": [[m.content_key, o] for m, (_, o) in zip(other_inputs, others)],
                "tokenizer": tokenizer_key(tokenizer_folder),
                "shard": max_shard_size,
            },
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()

    if out_dir is None:
        from ..home import cache_dir

        final = cache_dir("merges") / key[:24]
        if (final / MARKER).exists():
            return MergeResult(final, time.perf_counter() - t_start, True, {"key": key})
    else:
        final = Path(out_dir).expanduser().resolve()
        if final.exists() and any(final.iterdir()) and not (final / MARKER).exists():
            raise MergeError(f"output folder {final} exists and is not an lmlang merge; choose an empty or new folder")
        if (final / MARKER).exists():
            try:
                if json.loads((final / MARKER).read_text()).get("key") == key:
                    return MergeResult(final, time.perf_counter() - t_start, True, {"key": key})
            except (OSError, ValueError):
                pass
        final.parent.mkdir(parents=True, exist_ok=True)

    ref = base_input or inputs[0]
    names = [n for n, _ in sorted(ref.tensors.items(), key=lambda kv: (kv[1].file, kv[1].begin)) if n not in drop]
    positions = layer_positions(names, ref.config)
    out_dtypes = {
        n: (NAME_TO_ST[out_name] if out_name and ref.tensors[n].is_float else ref.tensors[n].dtype) for n in names
    }
    shapes = {n: ref.tensors[n].shape for n in names}
    resolver = ParamResolver(method, params, [o for _, o in others])
    impl = get_method(method)
    seed = int(params.get("seed", 0)) if isinstance(params.get("seed", 0), int) else 0

    import torch

    from .methods import TensorContext
    from .safetensors_io import torch_dtype

    cdt = torch_dtype(NAME_TO_ST[compute_name]) if compute_name else None
    n_base = 1 if base_input else 0

    def compute(name: str, tensors: list):
        odt = torch_dtype(out_dtypes[name])
        if not ref.tensors[name].is_float:
            return tensors[0]
        dt = cdt
        if dt is None:
            dt = tensors[0].dtype
            for t in tensors[1:]:
                dt = torch.promote_types(dt, t.dtype)
        xs = [t.to(dt) for t in tensors]
        del tensors[:]  # xs holds what the method needs; a converted input's original goes now
        glob, per = resolver.resolve(name, positions[name])
        # The inputs were read for this call alone: the method may overwrite them.
        ctx = TensorContext(name, compat, seed, scratch=True)
        out = impl.merge(xs[n_base:], xs[0] if n_base else None, per, glob, ctx)
        return out.to(odt)

    digest_cache = _DigestCache()
    known = [digest_cache.get(m.content_key) for m in inputs]
    if announce is not None:
        announce()
    work = WorkFolder(final, whole_dir=out_dir is None)
    tmp = work.path
    try:
        exact_threads = compat == "mergekit" and _reduces(method, params)
        saved_threads = torch.get_num_threads()
        workers = 1 if exact_threads else max(1, min(4, os.cpu_count() or 1))
        if not exact_threads:
            torch.set_num_threads(1)
        try:
            digests, stats = stream_tensors(
                tmp,
                names,
                inputs,
                compute,
                out_dtypes,
                shapes,
                [d is None for d in known],
                max_shard_size,
                workers=workers,
            )
        finally:
            torch.set_num_threads(saved_threads)
        digests = [k or d for k, d in zip(known, digests)]
        for m, d, k in zip(inputs, digests, known):
            if k is None and d:
                digest_cache.put(m.content_key, d)
        copy_side_files(ref.path, tmp, tokenizer_folder, out_name, bool(drop))
        seconds = time.perf_counter() - t_start
        roles = (["base"] if base_input else []) + [f"model {i + 1}" for i in range(len(other_inputs))]
        card_inputs = [{"role": r, "path": str(m.path), "sha256": d} for r, m, d in zip(roles, inputs, digests)]
        _write_card(tmp, recipe, card_inputs, seconds)
        (tmp / MARKER).write_text(
            json.dumps(
                {"key": key, "recipe": recipe, "inputs": card_inputs, "lmlang_format": FORMAT_VERSION},
                indent=2,
                default=str,
            )
        )
        work.release()
        published = _publish(tmp, final, replace=out_dir is not None)
    except BaseException:
        work.discard()
        raise
    stats.update(
        {"key": key, "tensors": len(names), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    )
    return MergeResult(final, time.perf_counter() - t_start, not published, stats)


def _tokenizer_folder(source, default: ModelInput, inputs: Sequence[ModelInput]) -> Path:
    if source in (None, "base"):
        return default.path
    if source == "first":
        return inputs[0].path
    if source == "union":
        raise MergeConfigError(
            "tokenizer_source 'union' (vocabulary surgery) is not supported; merge models that share a tokenizer"
        )
    p = Path(source).expanduser().resolve()
    if not p.is_dir():
        raise MergeError(f"tokenizer_source folder not found: {p}")
    return p
