"""Mutation fuzzing of the front-end: thousands of broken variants of the
examples and fixtures (characters and tokens inserted, deleted, swapped and
duplicated). Every one must either compile or fail with an LmlangError whose
diagnostics carry spans; never another exception, never a RecursionError.

Seeded, so a failure reproduces; LMLANG_FUZZ_CASES scales the run."""

import json
import os
import random
import re
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest

from lmlang.graph import graph_from_json, graph_to_dot, graph_to_json, graph_to_mermaid
from lmlang.errors import LmlangError
from lmlang.frontend import build, build_file
from lmlang.source import ODD_BREAKS

REPO = Path(__file__).resolve().parents[2]
SEEDS = sorted((REPO / "examples").glob("*.lm")) + sorted((REPO / "tests" / "fixtures").glob("ok_*.lm"))
CASES = int(os.environ.get("LMLANG_FUZZ_CASES", "4000"))
TOKEN = re.compile(r'r?"(?:[^"\\\n]|\\.)*"|[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?|\S')
ALPHABET = (
    list('{}[]()":,.+-*/=<>!#\\ \n\tabcxyz019_')
    + ["\u00e9", "\u2603", "\x00", "r\"", '"""']
    + list(ODD_BREAKS)
    + ["\ufeff", "\r"]
)
WORDS = [
    "model",
    "query",
    "flow",
    "where",
    "in",
    "is",
    "json",
    "grammar",
    "stops",
    "at",
    "before",
    "tokens",
    "len",
    "using",
    "decode",
    "merge",
    "fuse",
    "router",
    "route",
    "adapter",
    "train",
    "lora",
    "on",
    "use",
    "input",
    "emit",
    "if",
    "else",
    "for",
    "and",
    "or",
    "not",
    "default",
    "distribution",
    "user",
    "assistant",
    "system",
    "[x]",
    "{x}",
    "{x.y}",
    '"[h]"',
    "0",
    "-1",
    "1e9",
    "1.5",
    "..",
    "?",
    "|",
    "true",
    "false",
    "9" * 5000,
    "1e999",
    "-1e999",
    "int(0..1e999)",
    "else if x {",
    "defualt",
]
DEADLINE_S = 120  # per generated case: generous, the point is "not minutes", not a timing assert


def mutate(text: str, rng: random.Random) -> str:
    for _ in range(rng.choice((1, 1, 1, 2, 3, 5))):
        op = rng.randrange(7)
        if op < 3:  # character level
            i = rng.randrange(len(text) + 1)
            if op == 0:
                text = text[:i] + rng.choice(ALPHABET) + text[i:]
            elif op == 1 and text:
                text = text[:i] + text[i + 1 :]
            elif len(text) > 2:
                j = rng.randrange(len(text))
                a, b = sorted((i % len(text), j))
                text = text[:a] + text[b] + text[a + 1 : b] + text[a] + text[b + 1 :]
        else:  # token level
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
        e.render()  # rendering never fails either
        return False
    data = graph_to_json(fe.compiled)  # nor do the exports of what compiles
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
    assert ok < CASES // 8  # the mutations do break things


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


# ---------------------------------------------------------------- hostile classes
# Generated scripts for the classes issue 12 found: each either compiles or
# fails with a position, never a traceback, within DEADLINE_S (enforced by
# SIGALRM here, so a hang fails the case instead of the whole run).


class _Deadline(Exception):
    pass


@contextmanager
def deadline(seconds: int):
    def expire(signum, frame):
        raise _Deadline(f"case ran past {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


HOLE = (
    'model base = default\nquery f() using base {{\n  user "hi"\n  assistant "[x]"\n  where {where}\n}}\n'
    'flow {{\n  r = f()\n  emit x = r.x\n}}\n'
)


def _big_integers(rng):
    n = rng.choice((99, 100, 101, 4300, 4301, 20_000))
    digits = "9" * n
    return rng.choice(
        (
            HOLE.format(where=f"x is int(0..{digits})"),
            HOLE.format(where=f"tokens(x) <= {digits}"),
            f"model base = default\ninput n: int = {digits}\n",
        )
    )


def _non_finite(rng):
    lo, hi = rng.choice((("0", "1e999"), ("-1e999", "0"), ("1e308", "1e309"), ("0", "1" + "0" * 400 + ".5")))
    return HOLE.format(where=f"x is {rng.choice(('int', 'float'))}({lo}..{hi})")


def _else_if_chain(rng):
    n = rng.choice((10, 63, 64, 65, 250, 2000))
    chain = "".join(f'if r.x == "{i}" {{ emit y = "{i}" }} else ' for i in range(n))
    return (
        'model base = default\nquery f() using base {\n  user "hi"\n  assistant "[x]"\n}\n'
        f'flow {{\n  r = f()\n  {chain}{{ emit y = "z" }}\n}}\n'
    )


def _deep_nesting(rng):
    n = rng.choice((50, 64, 65, 1000, 100_000))
    kind = rng.randrange(3)
    if kind == 0:
        return HOLE.format(where="x in " + "[" * n + '"a"' + "]" * n)
    if kind == 1:
        return 'model base = default\nflow {\n  emit y = ' + "(" * n + "1" + ")" * n + "\n}\n"
    return 'model base = default\nflow {\n  emit y = ' + " + ".join(["1"] * n) + "\n}\n"


def _odd_line_breaks(rng, seeds):
    text = rng.choice(seeds)
    for _ in range(rng.randrange(1, 6)):
        i = rng.randrange(len(text) + 1)
        text = text[:i] + rng.choice(ODD_BREAKS + "\r\ufeff") + text[i:]
    return text


GENERATORS = (_big_integers, _non_finite, _else_if_chain, _deep_nesting)


def _check_case(run, label: str, text):
    try:
        with deadline(DEADLINE_S):
            run()
    except (AssertionError, _Deadline) as e:
        pytest.fail(f"{type(e).__name__}: {e}\n--- {label} ---\n{str(text)[:500]!r}")
    except Exception as e:  # noqa: BLE001 - the point of the test
        pytest.fail(f"{type(e).__name__}: {e}\n--- {label} ---\n{str(text)[:500]!r}")


@pytest.mark.parametrize("gen", GENERATORS, ids=lambda g: g.__name__.strip("_"))
def test_hostile_generated_scripts_fail_cleanly(gen):
    rng = random.Random(gen.__name__)
    for i in range(12):
        text = gen(rng)
        _check_case(lambda: run_one(REPO / "examples" / "x.lm", text), f"{gen.__name__} case {i}", text)


def test_odd_line_breaks_fail_cleanly():
    rng = random.Random(7)
    seeds = [p.read_text() for p in SEEDS]
    for i in range(60):
        text = _odd_line_breaks(rng, seeds)
        _check_case(lambda: run_one(REPO / "examples" / "x.lm", text), f"odd breaks case {i}", text)


def test_non_utf8_bytes_fail_cleanly(tmp_path):
    rng = random.Random(8)
    seeds = [p.read_bytes() for p in SEEDS]
    bad = [b"\xff", b"\xe9", b"\xc3", b"\xed\xa0\x80", b"\x80\x80", b"\xf0\x9f"]
    for i in range(40):
        data = rng.choice(seeds)
        j = rng.randrange(len(data) + 1)
        data = data[:j] + rng.choice(bad) + data[j:]
        path = tmp_path / f"case{i}.lm"
        path.write_bytes(data)

        def run():
            try:
                build_file(path)
            except LmlangError as e:
                d = e.diagnostics[0]
                assert d.span.line >= 1 and d.span.col >= 1, d
                e.render()

        _check_case(run, f"non-UTF-8 case {i}", data)
