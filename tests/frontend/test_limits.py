"""Check-time limits (docs/language.md "Limits"): input past a limit is a
positioned error with a hint, never a traceback, a segfault or minutes of
work; input under the limits still compiles."""

import json
import subprocess
import sys

import pytest

from lmlang import parser as P
from lmlang.checker import limits as L
from lmlang.errors import LmlangError
from lmlang.frontend import build
from lmlang.graph import graph_from_json, graph_to_json

HEAD = 'model base = default\n'


def hole(where: str) -> str:
    return (
        HEAD + f'query f() using base {{\n  user "hi"\n  assistant "[x]"\n  where {where}\n}}\n'
        'flow {\n  r = f()\n  emit x = r.x\n}\n'
    )


def else_if_chain(n: int, last: str = '"z"') -> str:
    chain = "".join(f'if r.x == "{i}" {{ emit y = "{i}" }} else ' for i in range(n))
    return (
        HEAD + 'query f() using base {\n  user "hi"\n  assistant "[x]"\n}\n'
        f'flow {{\n  r = f()\n  {chain}{{ emit y = {last} }}\n}}\n'
    )


def error_of(text: str, filename: str = "t.lm", **kw) -> LmlangError:
    with pytest.raises(LmlangError) as info:
        build(text, filename, **kw)
    d = info.value.diagnostics[0]
    assert d.span.line >= 1 and d.span.col >= 1
    info.value.render()
    return info.value


@pytest.mark.parametrize(
    "literal, message",
    [
        ("9" * 5000, "5000 digits"),
        ("9" * (P.MAX_NUMBER_DIGITS + 1), "more than 100"),
        ("1e999", "not a finite"),
    ],
)
def test_number_literals_past_the_limit(literal, message):
    e = error_of(hole(f"x is int(0..{literal})"))
    assert message in str(e)
    assert e.diagnostics[0].span.line == 5


def test_token_bound_digits_are_limited_too():
    assert "digits" in str(error_of(hole("tokens(x) <= " + "9" * 5000)))


def test_float_bound_overflow_points_at_the_number():
    e = error_of(hole("x is float(0..1e999)"))
    assert e.diagnostics[0].span.col == 23


def test_else_if_chain_past_the_limit_is_positioned():
    e = error_of(else_if_chain(250))
    assert "nested more than 64" in str(e)
    assert "else if" in e.diagnostics[0].hint


def test_else_if_chain_at_the_limit_compiles_and_exports():
    # the deepest accepted chain with the deepest accepted expression in it
    fe = build(else_if_chain(P.MAX_BLOCK_DEPTH - 1, " + ".join(["1"] * (P.MAX_EXPR_DEPTH - 1))), "t.lm")
    data = graph_to_json(fe.compiled)
    assert graph_from_json(json.loads(json.dumps(data))) == fe.compiled


def test_long_list_and_string_limits():
    assert "more than 10000" in str(error_of(hole("x in [" + ",".join(f'"o{i}"' for i in range(10_001)) + "]")))
    e = error_of(HEAD + 'input s: str = "' + "a" * (P.MAX_STRING_CHARS + 1) + '"\n')
    assert "characters" in str(e) and e.diagnostics[0].span.line == 2


def test_ten_thousand_options_compile():
    fe = build(hole("x in [" + ",".join(f'"o{i}"' for i in range(10_000)) + "]"), "t.lm")
    assert fe.compiled.nodes


def test_choice_judge_is_linear_and_still_finds_duplicates_and_dead_options():
    from lmlang.constraints import check, spec as C

    options = tuple(f"o{i}" for i in range(10_000)) + ("o1",)
    problems = check.check_constraint(C.All((C.Choice(options), C.Choice(options[:5000]))))
    messages = [p.message for p in problems]
    assert any("duplicate options ['o1']" in m for m in messages), messages
    assert any("can never be chosen" in m for m in messages), messages


def test_script_size_limit():
    assert "larger than 4 MB" in str(error_of("#" * (P.MAX_SOURCE_BYTES + 1)))


def _schema_script(tmp_path, schema_text: str):
    (tmp_path / "s.json").write_text(schema_text)
    return build(hole('x is json "s.json"'), str(tmp_path / "t.lm"), base_dir=tmp_path)


def test_schema_nested_100k_deep(tmp_path):
    n = 100_000
    with pytest.raises(LmlangError, match="nested more than 128"):
        _schema_script(tmp_path, '{"type":"array","items":' * n + '{"type":"integer"}' + "}" * n)


def test_schema_nested_past_the_limit_but_parseable(tmp_path):
    n = 200
    with pytest.raises(LmlangError, match="nested 201 levels deep, more than 128"):
        _schema_script(tmp_path, '{"type":"array","items":' * n + '{"type":"integer"}' + "}" * n)


def _ref_chain(n: int) -> str:
    defs = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(n - 1)}
    defs[f"d{n - 1}"] = {"type": "integer"}
    return json.dumps({"$ref": "#/$defs/d0", "$defs": defs})


def test_long_ref_chain_is_refused_before_llguidance(tmp_path):
    # in a subprocess: before the bound, llguidance segfaulted (exit 139) on this
    (tmp_path / "s.json").write_text(_ref_chain(3000))
    (tmp_path / "t.lm").write_text(hole('x is json "s.json"'))
    r = subprocess.run(
        [sys.executable, "-m", "lmlang.cli", "check", str(tmp_path / "t.lm")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    assert "chain" in r.stderr and "t.lm:5:" in r.stderr


def test_ref_chain_at_the_limit_and_recursion_pass(tmp_path):
    assert L._ref_chain(json.loads(_ref_chain(L.MAX_REF_CHAIN))) == L.MAX_REF_CHAIN
    tree = {
        "$defs": {
            "node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}
        },
        "$ref": "#/$defs/node",
    }
    assert L.schema_problem(tree) is None
    assert L.schema_problem({"$ref": "#"}) is None
    _schema_script(tmp_path, _ref_chain(L.MAX_REF_CHAIN))


def test_grammar_rules_limit(tmp_path):
    n = L.MAX_GRAMMAR_RULES
    rules = ["start: r0"] + [f'r{i}: "a" | r{i + 1}' for i in range(n)] + [f'r{n}: "end"']
    (tmp_path / "g.lark").write_text("\n".join(rules) + "\n")
    with pytest.raises(LmlangError, match="rules and terminals, more than 256"):
        build(hole('x is grammar "g.lark"'), str(tmp_path / "t.lm"), base_dir=tmp_path)
    (tmp_path / "g.lark").write_text("x" * (L.MAX_GRAMMAR_BYTES + 1))
    with pytest.raises(LmlangError, match="bytes, more than"):
        build(hole('x is grammar "g.lark"'), str(tmp_path / "t.lm"), base_dir=tmp_path)


def test_thousands_of_else_ifs_stop_before_the_parser_tree_walk_overflows():
    e = error_of(else_if_chain(3000))
    d = e.diagnostics[0]
    assert "nested more than 64" in d.message and d.span.line == 8 and d.span.col > 1
