"""`select K from POOL like TARGET by gzip|embedding`: the K pool rows
closest to a target set (ZIP-FIT, Bhattacharyya et al. 2024, for gzip).

- gzip: a pool row's distance to the target set is its normalized
  compression distance to each target row, averaged:
  NCD(x, y) = (C(xy) - min(C(x), C(y))) / max(C(x), C(y)), C = gzip's
  compressed length. Pure Python, deterministic, no model.
- embedding: 1 - cosine between the row's mean-pooled last hidden state on
  the script's base model and the target rows' centroid (runtime/routing.py's
  embedding, so routers and selection embed alike).

The K smallest distances win, ties broken by pool order; the chosen rows
keep their pool order. The choice is cached under LMLANG_HOME/select, keyed
by the method, K, the texts of both sets and (embedding) the model's
content, so a second run reads it instead of compressing or embedding again.
"""

from __future__ import annotations

import gzip
import hashlib
import json

from .. import cachefile
from ..errors import LmlangRuntimeError

CACHE_KIND = "select-v1"


def row_text(row: dict) -> str:
    """The text a row is compared by: its `text` column when it has one,
    else every value in column order (strings as written, other values as
    JSON), one per line; a chat row's messages count by their contents."""
    if isinstance(row.get("text"), str):
        return row["text"]
    parts = []
    for v in row.values():
        if isinstance(v, str):
            parts.append(v)
        elif isinstance(v, list) and all(isinstance(m, dict) for m in v):
            parts.extend(str(m.get("content", "")) for m in v)
        else:
            parts.append(json.dumps(v, ensure_ascii=False, sort_keys=True))
    return "\n".join(parts)


def _clen(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def gzip_distances(pool: list[str], target: list[str]) -> list[float]:
    """Each pool text's mean NCD to the target texts."""
    tb = [t.encode("utf-8", "surrogatepass") for t in target]
    tc = [_clen(t) for t in tb]
    out = []
    for text in pool:
        x = text.encode("utf-8", "surrogatepass")
        cx = _clen(x)
        total = 0.0
        for y, cy in zip(tb, tc):
            total += (_clen(x + b" " + y) - min(cx, cy)) / max(cx, cy, 1)
        out.append(total / max(len(tb), 1))
    return out


def embedding_distances(lm, pool: list[str], target: list[str]) -> list[float]:
    """1 - cosine of each pool text's embedding to the target centroid."""
    import torch

    from ..runtime.routing import embed_hidden

    centroid = torch.nn.functional.normalize(embed_hidden(lm, target).mean(0), dim=0)
    sims = embed_hidden(lm, pool) @ centroid
    return [1.0 - float(s) for s in sims]


def pick(distances: list[float], k: int) -> list[int]:
    """The indices of the k smallest distances (ties: pool order), in pool order."""
    order = sorted(range(len(distances)), key=lambda i: (distances[i], i))
    return sorted(order[:k])


def select_rows(program, method: str, k: int, pool: list[dict], target: list[dict]) -> list[dict]:
    if not target:
        raise LmlangRuntimeError("select: the target set has no rows")
    pool_texts = [row_text(r) for r in pool]
    target_texts = [row_text(r) for r in target]
    model_key, lm = "", None
    if method == "embedding":
        lm, model_key = _base_lm(program)
    key = _cache_key(method, k, pool_texts, target_texts, model_key)
    path = _cache_path(key)
    cached = cachefile.read(path, CACHE_KIND)
    if cached is not None:
        chosen = json.loads(cached)
        if isinstance(chosen, list) and all(isinstance(i, int) and 0 <= i < len(pool) for i in chosen):
            return [pool[i] for i in chosen]
    if method == "gzip":
        dist = gzip_distances(pool_texts, target_texts)
    elif method == "embedding":
        dist = embedding_distances(lm, pool_texts, target_texts)
    else:
        raise LmlangRuntimeError(f"select: unknown method '{method}'")
    chosen = pick(dist, k)
    cachefile.write(path, CACHE_KIND, json.dumps(chosen).encode())
    return [pool[i] for i in chosen]


def _base_lm(program):
    """The script's first declared model (else the bundled default), as the
    plain model under it, with its content key for the cache."""
    from ..runtime.result_cache import folder_key

    checked, compiled = program.frontend.checked, program.frontend.compiled
    names = [n for n in checked.models if n in compiled.names]
    execu = program._executor()
    nid = compiled.names[names[0]] if names else _default_node(compiled)
    lm = execu.base_lm(nid)
    value = execu.builder.value(nid)
    folder = getattr(value, "path", None) or getattr(value, "base", "")
    return lm, json.dumps(folder_key(folder))


def _default_node(compiled) -> str:
    from ..graph import ModelSpec

    for nid in sorted(compiled.nodes):
        spec = compiled.spec(nid)
        if isinstance(spec, ModelSpec) and spec.source == "default":
            return nid
    raise LmlangRuntimeError(
        "select by embedding needs a model to embed with", hint="declare one: model base = default"
    )


def _cache_key(method: str, k: int, pool: list[str], target: list[str], model_key: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_KIND, method, k, model_key]).encode())
    for group in (pool, target):
        h.update(b"\1")
        for t in group:
            h.update(hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest())
    return h.hexdigest()


def _cache_path(key: str):
    from ..home import cache_dir

    return cache_dir("select") / f"{key}.json"
