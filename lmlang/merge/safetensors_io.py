"""Reading and writing safetensors one tensor at a time.

Reading parses the headers (what the checks look at, no weights touched) and
then `preadv`s each tensor straight into a fresh torch buffer: one copy from
the page cache, no mmap whose touched pages would stay resident and inflate
the process's RSS to the size of every input.

Writing knows every output tensor's name, dtype and shape up front (the
inputs' headers tell), so each shard's header is written first and tensors
land at their offsets as they are computed: memory stays at one tensor.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import MergeError

DTYPE_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
NAME_TO_ST = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


def torch_dtype(st_dtype: str):
    import torch

    return {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I64": torch.int64,
        "I32": torch.int32,
        "I16": torch.int16,
        "I8": torch.int8,
        "U8": torch.uint8,
        "BOOL": torch.bool,
        "F8_E4M3": torch.float8_e4m3fn,
        "F8_E5M2": torch.float8_e5m2,
        "U16": torch.uint16,
        "U32": torch.uint32,
        "U64": torch.uint64,
    }[st_dtype]


@dataclass(frozen=True)
class TensorMeta:
    name: str
    file: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offset
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


def read_header(path: Path) -> tuple[dict, bytes]:
    """The header of a safetensors file, checked to describe the file: every
    entry a known dtype, a shape and offsets whose size matches it, the
    tensors covering the data exactly (a truncated or padded file fails
    here, by name, instead of deep inside a loader)."""
    header, raw, problem = _header(Path(path))
    if problem:
        raise MergeError(problem)
    return header, raw


def safetensors_problem(path: Path) -> str:
    """What is wrong with a safetensors file ("" if nothing), from its header
    and size alone: what `read_header` checks, as a message."""
    return _header(Path(path))[2]


def _header(path: Path) -> tuple[dict, bytes, str]:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            raw = f.read(8)
            if len(raw) != 8:
                return {}, b"", f"{path}: not a safetensors file ({'empty' if not raw else 'too short'})"
            (n,) = struct.unpack("<Q", raw)
            if n > 100_000_000 or 8 + n > size:
                return (
                    {},
                    b"",
                    f"{path}: not a safetensors file, or truncated (header of {n} bytes in a {size}-byte file)",
                )
            header = f.read(n)
        parsed = json.loads(header)
    except OSError as e:
        return {}, b"", f"cannot read {path}: {e.strerror or e}"
    except (ValueError, RecursionError) as e:
        return {}, b"", f"{path}: corrupt safetensors header (not JSON: {e})"
    problem = _entries_problem(parsed, size - 8 - n)
    return (parsed, header, f"{path}: corrupt safetensors header ({problem})" if problem else "")


def _entries_problem(header, data_size: int) -> str:
    if not isinstance(header, dict):
        return "not a JSON object"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            return f"entry {name!r} is not an object"
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            return f"tensor {name}: unknown dtype {dtype!r}"
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            return f"tensor {name}: bad shape {shape!r}"
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            return f"tensor {name}: bad data_offsets {offsets!r}"
        if offsets[1] - offsets[0] != DTYPE_SIZES[dtype] * _numel(shape):
            return f"tensor {name}: {offsets[1] - offsets[0]} bytes for a {dtype} tensor of shape {shape}"
        end = max(end, offsets[1])
    if end > data_size:
        return f"the tensors need {end} bytes of data, the file holds {data_size}: truncated"
    if end < data_size:
        return f"{data_size - end} bytes of data that no tensor covers"
    return ""


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of an HF model folder, honouring a sharded index."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise MergeError(f"{index}: unreadable shard index: {e}") from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (folder / f).exists()]
        if missing:
            raise MergeError(f"{folder}: shard index names missing files: {', '.join(missing[:3])}")
        return [folder / f for f in files]
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    if not found:
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
            raise MergeError(
                f"{folder}: only pickle weights (.bin); lmlang merges safetensors folders "
                "(re-save with save_pretrained(safe_serialization=True))"
            )
        raise MergeError(f"{folder}: no safetensors weights found")
    return found


def scan_tensors(files: Iterable[Path]) -> tuple[dict[str, TensorMeta], str]:
    """name -> TensorMeta over all shards, plus a hash of the headers."""
    out: dict[str, TensorMeta] = {}
    h = hashlib.sha256()
    for path in files:
        header, raw = read_header(path)
        h.update(raw)
        base = 8 + len(raw)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            b, e = info["data_offsets"]
            if name in out:
                raise MergeError(f"tensor {name} appears in two shards ({out[name].file}, {path})")
            out[name] = TensorMeta(name, str(path), info["dtype"], tuple(info["shape"]), base + b, base + e)
    return out, h.hexdigest()


class TensorReader:
    """preadv-based reads; one file descriptor per shard, thread-safe (no seek)."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def _fd(self, file: str) -> int:
        fd = self._fds.get(file)
        if fd is None:
            fd = self._fds[file] = os.open(file, os.O_RDONLY)
        return fd

    def read(self, meta: TensorMeta, digest: bool = False):
        import torch

        buf = torch.empty(meta.nbytes, dtype=torch.uint8)
        if meta.nbytes:
            view = memoryview(buf.numpy())  # type: ignore[arg-type]  # ndarray is a buffer (numpy types __buffer__ for 3.12+ only)
            fd = self._fd(meta.file)
            done = 0
            while done < meta.nbytes:
                n = os.preadv(fd, [view[done:]], meta.begin + done)
                if n <= 0:
                    raise MergeError(f"{meta.file}: truncated while reading {meta.name}")
                done += n
        sha = hashlib.sha256(memoryview(buf.numpy())).hexdigest() if digest else None  # type: ignore[arg-type]  # as above
        tensor = (
            buf.view(torch_dtype(meta.dtype)).reshape(meta.shape)
            if meta.nbytes
            else torch.empty(meta.shape, dtype=torch_dtype(meta.dtype))
        )
        return tensor, sha

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class ShardWriter:
    """Writes a planned list of tensors into safetensors shards, in any order."""

    def __init__(
        self,
        folder: Path,
        plan: list[tuple[str, str, tuple[int, ...]]],
        max_shard_bytes: int = 2 << 30,
        prefix: str = "model",
        metadata: dict | None = None,
    ):
        self.folder = folder
        shards: list[list[tuple[str, str, tuple[int, ...]]]] = [[]]
        size = 0
        for entry in plan:
            nbytes = DTYPE_SIZES[entry[1]] * _numel(entry[2])
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(entry)
            size += nbytes
        n = len(shards)
        self.files: list[str] = (
            [f"{prefix}.safetensors"] if n == 1 else [f"{prefix}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        self.where: dict[str, tuple[int, int, int]] = {}  # name -> (fd, offset, nbytes)
        self.dtypes: dict[str, str] = {}
        self.fds: list[int] = []
        self.total = 0
        for fname, entries in zip(self.files, shards):
            header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
            off = 0
            for name, dt, shape in entries:
                nb = DTYPE_SIZES[dt] * _numel(shape)
                header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + nb]}
                off += nb
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)
            fd = os.open(folder / fname, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.pwrite(fd, struct.pack("<Q", len(raw)) + raw, 0)
            os.ftruncate(fd, 8 + len(raw) + off)
            self.fds.append(fd)
            for name, dt, shape in entries:
                b, e = header[name]["data_offsets"]
                self.where[name] = (fd, 8 + len(raw) + b, e - b)
                self.dtypes[name] = dt
            self.total += off
        self.weight_map = {name: fname for fname, entries in zip(self.files, shards) for name, _, _ in entries}

    def write(self, name: str, tensor) -> None:
        fd, off, nbytes = self.where[name]
        t = tensor.contiguous()
        if t.numel() * t.element_size() != nbytes:
            raise MergeError(f"internal: {name} has {t.numel() * t.element_size()} bytes, planned {nbytes}")
        if nbytes == 0:
            return
        import torch

        view = memoryview(t.reshape(-1).view(torch.uint8).numpy())
        done = 0
        while done < nbytes:
            done += os.pwrite(fd, view[done:], off + done)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        if len(self.files) > 1:
            index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(self.weight_map.items()))}
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
