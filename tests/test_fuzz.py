"""Mutation fuzzing of the front-end: thousands of broken variants of the
examples and fixtures (characters and tokens inserted, deleted, swapped and
duplicated). Every one must either compile or fail with an LmlangError whose
diagnostics carry spans; never another exception, never a RecursionError.

Seeded, so a failure reproduces; LMLANG_FUZZ_CASES scales the run."""
import json
import os
import random
import re
from pathlib import Path

import pytest

from lmlang.graph import graph_from_json, graph_to_dot, graph_to_json, graph_to_mermaid
from lmlang.errors import LmlangError
from lmlang.frontend import build

REPO = Path(__file__).resolve().parent.parent
SEEDS = sorted((REPO / "examples").glob("*.lm")) + sorted((REPO / "tests" / "fixtures").glob("ok_*.lm"))
CASES = int(os.environ.get("LMLANG_FUZZ_CASES", "4000"))
TOKEN = re.compile(r'r?"(?:[^"\\\n]|\\.)*"|[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?|\S')
ALPHABET = list('{}[]()":,.+-*/=<>!#\\ \n\tabcxyz019_') + ["\u00e9", "\u2603", "\x00", "r\"", '"""']
WORDS = ["model", "query", "flow", "where", "in", "is", "json", "grammar", "stops", "at", "before", "tokens", "len",
         "using", "decode", "merge", "fuse", "router", "route", "adapter", "train", "lora", "on", "use", "input",
         "emit", "if", "else", "for", "and", "or", "not", "default", "distribution", "user", "assistant", "system",
         "[x]", "{x}", "{x.y}", '"[h]"', "0", "-1", "1e9", "1.5", "..", "?", "|", "true", "false"]


def mutate(text: str, rng: random.Random) -> str:
    for _ in range(rng.choice((1, 1, 1, 2, 3, 5))):
        op = rng.randrange(7)
        if op < 3:                                   # character level
            i = rng.randrange(len(text) + 1)
            if op == 0:
                text = text[:i] + rng.choice(ALPHABET) + text[i:]
            elif op == 1 and text:
                text = text[:i] + text[i + 1:]
            elif len(text) > 2:
                j = rng.randrange(len(text))
                a, b = sorted((i % len(text), j))
                text = text[:a] + text[b] + text[a + 1:b] + text[a] + text[b + 1:]
        else:                                        # token level
            toks = [(m.start(), m.end()) for m in TOKEN.finditer(text)]
            if not toks:
                continue
            a0, a1 = rng.choice(toks)
            if op == 3:
                text = text[:a0] + text[a1:]
            elif op == 4:
                text = text[:a0] + rng.choice(WORDS) + " " + text[a0:]
            elif op == 5:
                b0, b1 = rng.choice(toks)
                if b0 > a1:
                    text = text[:a0] + text[b0:b1] + text[a1:b0] + text[a0:a1] + text[b1:]
            else:
                text = text[:a1] + " " + text[a0:a1] + text[a1:]
    return text


def run_one(seed_file: Path, text: str):
    try:
        fe = build(text, str(seed_file))
    except LmlangError as e:
        assert e.diagnostics, "an error without diagnostics"
        for d in e.diagnostics:
            if d.code == "too-many-errors":
                continue
            assert d.span.line >= 1 and d.span.col >= 1, (d, text)
        e.render()                                   # rendering never fails either
        return False
    data = graph_to_json(fe.compiled)                # nor do the exports of what compiles
    assert graph_from_json(json.loads(json.dumps(data))) == fe.compiled
    graph_to_dot(fe.compiled)
    graph_to_mermaid(fe.compiled)
    return True


@pytest.mark.parametrize("shard", range(8))
def test_mutated_sources_fail_cleanly(shard):
    rng = random.Random(shard)
    sources = [(p, p.read_text()) for p in SEEDS]
    ok = 0
    for i in range(CASES // 8):
        path, text = sources[(i + shard) % len(sources)]
        mutated = mutate(text, rng)
        try:
            ok += run_one(path, mutated)
        except AssertionError:
            raise
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{type(e).__name__}: {e}\n--- seed {path.name}, case {i}, shard {shard} ---\n{mutated}")
    assert ok < CASES // 8          # the mutations do break things


def test_random_bytes_fail_cleanly():
    rng = random.Random(99)
    for _ in range(300):
        text = "".join(rng.choice(ALPHABET + WORDS) for _ in range(rng.randrange(1, 80)))
        try:
            run_one(REPO / "examples" / "x.lm", text)
        except AssertionError:
            raise
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"{type(e).__name__}: {e}\n{text!r}")
