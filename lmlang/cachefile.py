"""One on-disk cache entry: plain bytes behind a header that names its kind
and carries the body's sha256.

Why not pickle: anyone who can write to the cache folder would run code in
every later `lmlang check` or `run` that unpickles an entry. An entry here is
data that its reader parses itself (JSON, fixed-width integer arrays), so a
planted file can at worst be a wrong entry; the hash makes a torn, truncated
or damaged one a miss, and the caller rebuilds it. A hostile writer can still
forge a well-formed entry (the hash is not a signature): readers bound what a
forged entry can do (docs/security.md).

Layout: one header line, then the body.

    lmlang-cache <kind> <sha256 of body>\n<body>
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

MAGIC = b"lmlang-cache"
MAX_ENTRY_BYTES = 256 * 1024 * 1024  # nothing lmlang caches this way comes near it


def read(path: Path, kind: str) -> bytes | None:
    """The body of a valid entry of this kind; None when the file is missing,
    unreadable, of another kind, too large, or its hash does not match."""
    try:
        if path.stat().st_size > MAX_ENTRY_BYTES:
            return None
        raw = path.read_bytes()
    except (OSError, ValueError):
        return None
    header, sep, body = raw.partition(b"\n")
    if not sep:
        return None
    parts = header.split(b" ")
    if len(parts) != 3 or parts[0] != MAGIC or parts[1] != kind.encode():
        return None
    if hashlib.sha256(body).hexdigest().encode() != parts[2]:
        return None
    return body


def write(path: Path, kind: str, body: bytes) -> bool:
    """Write an entry atomically (a reader sees the old file or the new one,
    never half of one). False when the cache folder cannot be written: a
    cache is an optimisation, never a reason to fail."""
    header = b" ".join((MAGIC, kind.encode(), hashlib.sha256(body).hexdigest().encode()))
    # os.urandom, not uuid: importing uuid costs `lmlang check` ~5 ms
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(header + b"\n" + body)
        os.replace(tmp, path)
        return True
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        return False
