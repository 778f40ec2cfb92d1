"""What a validator returns: structured problems, never text to re-parse.

A rule table (merge methods, decoders, training options, constraints)
judges values without knowing where they were written. It says *what* is
wrong and *which* option or model entry it is about; the layer that knows
the source (the checker, with spans) or the caller (the library, raising an
exception) decides how to show it. No layer reads another's message text.
"""

from __future__ import annotations

from .frozen import frozen


@frozen
class Problem:
    message: str  # what is wrong, without location ("option 'density' must be <= 1.0, got 1.5")
    hint: str = ""  # how to fix it ("did you mean 'density'?"), or ""
    code: str = ""  # a stable kind: "unknown-option", "bad-value", "unsatisfiable", ...
    severity: str = "error"  # "error" | "warning"
    option: str = ""  # the option it is about ("" for the block as a whole)
    model: int | None = None  # merges: 0-based position of the model entry it is about

    @property
    def text(self) -> str:
        """One line for an exception message: `model 2: ...; did you mean 'x'?`."""
        where = f"model {self.model + 1}: " if self.model is not None else ""
        return where + self.message + (f"; {self.hint}" if self.hint else "")
