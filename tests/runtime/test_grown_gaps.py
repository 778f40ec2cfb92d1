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
