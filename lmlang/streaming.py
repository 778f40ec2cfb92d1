"""`lmlang run --stream` and the REPL on a terminal: each value printed as it
grows, token by token (issue #15).

The runtime calls `on_token(query, hole, piece)` for every piece of a hole's
text as it is decoded (sample(n: k), best_of and vote print their values when
they are chosen, all at once). The printer starts a line `query.hole: ` when
the value being written changes (calls of parallel rows interleave, each
piece under its own label) and ends the line when the run is done. It writes
to the stream it is given: the CLI gives stderr, so stdout keeps the emitted
values (and `--json` stays one JSON document).
"""

from __future__ import annotations

import threading
from typing import TextIO


class StreamPrinter:
    def __init__(self, out: TextIO):
        self.out = out
        self.current: tuple[str, str] | None = None
        self._lock = threading.Lock()  # calls on different models stream from their own threads

    def __call__(self, query: str, hole: str, piece: str) -> None:
        with self._lock:
            if self.current != (query, hole):
                if self.current is not None:
                    self.out.write("\n")
                self.out.write(f"{query}.{hole}: ")
                self.current = (query, hole)
            self.out.write(piece)
            self.out.flush()

    def close(self) -> None:
        """End the open line (if any)."""
        with self._lock:
            if self.current is not None:
                self.out.write("\n")
                self.out.flush()
                self.current = None
