"""Issue 15 in the front end: grown prompts (for/if/break around segments),
tool calls in prompts, `while ... max N` and `def` in the flow. Parse shapes,
result types, positioned check errors with hints, and the graph export."""

import pytest

from lmlang import ast as A
from lmlang import types as T
from lmlang.errors import CheckError, LmlangSyntaxError
from lmlang.frontend import build
from lmlang.graph import graph_from_json, graph_to_json
from lmlang.parser import parse

AGENT = """
model base = default
query solve(q: str) using base {
    system "Solve it."
    user "{q}"
    assistant {
        for i in range(4) {
            "Thought: [thought]\\n"
            "Action: [action]\\n"
            if action == "finish" { break }
            "Input: [expr]\\n"
            "Observation: {call(\\"calc\\", expr)}\\n"
        }
        "Answer: [answer]"
    }
    where thought stops before "\\n" and tokens(thought) <= 60
    where action in ["calculate", "finish"]
    where expr matches r"[0-9+*/() -]{1,40}"
    where answer is int
}
"""

FLOW = 'flow { s = solve("x") emit a = s.answer, n = len(s.thought) }'


def diagnostics(text: str, functions=frozenset()):
    try:
        build(text, functions=functions)
    except CheckError as e:
        return [(d.message, d.span.line, d.span.col, d.hint) for d in e.diagnostics]
    return []


def messages(text: str, functions=frozenset()) -> list[str]:
    return [m for m, *_ in diagnostics(text, functions)]


def test_parse_shapes():
    q = parse(AGENT).decls[1]
    block = q.segments[-1]
    assert isinstance(block, A.PromptBlock) and block.role == "assistant"
    (loop, answer) = block.body
    assert isinstance(loop, A.PromptFor) and loop.var == "i"
    assert [type(s).__name__ for s in loop.body] == ["Segment", "Segment", "PromptIf", "Segment", "Segment"]
    call = loop.body[4].parts[1]
    assert isinstance(call, A.ToolCall) and call.name == "calc" and call.args == (A.Var("expr", span=call.span),)
    assert isinstance(loop.body[2].then[0], A.PromptBreak)
    assert [p.name for p in answer.parts if isinstance(p, A.Hole)] == ["answer"]


def test_holes_in_a_loop_are_lists_in_the_result():
    fe = build(AGENT + FLOW)
    t = fe.checked.queries["solve"].result_type
    assert t.field("thought") == T.list_of(T.STR)
    assert t.field("action") == T.list_of(T.STR)
    assert t.field("answer") == T.INT  # outside the loop: one value


def test_graph_round_trip_keeps_the_prompt_ir():
    fe = build(AGENT + FLOW)
    again = graph_from_json(graph_to_json(fe.compiled))
    assert again.nodes == fe.compiled.nodes
    label = next(s for s in fe.compiled.nodes.values() if getattr(s, "kind", "") == "query").label()
    assert "solve" in label


@pytest.mark.parametrize(
    "edit, message, hint_word",
    [
        (('if action == "finish" { break }', ""), None, None),  # the clean base case
        (("range(4)", "range(q)"), "a prompt loop's range takes ints, got a str", "range(4)"),
        (("range(4)", "range(len(q) + 1)"), None, None),  # an int expression of the parameters
        (("range(4)", "range(answer)"), "a prompt loop's range cannot read hole [answer]", "known"),
        (("range(4)", "split(q)"), "unbounded prompt loop over a list[str]", "bound"),
        (('if action == "finish"', 'if expr == "1"'), "hole [expr] is read before it is decoded", "passed"),
        (('\\"calc\\"', '\\"calcc\\"'), "unknown tool 'calcc'", "calc"),
        (('action == "finish"', 'solve("y").answer == 1'), "a prompt cannot call query 'solve'", "flow"),
        (('"Answer: [answer]"', '"Answer: [answer]"\n break'), "break outside a loop", "inside"),
        (('call(\\"calc\\", expr)', 'call(\\"calc\\", expr, expr)'), "tool 'calc' takes 1 argument, got 2", None),
    ],
)
def test_check_errors_are_positioned(edit, message, hint_word):
    old, new = edit
    text = AGENT.replace(old, new) + FLOW
    got = diagnostics(text)
    if message is None:
        assert got == []
        return
    assert got, text
    msg, line, col, hint = got[0]
    assert msg == message
    assert line > 0 and col > 0
    if hint_word:
        assert hint_word in hint


def test_grown_prompts_take_argmax_or_sample():
    text = AGENT.replace("using base {", "using base decode beam(width: 2) {") + FLOW
    assert any("decodes with argmax or sample, not beam" in m for m in messages(text))


def test_a_registered_tool_checks():
    text = AGENT.replace('\\"calc\\"', '\\"lookup\\"') + FLOW
    assert messages(text) == ["unknown tool 'lookup'"]
    assert messages(text, functions=frozenset({"lookup"})) == []


def test_bad_tool_call_syntax_is_a_syntax_error():
    with pytest.raises(LmlangSyntaxError) as e:
        parse('query q() { "{call(calc)} [x]" }')
    assert "tool" in e.value.message


# ---------------------------------------------------------------- while / def

DEFS = """
model base = default
query solve(q: str) using base { assistant "[answer]" where answer in ["1", "unknown"] }

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

def twice(x) { return majority([x, x]) }

flow {
    s = solve("q")
    tries = 0
    while s.answer == "unknown" max 3 {
        s = solve("q")
        tries = tries + 1
    }
    emit a = s.answer, t = tries, m = twice("z")
}
"""


def test_while_and_def_check_and_export():
    fe = build(DEFS)
    kinds = sorted(s.kind for s in fe.compiled.nodes.values())
    assert kinds.count("def") == 2
    steps = [fe.compiled.spec(n) for n in fe.compiled.steps]
    assert any(s.stmt.tag == "while" and s.stmt.max == 3 for s in steps)
    again = graph_from_json(graph_to_json(fe.compiled))
    assert again.nodes == fe.compiled.nodes


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("max 3 {", "{", "a while loop needs a bound: while COND max N { ... }"),
        ("return majority([x, x])", "return twice(x)", "recursion: twice -> twice"),
        ("return best\n", "return twice(best)\n", "recursion: majority -> twice -> majority"),
        ("tries = 0\n", "tries = 0\n    return 1\n", "return outside a function"),
        ('m = twice("z")', 'm = twice("z", 1)', "twice() takes 1 argument, got 2"),
    ],
)
def test_while_def_errors(old, new, message):
    got = diagnostics(DEFS.replace(old, new, 1))
    assert got and got[0][0] == message, got
    assert got[0][1] > 0 and got[0][3]  # positioned, with a hint


def test_while_without_max_has_a_hint():
    got = diagnostics(DEFS.replace("max 3 {", "{"))
    assert "max N" in got[0][3]


# ---------------------------------------------------------------- highlighter and REPL


def test_highlighter_knows_the_constructs():
    from pygments import lex
    from pygments.token import Keyword, Name

    from lmlang.highlight import LmlangLexer

    toks = [(t, v) for t, v in lex(AGENT + DEFS, LmlangLexer()) if v.strip()]
    assert (Keyword.Pseudo, "assistant") in toks  # a role before a block
    assert (Name.Function, '{call(\\"calc\\", expr)}') in toks
    for word in ("break", "while", "max", "return"):
        assert (Keyword, word) in toks, word
    assert (Keyword.Declaration, "def") in toks


def test_repl_takes_def_and_while(tmp_path):
    from lmlang.repl import Session

    s = Session(base_dir=tmp_path)
    assert s.feed("def double(x) { return x * 2 }") == ["defined double"]
    assert s.feed("n = 1") == ["n = 1"]
    assert s.feed("while n < 100 max 5 { n = double(n) }") == ["n = 32"]  # five doublings, the bound
    assert s.feed("double(21)") == ["42"]


def test_served_models_refuse_grown_prompts():
    text = AGENT.replace("model base = default", 'model base = server "http://127.0.0.1:9/v1" { model: "m" }') + FLOW
    got = diagnostics(text)
    assert got and "cannot run a prompt with control flow or tool calls" in got[0][0]


# ---------------------------------------------------------------- the calc tool (no eval)


@pytest.mark.parametrize(
    "expr, want",
    [
        ("3 + 4 - 2", "5"),
        ("(3 + 4) * 2", "14"),
        ("7 / 2", "3.5"),
        ("0.1 + 0.2", "0.3"),  # decimal, not float
        ("-(-3)", "3"),
        ("10 / 4 * 2", "5"),
        ("1 / 0", "error: division by zero"),
        ("2 * (3", "error: the expression ends too early"),
        ("3 4", "error: unexpected '4'"),
        ("", "error: empty expression"),
        ("__import__('os')", "error: unexpected character '_'"),
        ("1e5", "error: unexpected character 'e'"),
        ("(" * 30 + "1" + ")" * 30, "error: nested deeper than 20"),
        ("1+" * 150 + "1", "error: expression longer than 200 characters"),
        ("9" * 50, "error: a number longer than 40 digits"),
    ],
)
def test_calc(expr, want):
    from lmlang.tools import calc

    assert calc(expr) == want


def test_run_tool_prefers_registered_functions_and_turns_errors_into_values():
    from lmlang.tools import ToolError, run_tool

    assert run_tool("calc", ["1+1"], {}) == "2"
    assert run_tool("calc", ["1+1"], {"calc": lambda e: "mine"}) == "mine"
    assert run_tool("f", [1], {"f": lambda x: 1 / 0}) == "error: ZeroDivisionError: division by zero"
    assert run_tool("f", [[1, 2]], {"f": lambda x: x}) == "[1, 2]"  # values read as text, JSON for lists
    with pytest.raises(ToolError):
        run_tool("nope", [], {})
