"""Three seeded toy tasks for bench/specialize.py.

Each row is {"task", "x", "y"}: `x` is the whole user message (the task's
instruction and its input), `y` the exact answer. Training files hold
{"prompt": x, "completion": y}, the shape `train lora on` reads; a query
`user "{x}" assistant "[y]"` prompts exactly as training rendered the rows.

- sentiment: a short synthetic review -> "positive" | "negative"
- arithmetic: "What is 7 + 5?" -> "12" (one-digit operands, + and -, never
  negative: 135M parameters do not learn more from 100 rows)
- dates: "Rewrite the date in ISO format (YYYY-MM-DD): March 5, 2021"
  -> "2021-03-05" (two input spellings)

Train and held-out rows never share an `x`. Everything is seeded, so the
files (and so the adapters' cache keys) are identical across runs.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

TASKS = ("sentiment", "arithmetic", "dates")

POSITIVE = ["great", "wonderful", "excellent", "fantastic", "amazing", "delightful", "superb", "lovely",
            "brilliant", "enjoyable", "charming", "perfect"]
NEGATIVE = ["terrible", "awful", "horrible", "disappointing", "dreadful", "poor", "boring", "mediocre",
            "unpleasant", "bad", "bland", "annoying"]
NOUNS = ["movie", "food", "service", "hotel room", "book", "concert", "phone", "staff", "coffee", "game", "show",
         "restaurant", "album", "laptop", "tour", "pizza"]
TEMPLATES = ["The {noun} was {adj}.", "What a {adj} {noun}!", "I found the {noun} {adj}.",
             "Honestly, the {noun} is {adj}.", "Our {noun} turned out {adj}.", "My {noun} was {adj}, to be frank.",
             "A {adj} {noun}, all things considered.", "Everyone agreed the {noun} was {adj}."]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]

SENTIMENT_PROMPT = "Classify the sentiment of this review as positive or negative.\nReview: {text}"
ARITH_PROMPT = "What is {a} {op} {b}?"
DATE_PROMPT = "Rewrite the date in ISO format (YYYY-MM-DD): {date}"

# Each task's hole constraint in the generated queries (exact-match answers).
CONSTRAINTS = {
    "sentiment": 'y in ["positive", "negative"]',
    "arithmetic": "y is int and tokens(y) <= 4",
    "dates": 'y matches r"[0-9]{4}-[0-9]{2}-[0-9]{2}"',
}
# Descriptions for the classify router; regexes for the rules router.
DESCRIPTIONS = {
    "sentiment": "classifies the sentiment of a review as positive or negative",
    "arithmetic": "answers arithmetic questions like What is 7 + 5?",
    "dates": "rewrites a date in ISO format",
}
RULES = {
    "sentiment": r'matches r"(?i)sentiment|review"',
    "arithmetic": r'matches r"What is [0-9]+ *[-+] *[0-9]+"',
    "dates": r'matches r"(?i)ISO format|YYYY"',
}


def sentiment_row(rng: random.Random) -> dict:
    label = rng.choice(["positive", "negative"])
    adj = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
    text = rng.choice(TEMPLATES).format(noun=rng.choice(NOUNS), adj=adj)
    text = re.sub(r"\b([Aa]) ([aeiou])", r"\1n \2", text)
    text = text[0].upper() + text[1:]
    return {"task": "sentiment", "x": SENTIMENT_PROMPT.format(text=text), "y": label}


def arithmetic_row(rng: random.Random) -> dict:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    op = rng.choice("+-")
    if op == "-" and b > a:
        a, b = b, a
    return {"task": "arithmetic", "x": ARITH_PROMPT.format(a=a, op=op, b=b), "y": str(a + b if op == "+" else a - b)}


def dates_row(rng: random.Random) -> dict:
    y, m, d = rng.randint(1990, 2029), rng.randint(1, 12), rng.randint(1, 28)
    month = MONTHS[m - 1]
    date = f"{month} {d}, {y}" if rng.random() < 0.5 else f"{d} {month} {y}"
    return {"task": "dates", "x": DATE_PROMPT.format(date=date), "y": f"{y:04d}-{m:02d}-{d:02d}"}


MAKERS = {"sentiment": sentiment_row, "arithmetic": arithmetic_row, "dates": dates_row}


def make_split(task: str, n_train: int, n_test: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, held-out) rows of one task; no `x` appears in both."""
    rng = random.Random(f"{task}:{seed}")
    seen: set[str] = set()
    rows: list[dict] = []
    tries = 0
    while len(rows) < n_train + n_test:
        tries += 1
        if tries > 100 * (n_train + n_test):
            raise RuntimeError(f"cannot make {n_train + n_test} distinct {task} rows")
        row = MAKERS[task](rng)
        if row["x"] in seen:
            continue
        seen.add(row["x"])
        rows.append(row)
    if task == "sentiment":         # balanced labels in the held-out split
        pos = [r for r in rows if r["y"] == "positive"]
        neg = [r for r in rows if r["y"] == "negative"]
        k = min(n_test // 2, len(pos), len(neg))
        test = pos[:k] + neg[:n_test - k]
        test_ids = {id(r) for r in test}
        train = [r for r in rows if id(r) not in test_ids][:n_train]
        return train, test
    return rows[:n_train], rows[n_train:]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if not path.exists() or path.read_text(encoding="utf-8") != text:   # keep mtimes stable across runs
        path.write_text(text, encoding="utf-8")


def write_task_files(folder: Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, dict]:
    """Writes train_<task>.jsonl ({"prompt","completion"}) and test_<task>.jsonl
    ({"task","x","y"}) per task; returns {task: {"train": path, "test": path,
    "train_rows": [...], "test_rows": [...]}}."""
    out = {}
    for task in TASKS:
        train, test = make_split(task, n_train, n_test, seed)
        tp, hp = folder / f"train_{task}.jsonl", folder / f"test_{task}.jsonl"
        write_jsonl(tp, [{"prompt": r["x"], "completion": r["y"]} for r in train])
        write_jsonl(hp, test)
        out[task] = {"train": tp, "test": hp, "train_rows": train, "test_rows": test}
    return out
