"""Issue 15's remaining gaps in the front end: the union type of a hole
under `or`, nested prompt loops typed as nested lists, and tool calls that
take the flow's expressions (with positioned type errors)."""

import pytest

from lmlang import types as T
from lmlang.errors import CheckError
from lmlang.frontend import build

OR_QUERY = """
model m = default
query q(t: str) using m {
    user "{t}"
    assistant "Answer: [x]"
    where x is int or x in ["none"]
}
query takes_int(n: int) using m { user "{n}" assistant "[y]" where y is int }
query takes_str(s: str) using m { user "{s}" assistant "[y]" where y is int }
"""


def check(text: str, functions=frozenset()):
    """(the checked program or None, the diagnostics as (message, line, col, hint))."""
    try:
        return build(text, functions=functions), []
    except CheckError as e:
        return None, [(d.message, d.span.line, d.span.col, d.hint) for d in e.diagnostics]


def result_type(text: str, query: str) -> T.T:
    fe, diags = check(text)
    assert diags == []
    return fe.checked.queries[query].result_type


def test_a_hole_under_or_has_the_union_type():
    t = result_type(OR_QUERY + 'flow { r = q("a") emit x = r.x }', "q")
    assert str(t.field("x")) == "int|str"
    assert str(T.union(T.INT, T.FLOAT)) == "float" and T.union(T.STR, T.STR) == T.STR


@pytest.mark.parametrize(
    "flow, message",
    [
        ("emit x = r.x + 1", "cannot apply '+' to int|str and int"),
        ("emit x = takes_int(r.x)", "takes_int() argument 'n' expects int, got int|str"),
        ("emit x = len(r.x)", "len() argument 1 must be str or list or record, got int|str"),
        ("emit x = int(r.x) + 1", None),  # converted explicitly
        ("emit x = takes_str(r.x)", None),  # every member is text
        ('emit x = r.x == "none"', None),
    ],
)
def test_flow_code_that_uses_a_union_as_an_int_is_a_check_error(flow, message):
    _fe, diags = check(OR_QUERY + 'flow { r = q("a")\n' + flow + " }")
    if message is None:
        assert diags == []
        return
    assert diags and diags[0][0] == message
    assert diags[0][1] == 11 and diags[0][2] > 1  # on the flow's line
    if "'+'" in message:
        assert "int(...)" in diags[0][3]


NESTED = """
model m = default
query q() using m {
    user "Fill the grid."
    assistant {
        for i in range(3) {
            "Row {i} [y]:"
            for j in range(2) {
                " [x]"
                if x == "stop" { break }
            }
            "\\n"
        }
        "Total: [n]"
    }
    where x in ["a", "stop"]
    where y in ["r"]
    where n is int
}
"""


def test_nested_prompt_loops_type_holes_as_nested_lists():
    t = result_type(NESTED + "flow { r = q() emit x = r.x[0][1], y = r.y[0], n = r.n + 1 }", "q")
    assert (str(t.field("x")), str(t.field("y")), str(t.field("n"))) == ("list[list[str]]", "list[str]", "int")
    _fe, diags = check(NESTED + "flow { r = q() emit x = r.x[0] + 1 }")
    assert diags and diags[0][0] == "cannot apply '+' to list[str] and int"
