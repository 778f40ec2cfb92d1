"""Training rows: the JSONL a `train ... on "FILE"` reads, checked row by
row (prompt and completion, or messages ending with the assistant's).

Both the trainer (models/training.py) and `lmlang check` (checker/models.py)
read rows here, so a bad row is the same error in both; this module is
small and torch-free so a check does not load the trainer's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataError


def read_rows(data_path: Path, data: bytes | None = None) -> list[tuple[int, dict]]:
    """(line number, row) for every non-blank line (lmlang.jsonl's contract:
    BOM skipped, blank lines not rows); DataError on the first bad one."""
    from ..jsonl import parse_jsonl

    data_path = Path(data_path)
    try:
        if data is None:
            data = data_path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"training data not found: {data_path}") from None
    rows = []
    for line in parse_jsonl(data):
        if line.value is None:
            raise DataError(
                f"{data_path}:{line.line}: {line.problem}", hint=SHAPE_HINT if line.code == "not-object" else ""
            )
        check_row(data_path, line.line, line.value)
        rows.append((line.line, line.value))
    if not rows:
        raise DataError(
            f"{data_path}: no training rows",
            hint='each line is {"prompt": ..., "completion": ...} or {"messages": [...]}',
        )
    return rows


SHAPE_HINT = 'each line is {"prompt": str, "completion": str} or {"messages": [{"role": str, "content": str}, ...]}'


def check_row(path: Path, line: int, row: Any) -> None:
    where = f"{path}:{line}"
    if "messages" in row:
        extra = set(row) & {"prompt", "completion"}
        if extra:
            raise DataError(f"{where}: a row has either messages or prompt/completion, not both", hint=SHAPE_HINT)
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: messages must be a non-empty list", hint=SHAPE_HINT)
        for i, message in enumerate(messages):
            if (
                not isinstance(message, dict)
                or not isinstance(message.get("role"), str)
                or not isinstance(message.get("content"), str)
            ):
                raise DataError(
                    f"{where}: messages[{i}] must be an object with string role and content", hint=SHAPE_HINT
                )
        if messages[-1]["role"] != "assistant":
            raise DataError(
                f"{where}: the last message must be the assistant's (the loss is computed on it), got role {messages[-1]['role']!r}"
            )
        if not messages[-1]["content"]:
            raise DataError(f"{where}: the last assistant message is empty")
        return
    for key in ("prompt", "completion"):
        if key not in row:
            raise DataError(f"{where}: missing key {key!r}", hint=SHAPE_HINT)
        if not isinstance(row[key], str):
            raise DataError(f"{where}: {key} must be a string, got {type(row[key]).__name__}", hint=SHAPE_HINT)
    if not row["completion"]:
        raise DataError(f"{where}: empty completion")
