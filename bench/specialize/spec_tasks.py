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

EXTRA_TASKS (the adapter-pool and dynamic-composition bench, behind
bench/specialize.py --composition; the three above and their seeds are
unchanged, docs/specialize.md's table depends on them):

- reverse: "Reverse the letters of the word: tamino" -> "onimat" (seeded
  pseudo-words of 2-3 consonant-vowel syllables)
- capitals: "What is the capital of France?" -> "Paris" (three phrasings)
- plural: "Give the plural of the noun: box" -> "boxes" (regular rules and
  a few irregular nouns, two phrasings)
- antonyms: "Give the opposite of the word: hot" -> "cold" (two phrasings)
- count_letters: "How many times does the letter a appear in banana?" -> "3"
- units: "Convert 7 km to m." -> "7000" (six unit pairs, integer factors)
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

TASKS = ("sentiment", "arithmetic", "dates")
EXTRA_TASKS = ("reverse", "capitals", "plural", "antonyms", "count_letters", "units")
ALL_TASKS = TASKS + EXTRA_TASKS

POSITIVE = [
    "great",
    "wonderful",
    "excellent",
    "fantastic",
    "amazing",
    "delightful",
    "superb",
    "lovely",
    "brilliant",
    "enjoyable",
    "charming",
    "perfect",
]
NEGATIVE = [
    "terrible",
    "awful",
    "horrible",
    "disappointing",
    "dreadful",
    "poor",
    "boring",
    "mediocre",
    "unpleasant",
    "bad",
    "bland",
    "annoying",
]
NOUNS = [
    "movie",
    "food",
    "service",
    "hotel room",
    "book",
    "concert",
    "phone",
    "staff",
    "coffee",
    "game",
    "show",
    "restaurant",
    "album",
    "laptop",
    "tour",
    "pizza",
]
TEMPLATES = [
    "The {noun} was {adj}.",
    "What a {adj} {noun}!",
    "I found the {noun} {adj}.",
    "Honestly, the {noun} is {adj}.",
    "Our {noun} turned out {adj}.",
    "My {noun} was {adj}, to be frank.",
    "A {adj} {noun}, all things considered.",
    "Everyone agreed the {noun} was {adj}.",
]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]

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

# ---------------------------------------------------------------- extra tasks (--composition)

CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Portugal": "Lisbon",
    "Japan": "Tokyo",
    "China": "Beijing",
    "India": "New Delhi",
    "Russia": "Moscow",
    "Egypt": "Cairo",
    "Canada": "Ottawa",
    "Mexico": "Mexico City",
    "Brazil": "Brasilia",
    "Argentina": "Buenos Aires",
    "Peru": "Lima",
    "Chile": "Santiago",
    "Kenya": "Nairobi",
    "Greece": "Athens",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Finland": "Helsinki",
    "Denmark": "Copenhagen",
    "Poland": "Warsaw",
    "Austria": "Vienna",
    "Hungary": "Budapest",
    "Ireland": "Dublin",
    "Belgium": "Brussels",
    "Netherlands": "Amsterdam",
    "Turkey": "Ankara",
    "Iran": "Tehran",
    "Iraq": "Baghdad",
    "Thailand": "Bangkok",
    "Vietnam": "Hanoi",
    "Indonesia": "Jakarta",
    "Philippines": "Manila",
    "South Korea": "Seoul",
    "Australia": "Canberra",
    "New Zealand": "Wellington",
    "Cuba": "Havana",
    "Colombia": "Bogota",
    "Venezuela": "Caracas",
    "Morocco": "Rabat",
    "Nigeria": "Abuja",
    "Ethiopia": "Addis Ababa",
    "Ukraine": "Kyiv",
    "Czechia": "Prague",
    "Romania": "Bucharest",
    "Switzerland": "Bern",
    "Pakistan": "Islamabad",
    "Saudi Arabia": "Riyadh",
}
CAPITAL_PROMPTS = ["What is the capital of {c}?", "Name the capital city of {c}.", "Which city is the capital of {c}?"]
NOUN_WORDS = [
    "cat",
    "dog",
    "box",
    "bus",
    "church",
    "dish",
    "city",
    "baby",
    "day",
    "key",
    "tree",
    "car",
    "book",
    "fox",
    "glass",
    "brush",
    "lady",
    "boy",
    "toy",
    "house",
    "lamp",
    "pen",
    "cup",
    "watch",
    "class",
    "story",
    "party",
    "bird",
    "chair",
    "table",
    "match",
    "kiss",
    "berry",
    "valley",
    "horse",
    "river",
    "apple",
    "window",
    "pencil",
    "beach",
    "wish",
    "tax",
    "army",
    "monkey",
    "road",
    "song",
    "flower",
    "garden",
    "bench",
    "fly",
    "field",
    "guess",
    "door",
    "ship",
    "cloud",
    "hill",
    "lake",
    "star",
    "bridge",
    "plant",
    "coin",
    "boat",
    "farm",
    "sky",
    "penny",
    "inch",
    "dress",
    "bag",
    "hat",
    "shoe",
]
IRREGULAR = {
    "child": "children",
    "man": "men",
    "woman": "women",
    "mouse": "mice",
    "foot": "feet",
    "tooth": "teeth",
    "goose": "geese",
    "person": "people",
    "sheep": "sheep",
    "fish": "fish",
}
PLURAL_PROMPTS = ["Give the plural of the noun: {n}", "Write the plural form of {n}."]
ANTONYM_PAIRS = [
    ("hot", "cold"),
    ("big", "small"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("up", "down"),
    ("open", "closed"),
    ("light", "dark"),
    ("early", "late"),
    ("rich", "poor"),
    ("strong", "weak"),
    ("young", "old"),
    ("full", "empty"),
    ("hard", "soft"),
    ("wet", "dry"),
    ("loud", "quiet"),
    ("high", "low"),
    ("long", "short"),
    ("thick", "thin"),
    ("clean", "dirty"),
    ("true", "false"),
    ("left", "right"),
    ("first", "last"),
    ("inside", "outside"),
    ("win", "lose"),
    ("buy", "sell"),
    ("push", "pull"),
    ("give", "take"),
    ("begin", "end"),
    ("day", "night"),
    ("north", "south"),
    ("east", "west"),
    ("above", "below"),
    ("cheap", "expensive"),
    ("safe", "dangerous"),
    ("sweet", "sour"),
    ("near", "far"),
    ("love", "hate"),
]
ANTONYM_PROMPTS = ["Give the opposite of the word: {w}", "What is the antonym of {w}?"]
UNITS = [
    ("km", "m", 1000),
    ("m", "cm", 100),
    ("kg", "g", 1000),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("liters", "ml", 1000),
]
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]

REVERSE_PROMPT = "Reverse the letters of the word: {w}"
COUNT_PROMPT = "How many times does the letter {c} appear in {w}?"
UNITS_PROMPT = "Convert {n} {a} to {b}."


def plural(noun: str) -> str:
    if noun in IRREGULAR:
        return IRREGULAR[noun]
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def antonym_lookup() -> dict[str, str]:
    out = {}
    for a, b in ANTONYM_PAIRS:
        out.setdefault(a, b)
        out.setdefault(b, a)
    return out


def reverse_row(rng: random.Random) -> dict:
    w = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))
    return {"task": "reverse", "x": REVERSE_PROMPT.format(w=w), "y": w[::-1]}


def capitals_row(rng: random.Random) -> dict:
    country = rng.choice(sorted(CAPITALS))
    return {"task": "capitals", "x": rng.choice(CAPITAL_PROMPTS).format(c=country), "y": CAPITALS[country]}


def plural_row(rng: random.Random) -> dict:
    noun = rng.choice(NOUN_WORDS + sorted(IRREGULAR))
    return {"task": "plural", "x": rng.choice(PLURAL_PROMPTS).format(n=noun), "y": plural(noun)}


def antonyms_row(rng: random.Random) -> dict:
    table = antonym_lookup()
    word = rng.choice(sorted(table))
    return {"task": "antonyms", "x": rng.choice(ANTONYM_PROMPTS).format(w=word), "y": table[word]}


def count_letters_row(rng: random.Random) -> dict:
    w = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
    c = rng.choice(sorted(set(w)) + ["a", "e"])
    return {"task": "count_letters", "x": COUNT_PROMPT.format(c=c, w=w), "y": str(w.count(c))}


def units_row(rng: random.Random) -> dict:
    a, b, factor = rng.choice(UNITS)
    n = rng.randint(1, 30)
    return {"task": "units", "x": UNITS_PROMPT.format(n=n, a=a, b=b), "y": str(n * factor)}


MAKERS.update(
    {
        "reverse": reverse_row,
        "capitals": capitals_row,
        "plural": plural_row,
        "antonyms": antonyms_row,
        "count_letters": count_letters_row,
        "units": units_row,
    }
)
CONSTRAINTS.update(
    {
        "reverse": 'y matches r"[a-z]+"',
        "capitals": "y in [" + ", ".join(json.dumps(c) for c in sorted(set(CAPITALS.values()))) + "]",
        "plural": 'y matches r"[a-z]+"',
        "antonyms": "y in [" + ", ".join(json.dumps(w) for w in sorted(antonym_lookup())) + "]",
        "count_letters": "y is int and tokens(y) <= 2",
        "units": "y is int and tokens(y) <= 6",
    }
)
DESCRIPTIONS.update(
    {
        "reverse": "reverses the letters of a word",
        "capitals": "names the capital city of a country",
        "plural": "gives the plural form of a noun",
        "antonyms": "gives the opposite of a word",
        "count_letters": "counts how many times a letter appears in a word",
        "units": "converts a quantity between units such as km and m",
    }
)
RULES.update(
    {
        "reverse": r'matches r"(?i)reverse the letters"',
        "capitals": r'matches r"(?i)capital"',
        "plural": r'matches r"(?i)plural"',
        "antonyms": r'matches r"(?i)opposite|antonym"',
        "count_letters": r'matches r"(?i)how many times does the letter"',
        "units": r'matches r"^Convert [0-9]+ "',
    }
)


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
    if task == "sentiment":  # balanced labels in the held-out split
        pos = [r for r in rows if r["y"] == "positive"]
        neg = [r for r in rows if r["y"] == "negative"]
        k = min(n_test // 2, len(pos), len(neg))
        test = pos[:k] + neg[: n_test - k]
        test_ids = {id(r) for r in test}
        train = [r for r in rows if id(r) not in test_ids][:n_train]
        return train, test
    return rows[:n_train], rows[n_train:]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if not path.exists() or path.read_text(encoding="utf-8") != text:  # keep mtimes stable across runs
        path.write_text(text, encoding="utf-8")


def write_task_files(
    folder: Path, n_train: int, n_test: int, seed: int = 0, tasks: tuple[str, ...] = TASKS
) -> dict[str, dict]:
    """Writes train_<task>.jsonl ({"prompt","completion"}) and test_<task>.jsonl
    ({"task","x","y"}) per task; returns {task: {"train": path, "test": path,
    "train_rows": [...], "test_rows": [...]}}; `tasks` defaults to the three
    original tasks (ALL_TASKS adds the extra ones)."""
    out = {}
    for task in tasks:
        train, test = make_split(task, n_train, n_test, seed)
        tp, hp = folder / f"train_{task}.jsonl", folder / f"test_{task}.jsonl"
        write_jsonl(tp, [{"prompt": r["x"], "completion": r["y"]} for r in train])
        write_jsonl(hp, test)
        out[task] = {"train": tp, "test": hp, "train_rows": train, "test_rows": test}
    return out
