"""Issue 15's remaining gaps on the tiny random model: the value of a hole
under `or` keeps its alternative's type, nested prompt loops give nested
lists, and tool calls take the flow's expressions."""

import pytest

import lmlang
from lmlang.constraints import spec as C
from lmlang.constraints.alternatives import union_value


def run_or(model_dir, extra: str):
    src = f"""
model m = "{model_dir}"
query q(t: str) using m {{
    user "{{t}}"
    assistant "Answer: [x]"
    where x is int(7..7) or x in ["none"]
    {extra}
}}
flow {{ r = q("hi") emit x = r.x }}
"""
    return lmlang.compile(src).run()["x"]


def test_a_hole_under_or_is_an_int_when_the_int_branch_matched(tiny_model_dir):
    assert run_or(tiny_model_dir, 'where x not in ["none"]') == 7  # an int, not "7"
    assert type(run_or(tiny_model_dir, 'where x not in ["7"]')) is str


@pytest.mark.parametrize(
    "alternatives, text, want",
    [
        ((C.IntType(), C.Choice(("none",))), "12", 12),
        ((C.IntType(), C.Choice(("none",))), "none", "none"),
        ((C.Regex("[0-9a-z]+"), C.IntType()), "7", 7),  # a typed alternative wins over text
        ((C.Regex("[0-9a-z]+"), C.IntType()), "7a", "7a"),
        ((C.IntType(0, 5), C.FloatType()), "9", 9.0),  # out of the int range: the float alternative
        ((C.BoolType(), C.Choice(("maybe",))), "true", True),
    ],
)
def test_union_value_picks_the_alternative(alternatives, text, want):
    got = union_value(text, C.AnyOf(alternatives))
    assert got == want and type(got) is type(want)


NESTED = """
model m = "{model}"
query q() using m {{
    user "Fill the grid."
    assistant {{
        for i in range(3) {{
            "Row {{i}} [y]:"
            for j in range(2) {{
                if i != SKIP {{
                    " [x]"
                    if x == "stop" {{ break }}
                }}
            }}
            "\\n"
        }}
    }}
    where x in OPTIONS
    where y in ["r"]
}}
flow {{ r = q() emit x = r.x, y = r.y }}
"""


def run_nested(model_dir, options: str, skip: int = -1):
    prog = lmlang.compile(NESTED.format(model=model_dir).replace("OPTIONS", options).replace("SKIP", str(skip)))
    return prog.run(), prog.trace.records[-1]


def test_nested_prompt_loops_give_nested_lists(tiny_model_dir):
    out, record = run_nested(tiny_model_dir, '["a"]')
    assert out["x"] == [["a", "a"], ["a", "a"], ["a", "a"]]  # x[i][j]
    assert out["y"] == ["r", "r", "r"]  # one loop around it: a flat list
    assert record.prompt.count("[x]") == 6 and [f"Row {i} [y]:" in record.prompt for i in range(3)] == [True] * 3
    assert record.values["x"] == out["x"]  # the trace holds the same nesting
    assert [h["name"] for h in record.holes] == ["y", "x", "x"] * 3  # one entry per decoding, in prompt order


def test_break_leaves_the_innermost_prompt_loop(tiny_model_dir):
    out, record = run_nested(tiny_model_dir, '["stop"]')
    assert out["x"] == [["stop"], ["stop"], ["stop"]]  # the outer loop ran on
    assert record.prompt.count("[x]") == 3 and "Row 2 [y]:" in record.prompt
    assert [h["name"] for h in record.holes] == ["y", "x"] * 3


def test_an_iteration_that_decodes_nothing_is_an_empty_list(tiny_model_dir):
    out, _record = run_nested(tiny_model_dir, '["a"]', skip=1)
    assert out["x"] == [["a", "a"], [], ["a", "a"]]


TOOL_ARGS = """
model m = "{model}"
query q(xs: list[str], n: int) using m {{
    user "Go."
    assistant {{
        for i in range(2) {{
            "Expr: [expr]\\n"
            "Calc: {{call(\\"calc\\", expr + \\"*2\\")}}\\n"
            "Rec: {{call(\\"rec\\", xs[i], n * (i + 1), expr)}}\\n"
        }}
        "Answer: [answer]"
    }}
    where expr matches r"[0-9]{{1,2}}[+*][0-9]{{1,2}}"
    where answer is int and tokens(answer) <= 3
}}
flow {{ r = q(["a", "b"], 5) emit expr = r.expr }}
"""


def test_tool_arguments_are_flow_expressions_evaluated_when_decoding_reaches_them(tiny_model_dir):
    from lmlang.tools import calc

    seen = []

    def rec(item, k, expr):
        seen.append((item, k, expr))
        return f"ok {k}"

    prog = lmlang.compile(TOOL_ARGS.format(model=tiny_model_dir), functions={"rec": rec})
    exprs = prog.run()["expr"]
    assert seen == [("a", 5, exprs[0]), ("b", 10, exprs[1])]  # a list item, int arithmetic, a hole just decoded
    prompt = prog.trace.records[-1].prompt
    for e in exprs:
        assert f"Calc: {calc(e + '*2')}\n" in prompt  # string concatenation, then the tool
    assert "Rec: ok 5\n" in prompt and "Rec: ok 10\n" in prompt


def test_a_tool_argument_that_fails_at_run_time_names_its_position(tiny_model_dir):
    from lmlang.errors import LmlangRuntimeError

    src = TOOL_ARGS.format(model=tiny_model_dir).replace("xs[i]", "xs[i + 5]")
    prog = lmlang.compile(src, functions={"rec": lambda *a: "ok"})
    with pytest.raises(LmlangRuntimeError) as e:
        prog.run()
    line = src.splitlines()[e.value.span.line - 1]
    assert e.value.message == "query q, tool 'rec': index 5 out of range for list ['a', 'b']"
    assert line[e.value.span.col - 1 :].startswith("{call(")  # the call's position, never a traceback


RANGE_PARAM = """
model m = "{model}"
query q(k: int) using m {{
    user "Count."
    assistant {{
        for i in range(k) {{ "Item {{i}}: [x]\\n" }}
    }}
    where x in ["a"]
}}
flow {{ r = q(K) emit x = r.x }}
"""


def test_a_prompt_loop_over_a_parameters_range(tiny_model_dir):
    from lmlang.checker.prompt_flow import MAX_PROMPT_LOOP
    from lmlang.errors import LmlangRuntimeError
    from lmlang.runtime import prompt_flow

    assert prompt_flow.MAX_PROMPT_LOOP == MAX_PROMPT_LOOP  # the run holds parameters to the checker's bound
    assert lmlang.compile(RANGE_PARAM.format(model=tiny_model_dir).replace("K", "2")).run()["x"] == ["a", "a"]
    prog = lmlang.compile(RANGE_PARAM.format(model=tiny_model_dir).replace("K", "5000"))
    with pytest.raises(LmlangRuntimeError) as e:
        prog.run()
    assert "runs 5000 times, more than 1000" in e.value.message and e.value.span.line == 6


NAMED = """
model m = "{model}"
query q() using m {{
    user "Go."
    assistant {{
        for i in range(3) {{
            "Expr: [expr]\\n"
            "Check: {{obs = call(\\"check\\", expr)}}\\n"
            if "error" in obs {{ break }}
            "Fine: {{obs}}\\n"
        }}
        "Answer: [answer]"
    }}
    where expr matches r"[0-9]{{1,2}}[+*][0-9]{{1,2}}"
    where answer is int and tokens(answer) <= 3
}}
flow {{ r = q() emit expr = r.expr }}
"""


def test_the_prompt_branches_on_a_named_tool_result(tiny_model_dir):
    replies = iter(["ok", "error: no"])
    prog = lmlang.compile(NAMED.format(model=tiny_model_dir), functions={"check": lambda e: next(replies)})
    assert len(prog.run()["expr"]) == 2  # the second result was an error value: the loop broke
    prompt = prog.trace.records[-1].prompt
    assert "Check: ok\nFine: ok\n" in prompt and "Check: error: no\nAnswer:" in prompt


BUNDLED = """
model base = default
query grid(players: list[str], rounds: int) using base {
    user "Rate each player's rounds from 0 to 9."
    assistant {
        for p in players {
            "{p}:"
            for r in range(rounds) { " [score]" }
            " best x10 = {total = call(\\"calc\\", str(score) + \\"*10\\")}\\n"
            if "error" in total { break }
        }
        "Verdict: [verdict]"
    }
    where score is int(0..9)
    where verdict is int(0..9) or verdict in ["tie"]
}
flow { g = grid(["Ann", "Bob"], 2) emit score = g.score, verdict = g.verdict }
"""


@pytest.mark.e2e
def test_nested_loops_named_tools_and_or_on_the_bundled_model():
    prog = lmlang.compile(BUNDLED)
    out = prog.run()
    assert len(out["score"]) == 2 and all(len(row) == 2 for row in out["score"])
    assert all(type(v) is int and 0 <= v <= 9 for row in out["score"] for v in row)
    assert out["verdict"] == "tie" or (type(out["verdict"]) is int and 0 <= out["verdict"] <= 9)
    prompt = prog.trace.records[-1].prompt
    assert f"best x10 = {out['score'][1][-1] * 10}\n" in prompt  # the tool read the hole just decoded
