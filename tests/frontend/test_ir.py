"""The IR between compiler and runtime (`lmlang.graph.ir`): named frozen
nodes that round-trip through JSON, hash in their positional form (so node
ids did not change when the IR became classes), and give a statement's
reads, writes and calls through the generic walk. And the boundary: the
runtime imports `lmlang.graph`, never the front end."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmlang.compiler import stmt_ir
from lmlang.frontend import build
from lmlang.graph import (
    GRAPH_FORMAT_VERSION,
    StepSpec,
    content_digest,
    from_jsonable,
    graph_from_json,
    graph_to_json,
    stmt_text,
    to_jsonable,
)
from lmlang.graph import ir as I
from lmlang.parser import parse

REPO = Path(__file__).resolve().parents[2]

CALL = I.Call("q", (I.Var("t"), I.Lit(3)), (("k", I.ListExpr((I.Lit("a"), I.Lit(True)))),), "f.lm:2:5")
NODES = [
    I.Lit("x"),
    I.Lit(2.5),
    I.Lit(None),
    I.Var("v"),
    I.Attr(CALL, "a"),
    I.Index(I.Var("xs"), I.Lit(0)),
    I.ListExpr(()),
    CALL,
    I.BinOp("and", I.Var("a"), I.UnaryOp("not", I.Var("b"))),
    I.UnaryOp("-", I.Lit(1)),
    I.Assign("x", CALL),
    I.If(I.Var("c"), (I.Assign("y", I.Lit(1)),), ()),
    I.For("i", I.Var("xs"), (I.Assign("r", I.Var("i")),)),
    I.Emit((("r", I.Var("x")), ("s", CALL))),
    I.While(I.Var("c"), 3, (I.Assign("y", I.Lit(1)),)),
    I.Return(CALL),
    I.PSeg((("text", "Obs: "), ("call", CALL), ("hole", "h"), ("interp", ("q", "f")))),
    I.PFor("i", CALL, (I.PSeg((("hole", "x"),)), I.PBreak())),
    I.PIf(I.Var("c"), (I.PBreak(),), (I.PSeg((("text", "t"),)),)),
    I.PBreak(),
    I.Matches(r"\d+"),
    I.Contains(("sum", "add")),
    I.Description("maths"),
    I.Examples(("2+2", "3*4")),
]


@pytest.mark.parametrize("node", NODES, ids=lambda n: type(n).__name__)
def test_every_node_round_trips_through_json(node):
    data = json.loads(json.dumps(to_jsonable(node)))
    assert data["$type"] == type(node).__name__
    back = from_jsonable(data)
    assert back == node and type(back) is type(node) and hash(back) == hash(node)


def test_every_node_class_has_a_tag_and_is_listed():
    assert set(I.IR_TYPES.values()) == {type(n) for n in NODES}
    assert len({cls.tag for cls in I.IR_TYPES.values()}) == len(I.IR_TYPES)


def test_ids_hash_the_positional_form():
    """Graph format 1 stored statements as positional lists; ids hash that
    same form, so every node id (and the dot/mermaid order) stayed put."""
    assert I.ir_form(I.Assign("x", CALL)) == (
        "assign",
        "x",
        ("call", "q", (("var", "t"), ("lit", 3)), (("k", ("list", (("lit", "a"), ("lit", True)))),), "f.lm:2:5"),
    )
    step = StepSpec(0, I.Emit((("r", I.Var("x")),)), ("x",), (), (), "f.lm:3:1")
    legacy = {
        "$type": "StepSpec",
        "index": 0,
        "stmt": ["emit", [["r", ["var", "x"]]]],
        "reads": ["x"],
        "writes": [],
        "calls": [],
    }
    import hashlib

    expected = hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:10]
    assert content_digest(step) == expected


def flow_stmt(text: str) -> I.Stmt:
    (flow,) = parse(f"flow {{\n{text}\n}}\n", "t.lm").decls
    (stmt,) = flow.body
    return stmt_ir(stmt)


@pytest.mark.parametrize(
    "text, reads, writes, calls",
    [
        ("x = q(t).a", {"t"}, {"x"}, {"q"}),
        ("x = f(x, k=y)", {"x", "y"}, {"x"}, {"f"}),
        ("emit r = [a, b[0], not d, -e], s = g.h", {"a", "b", "d", "e", "g"}, set(), set()),
        ("for i in xs { y = i + z }", {"xs", "z"}, {"y"}, set()),
        ("for i in i { emit r = i }", {"i"}, set(), set()),  # the iterable is read before binding
        ("if c { a = 1  b = a } else { b = a }", {"c", "a"}, {"a", "b"}, set()),  # a branch's binding stays in it
        ("if c { a = upper(t)  b = lower(a) }", {"c", "t"}, {"a", "b"}, {"upper", "lower"}),
        ("if c { for i in xs { if i { n = n + 1 } } }", {"c", "xs", "n"}, {"n"}, set()),
    ],
)
def test_effects_of_a_statement(text, reads, writes, calls):
    fx = I.effects(flow_stmt(text))
    assert (set(fx.reads), set(fx.writes), set(fx.calls)) == (reads, writes, calls)


def test_labels_of_statements():
    assert stmt_text(flow_stmt('x = q(t, k=[1, "a"]).a')) == 'x = q(t, k=[1, "a"]).a'
    assert stmt_text(flow_stmt("if not c { a = 1 } else { a = 2 }")) == "if not c / else"
    assert stmt_text(flow_stmt("for i in xs { emit r = i }")) == "for i in xs"
    assert stmt_text(flow_stmt("emit a = 1, b = -x")) == "emit a, b"
    step = StepSpec(0, flow_stmt("total = a + b"), (), (), ())
    assert step.label() == "total = ..."


def test_graph_json_has_the_format_version_and_refuses_others(tmp_path):
    compiled = build('input t: str\nflow { emit r = upper(t) }\n', str(tmp_path / "f.lm")).compiled
    data = graph_to_json(compiled)
    assert data["version"] == GRAPH_FORMAT_VERSION == 2
    (step,) = [n["spec"] for n in data["nodes"] if n["spec"]["$type"] == "StepSpec"]
    assert step["stmt"]["$type"] == "Emit" and step["stmt"]["items"][0][1]["$type"] == "Call"
    assert graph_from_json(data) == compiled
    with pytest.raises(ValueError, match="unsupported graph version 1"):
        graph_from_json({**data, "version": 1})


# ---------------------------------------------------------------- the runtime boundary

FRONT_END = ("lmlang.checker", "lmlang.compiler", "lmlang.parser", "lmlang.frontend")


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports included), absolute."""
    package = "lmlang.runtime"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            mod = ".".join(p for p in (base, node.module) if p)
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


@pytest.mark.parametrize("path", sorted((REPO / "lmlang" / "runtime").glob("*.py")), ids=lambda p: p.name)
def test_runtime_modules_do_not_import_the_front_end(path):
    bad = sorted(m for m in _imports(path) if m.startswith(FRONT_END))
    assert not bad, f"{path.name} imports {bad}: the runtime reads lmlang.graph only"


def test_running_a_graph_loads_no_front_end_module():
    code = (
        "import sys, lmlang.runtime.executor, lmlang.runtime.routing, lmlang.runtime.build;"
        "print(sorted(m for m in sys.modules if m.startswith(('lmlang.checker', 'lmlang.compiler', "
        "'lmlang.parser', 'lmlang.frontend', 'networkx'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout
