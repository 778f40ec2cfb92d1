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


TOOLS = """
model m = default
query q(xs: list[str], n: int) using m {
    user "Go."
    assistant {
        for i in range(2) {
            "Expr: [expr]\\n"
            "Result: {call(\\"calc\\", ARG)}\\n"
        }
        "Answer: [answer]"
    }
    where expr matches r"[0-9]{1,2}[+*][0-9]{1,2}"
    where answer is int
}
flow { r = q(["1+1"], 3) emit a = r.answer }
"""


def tool_diags(arg: str):
    return check(TOOLS.replace("ARG", arg))[1]


@pytest.mark.parametrize(
    "arg",
    ['expr + \\"*2\\"', "xs[i]", 'str(n * 2) + \\"+\\" + expr', "-n", "(n + i) * 2", "len(xs) + 1"],
)
def test_tool_arguments_take_flow_expressions(arg):
    assert tool_diags(arg) == []


@pytest.mark.parametrize(
    "arg, message, at",
    [
        ("expr + 1", "cannot apply '+' to str and int", "expr + 1"),
        ("xs", "tool 'calc' argument 1 must be str or int or float, got list[str]", "xs"),
        ("xs[expr]", "a list index must be an int", "expr]"),
        ('answer + \\"1\\"', "hole [answer] is read before it is decoded", "answer"),
        ("nope * 2", "undefined name 'nope'", "nope"),
    ],
)
def test_tool_argument_errors_are_positioned(arg, message, at):
    diags = tool_diags(arg)
    assert diags and diags[0][0] == message
    line = TOOLS.replace("ARG", arg).splitlines()[diags[0][1] - 1]
    assert line[diags[0][2] - 1 :].startswith(at)  # the argument's own column


def test_a_tool_argument_parses_to_the_flow_ast():
    from lmlang import ast as A
    from lmlang.parser import parse

    prog = parse('query q(n: int) { "{call(\\"f\\", n * 2 + 1, [\\"a\\", \\"b\\"][0], not true)} [x]" }')
    call = next(p for p in prog.decls[0].segments[0].parts if isinstance(p, A.ToolCall))
    a, b, c = call.args
    assert isinstance(a, A.BinOp) and a.op == "+" and isinstance(a.left, A.BinOp) and a.left.op == "*"
    assert isinstance(b, A.Index) and isinstance(b.obj, A.ListExpr) and isinstance(c, A.UnaryOp)


@pytest.mark.parametrize("arg", ["expr +", "expr expr", "(expr", "expr ; 1"])
def test_a_bad_tool_argument_is_a_positioned_syntax_error(arg):
    from lmlang.errors import LmlangSyntaxError
    from lmlang.parser import parse

    with pytest.raises(LmlangSyntaxError) as e:
        parse(TOOLS.replace("ARG", arg))
    assert "tool call" in e.value.message and e.value.span.line == 8 and e.value.span.col > 20


def test_a_named_tool_result_is_a_str_the_prompt_can_branch_on():
    named = '"Result: {obs = call(\\"calc\\", expr)}\\n"\n            if "error" in obs { break }'
    ok = TOOLS.replace('"Result: {call(\\"calc\\", ARG)}\\n"', named)
    assert "{obs = call(" in ok and check(ok)[1] == []
    for name, what in [("n", "a parameter"), ("expr", "a hole"), ("i", "a loop variable")]:
        bad = ok.replace("{obs = call", "{" + name + " = call").replace("in obs {", "in " + name + " {")
        diags = check(bad)[1]
        assert diags and diags[0][0] == f"'{name}' is {what} and cannot name a tool's result", bad
    diags = check(ok.replace('if "error" in obs', "if obs + 1 > 2"))[1]
    assert diags and diags[0][0] == "cannot apply '+' to str and int"


def test_the_graph_keeps_expression_arguments_and_named_results():
    from lmlang.graph import graph_from_json, graph_to_json

    named = '"Result: {obs = call(\\"calc\\", str(n) + expr)}\\n"\n            if "error" in obs { break }'
    fe, diags = check(TOOLS.replace('"Result: {call(\\"calc\\", ARG)}\\n"', named))
    assert diags == []
    assert graph_from_json(graph_to_json(fe.compiled)).nodes == fe.compiled.nodes
    spec = next(s for s in fe.compiled.nodes.values() if getattr(s, "kind", "") == "query")
    kinds = [p[0] for _role, parts in spec.segments for p in parts]
    assert "block" in kinds
