"""Per-query trace records: what was asked, how it was decoded, what it cost."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class QueryTrace:
    query: str
    model: str
    prompt: str
    values: dict
    holes: list = field(default_factory=list)  # per hole: backend, compile s, generated, forced, ended_by
    forward_passes: int = 0
    tokens_generated: int = 0
    tokens_forced: int = 0
    wall_seconds: float = 0.0
    decoder: str = "argmax"
    expert: str | None = None
    row: int | None = None
    cached: bool = False  # answered from the result cache (nothing decoded)
    details: dict = field(default_factory=dict)  # vote: samples, votes; best_of: scores (runtime/samples.py)
    batch: dict = field(default_factory=dict)  # argmax/sample calls: calls in the batch, why (dispatch.py)

    def to_dict(self) -> dict:
        return asdict(self)


class Trace:
    """Collects records; optionally appends each as a JSON line as it comes.
    Safe to add to from several threads (calls on different models decode side by side)."""

    def __init__(self, path: str | Path | None = None):
        self.records: list[QueryTrace] = []
        self.path = Path(path) if path else None
        self._fh = open(self.path, "a", encoding="utf-8") if self.path else None
        self._lock = threading.Lock()

    def add(self, rec: QueryTrace) -> None:
        with self._lock:
            self.records.append(rec)
            if self._fh:
                self._fh.write(json.dumps(rec.to_dict(), ensure_ascii=False, default=str) + "\n")
                self._fh.flush()

    def close(self) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None
