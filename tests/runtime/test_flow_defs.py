"""`while COND max N` and `def` (issue 15) run by the flow interpreter on the
tiny model: the bound stops a loop whose condition stays true, functions
return values, call queries and other functions, and run in order."""

import lmlang

SCRIPT = """
model m = "MODEL"
query solve(q: str) using m { "Q: {q} A: [answer]" where answer in ANSWERS }

def majority(xs) {
    best = xs[0]
    best_n = 0
    for x in xs {
        n = 0
        for y in xs { if y == x { n = n + 1 } }
        if n > best_n {
            best = x
            best_n = n
        }
    }
    return best
}

def ask(q) {
    r = solve(q)
    return r.answer
}

def first_of(xs) { return majority([ask(xs[0]), xs[1], xs[1]]) }

flow {
    s = solve("q")
    tries = 0
    while s.answer == "unknown" max 3 {
        s = solve("q")
        tries = tries + 1
    }
    emit a = s.answer, t = tries, m = majority(["a", "b", "b", "c"]), f = first_of(["x", "y"]), k = ask("z")
}
"""


def run(model_dir, answers: str) -> dict:
    prog = lmlang.compile(SCRIPT.replace("MODEL", str(model_dir)).replace("ANSWERS", answers))
    return prog.run(), prog


def test_while_stops_at_its_bound(tiny_model_dir):
    out, prog = run(tiny_model_dir, '["unknown"]')
    assert out["t"] == 3 and out["a"] == "unknown"
    # 1 before the loop + 3 in it + ask() in first_of and in the emit
    assert sum(r.query == "solve" for r in prog.trace.records) == 1 + 3 + 2


def test_while_ends_when_its_condition_fails(tiny_model_dir):
    out, _ = run(tiny_model_dir, '["1"]')
    assert out["t"] == 0 and out["a"] == "1"


def test_defs_return_values_and_call_queries(tiny_model_dir):
    out, _ = run(tiny_model_dir, '["1"]')
    assert out["m"] == "b"
    assert out["k"] == "1"  # ask() called the query
    assert out["f"] == "y"  # majority of [ask("x"), "y", "y"]
