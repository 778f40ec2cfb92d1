"""A tokenizer's vocabulary as raw bytes: what every mask backend needs.

Backends disagree on how to read a Hugging Face tokenizer (and transformers 5
dropped `bytes_to_unicode`), so lmlang reads it once, itself, into
`token_bytes[i]` = the exact bytes token i contributes to the text, and feeds
every backend from that list. Special tokens (other than EOS) are never part of
a constrained value: they get empty bytes and are always masked.

The prepared vocabulary is cached on disk (cache_dir("constraints")) under the
tokenizer's content hash, so a new process pays a hash and a read, not a
walk over the vocabulary. The entry is plain data (integer arrays and the
tokens' bytes behind a sha256, lmlang/cachefile.py), never a pickle: a
planted file is a cache miss, not code that runs. Whoever owns the tokenizer keeps its TokenizerInfo
(models/loader.py's LoadedModel builds it once per loaded model). What is
derived from the vocabulary (backend tokenizer objects, the bytes -> token
table, token-healing pairs, stop-crossing masks) is built lazily and kept on
the TokenizerInfo, in fields declared below.

Torch-free (numpy only).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Callable

import numpy as np

from .. import cachefile

_FORMAT = 2  # bump when the cached layout changes (2: data file, not pickle)
_KIND = "vocab"


def _byte_decoder() -> dict[str, int]:
    """The GPT-2 byte <-> printable-unicode table, inverted (unicode char -> byte)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _kinds(component: Any) -> list[str]:
    if not isinstance(component, dict):
        return []
    if component.get("type") == "Sequence":
        out: list[str] = []
        for key in ("decoders", "pretokenizers", "normalizers"):
            for sub in component.get(key, []) or []:
                out.extend(_kinds(sub))
        return out
    return [str(component.get("type"))]


def _char_lengths(token_bytes: list[bytes]) -> np.ndarray:
    """Code points each token adds to the text: its bytes that are not UTF-8
    continuation bytes. Exact once the text is complete, even when a token
    holds half a character."""
    out = np.zeros(len(token_bytes), dtype=np.int32)
    for i, b in enumerate(token_bytes):
        if b:
            out[i] = sum(1 for x in b if (x & 0xC0) != 0x80)
    return out


class TokenizerInfo:
    """Everything the mask backends need from one tokenizer.

    `token_bytes[i]` is b"" for special tokens (never allowed in a value) and for
    EOS (which ends the value). `vocab_size` is the tokenizer's size; the model's
    logits may be wider (padding): `Guide.apply` masks the extra columns."""

    def __init__(
        self,
        token_bytes: list[bytes],
        eos_token_id: int,
        special_ids: list[int] | tuple[int, ...] = (),
        *,
        hash: str | None = None,
        encode: Callable[[str], list[int]] | None = None,
        char_len: np.ndarray | None = None,
    ):
        self.token_bytes = list(token_bytes)
        self.vocab_size = len(self.token_bytes)
        self.eos_token_id = int(eos_token_id)
        self.special_ids = tuple(sorted(set(int(i) for i in special_ids) | {self.eos_token_id}))
        self.token_bytes[self.eos_token_id] = b""
        for i in self.special_ids:
            self.token_bytes[i] = b""
        if hash is None:
            h = hashlib.sha256()
            for b in self.token_bytes:
                h.update(len(b).to_bytes(2, "little"))
                h.update(b)
            h.update(str(self.special_ids).encode())
            hash = h.hexdigest()[:24]
        self.hash = hash
        self._encode = encode
        self.char_len = (
            char_len if char_len is not None and len(char_len) == self.vocab_size else _char_lengths(self.token_bytes)
        )
        # Built on first use, from the vocabulary alone:
        self._backend_objects: dict[str, Any] = {}  # backend name -> its tokenizer object
        self._single_byte: dict[int, int] | None = None
        self._by_bytes: dict[bytes, int] | None = None
        self._heal: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}  # seam text -> heal_pairs
        self._heal_split: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # seam text -> heal_splits
        self._crossing: dict[tuple[bytes, int], np.ndarray] = {}  # (stop, k) -> stop_crossing

    # ------------------------------------------------------------------ build
    @classmethod
    def from_hf(cls, tokenizer: Any) -> "TokenizerInfo":
        """From a transformers fast tokenizer. Cached on disk by content hash;
        the caller keeps the result (one per loaded model)."""
        backend = tokenizer.backend_tokenizer
        spec = backend.to_str()
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no EOS token; constrained decoding needs one to end a value")
        n = len(tokenizer)
        digest = hashlib.sha256(f"{_FORMAT}|{n}|{eos}|".encode() + spec.encode()).hexdigest()[:24]

        def encode(text: str) -> list[int]:
            # A value never holds a special token (their bytes are empty and
            # masked), so text that spells one is text: split it.
            return list(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))

        from ..home import cache_dir

        path = cache_dir("constraints") / f"vocab-{digest}.bin"
        data = _read_cached(path, n)
        if data is None:
            data = _read_vocab(json.loads(spec), tokenizer, n)
            probe = cls(data["token_bytes"], eos, data["special_ids"], hash=digest)
            data["char_len"] = probe.char_len
            cachefile.write(path, _KIND, _cache_body(data))
        return cls(
            data["token_bytes"], eos, data["special_ids"], hash=digest, encode=encode, char_len=data.get("char_len")
        )

    # ------------------------------------------------------------------ helpers
    def encode(self, text: str) -> list[int]:
        """Canonical tokenization of `text` (no special tokens)."""
        if self._encode is not None:
            return self._encode(text)
        return self.greedy_encode(text.encode("utf-8"))

    def greedy_encode(self, data: bytes) -> list[int]:
        """Longest-match tokenization; used only without an HF tokenizer (tests)."""
        table = self.token_by_bytes()
        out: list[int] = []
        i = 0
        maxlen = max(len(b) for b in self.token_bytes)
        while i < len(data):
            for ln in range(min(maxlen, len(data) - i), 0, -1):
                tid = table.get(data[i : i + ln])
                if tid is not None:
                    out.append(tid)
                    i += ln
                    break
            else:
                raise ValueError(f"no token for byte {data[i]:#x}")
        return out

    def token_by_bytes(self) -> dict[bytes, int]:
        """bytes -> the first token whose bytes are exactly those (built once)."""
        if self._by_bytes is None:
            t: dict[bytes, int] = {}
            for i, b in enumerate(self.token_bytes):
                if b and b not in t:
                    t[b] = i
            self._by_bytes = t
        return self._by_bytes

    def heal_pairs(self, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Token healing (constraints/hole.py): (healed, rest), int64 arrays,
        for every token that is `prefix` followed by exactly one other token's
        bytes, and that other token; None when no token is. Built once per prefix."""
        if prefix not in self._heal:
            pb = prefix.encode()
            by_bytes = self.token_by_bytes()
            healed, rest = [], []
            for i, b in enumerate(self.token_bytes):
                if len(b) > len(pb) and b.startswith(pb):
                    r = by_bytes.get(b[len(pb) :])
                    if r is not None:
                        healed.append(i)
                        rest.append(r)
            self._heal[prefix] = (np.array(healed, dtype=np.int64), np.array(rest, dtype=np.int64)) if healed else None
        return self._heal[prefix]

    def heal_splits(self, prefix: str) -> tuple[np.ndarray, np.ndarray]:
        """Token healing's other half: (healed, first_byte), int64 arrays, for
        every token that is `prefix` followed by text that is NOT one token
        (" multiplication" when "multiplication" is "multi" + "plication"),
        and the single-byte token of that text's first byte (a byte-level
        guide that allows the text allows its first byte: the mask's cheap
        superset; the whole text is checked when the token is picked).
        Empty arrays when no token is. Built once per prefix."""
        if prefix not in self._heal_split:
            pb = prefix.encode()
            by_bytes = self.token_by_bytes()
            single = self.single_byte_tokens()
            healed, first = [], []
            for i, b in enumerate(self.token_bytes):
                if len(b) > len(pb) and b.startswith(pb):
                    rest = b[len(pb) :]
                    if rest not in by_bytes and rest[0] in single and _is_utf8(rest):
                        healed.append(i)
                        first.append(single[rest[0]])
            self._heal_split[prefix] = (np.array(healed, dtype=np.int64), np.array(first, dtype=np.int64))
        return self._heal_split[prefix]

    def stop_crossing(self, stop: bytes, k: int) -> np.ndarray:
        """Tokens that would complete `stop` before their own end, when the
        text ends with stop[:k] (boolean [vocab_size]). Built once per (stop, k)."""
        arr = self._crossing.get((stop, k))
        if arr is None:
            prefix = stop[:k]
            n = len(stop)
            arr = np.zeros(self.vocab_size, dtype=bool)
            for i, b in enumerate(self.token_bytes):
                if b:
                    s = prefix + b
                    p = s.find(stop)
                    if p >= 0 and p + n < len(s):
                        arr[i] = True
            self._crossing[(stop, k)] = arr
        return arr

    def single_byte_tokens(self) -> dict[int, int]:
        """byte value -> a token that is exactly that byte (byte-level vocabularies have all 256)."""
        if self._single_byte is None:
            self._single_byte = {}
            for i, b in enumerate(self.token_bytes):
                if len(b) == 1 and b[0] not in self._single_byte:
                    self._single_byte[b[0]] = i
        return self._single_byte

    def backend_object(self, name: str, build: Callable[[], Any]) -> Any:
        obj = self._backend_objects.get(name)
        if obj is None:
            obj = build()
            self._backend_objects[name] = obj
        return obj

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.token_bytes[i] for i in ids).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"TokenizerInfo(vocab_size={self.vocab_size}, eos={self.eos_token_id}, hash={self.hash})"


def _read_vocab(spec: dict, tokenizer: Any, n: int) -> dict:
    """Raw bytes of every token, read from the tokenizer.json model."""
    model = spec.get("model", {})
    decoder_kinds = _kinds(spec.get("decoder")) + _kinds(spec.get("pre_tokenizer"))
    byte_level = "ByteLevel" in decoder_kinds
    metaspace = "Metaspace" in decoder_kinds or "Replace" in decoder_kinds or model.get("byte_fallback", False)
    vocab: dict[str, int] = dict(model.get("vocab", {})) if isinstance(model.get("vocab"), dict) else {}
    if isinstance(model.get("vocab"), list):  # Unigram: [[piece, score], ...]
        vocab = {piece: i for i, (piece, _score) in enumerate(model["vocab"])}
    token_bytes: list[bytes] = [b""] * n
    dec = _byte_decoder()
    for text, i in vocab.items():
        if i >= n:
            continue
        if byte_level:
            try:
                token_bytes[i] = bytes(dec[c] for c in text)
            except KeyError:
                token_bytes[i] = text.encode("utf-8")
        elif metaspace:
            m = _BYTE_FALLBACK.match(text)
            token_bytes[i] = bytes([int(m.group(1), 16)]) if m else text.replace("\u2581", " ").encode("utf-8")
        else:
            token_bytes[i] = tokenizer.convert_tokens_to_string([text]).encode("utf-8")
    special: list[int] = []
    for added in spec.get("added_tokens", []):
        i = added["id"]
        if i >= n:
            continue
        if added.get("special", False):
            special.append(i)
            token_bytes[i] = b""
        else:
            token_bytes[i] = added["content"].encode("utf-8")
    for i in getattr(tokenizer, "all_special_ids", []) or []:
        if i < n and i not in special:
            special.append(i)
    # ids the model file lacks (holes) can never be produced
    for i, b in enumerate(token_bytes):
        if not b and i not in special:
            special.append(i)
    return {"token_bytes": token_bytes, "special_ids": sorted(special)}


# ---------------------------------------------------------------- the disk cache
# Body: a JSON header line {"n", "special_ids"}, then three little-endian
# arrays back to back: offsets (uint32, n + 1) into the concatenated token
# bytes, char_len (int32, n), and the bytes themselves.


def _cache_body(data: dict) -> bytes:
    token_bytes = data["token_bytes"]
    offsets = np.zeros(len(token_bytes) + 1, dtype="<u4")
    np.cumsum([len(b) for b in token_bytes], out=offsets[1:])
    header = json.dumps({"n": len(token_bytes), "special_ids": [int(i) for i in data["special_ids"]]})
    return (
        header.encode()
        + b"\n"
        + offsets.tobytes()
        + np.asarray(data["char_len"], dtype="<i4").tobytes()
        + b"".join(token_bytes)
    )


def _read_cached(path, n: int) -> dict | None:
    """The cached vocabulary of an n-token tokenizer, or None when the entry
    is missing, damaged or does not describe n tokens (then it is rebuilt)."""
    body = cachefile.read(path, _KIND)
    if body is None:
        return None
    try:
        line, _, rest = body.partition(b"\n")
        header = json.loads(line)
        if header.get("n") != n:
            return None
        special = [int(i) for i in header["special_ids"]]
        offsets = np.frombuffer(rest, dtype="<u4", count=n + 1)
        char_len = np.frombuffer(rest, dtype="<i4", count=n, offset=4 * (n + 1)).astype(np.int32)
        blob = rest[8 * n + 4 :]
        if offsets[0] != 0 or int(offsets[-1]) != len(blob) or np.any(np.diff(offsets.astype(np.int64)) < 0):
            return None
        if any(not 0 <= i < n for i in special):
            return None
        bounds = offsets.tolist()
        token_bytes = [blob[bounds[i] : bounds[i + 1]] for i in range(n)]
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return {"token_bytes": token_bytes, "special_ids": special, "char_len": char_len}


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
