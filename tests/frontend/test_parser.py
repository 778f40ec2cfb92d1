"""The parser: every construct becomes the AST node it should, with spans;
syntax errors are LmlangSyntaxError with a location and a hint; nothing of
Lark escapes; pathological input ends cleanly."""

from pathlib import Path
import dataclasses

import pytest

from lmlang import ast as A
from lmlang.errors import LmlangSyntaxError
from lmlang.parser import parse


def one(text: str):
    prog = parse(text)
    assert len(prog.decls) == 1
    return prog.decls[0]


def walk(node):
    yield node
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            yield from walk(getattr(node, f.name))
    elif isinstance(node, tuple):
        for x in node:
            yield from walk(x)


def test_input_with_type_and_default():
    d = one('input tags: list[str] = ["a", "b"]')
    assert isinstance(d, A.InputDecl) and d.name == "tags"
    assert d.type.describe() == "list[str]"
    assert [x.value for x in d.default.items] == ["a", "b"]
    assert (d.name_span.line, d.name_span.col, d.name_span.end_col) == (1, 7, 11)


@pytest.mark.parametrize(
    "text, cls, value",
    [
        ("model m = default", A.DefaultModel, None),
        ('model m = "org/name"', A.PathModel, "org/name"),
        ('model m = "./weights"', A.PathModel, "./weights"),
        ('model m = "tiny.gguf"', A.PathModel, "tiny.gguf"),
        ("model m = other", A.ModelRef, "other"),
    ],
)
def test_model_sources(text, cls, value):
    d = one(text)
    assert isinstance(d.expr, cls)
    if value is not None:
        assert getattr(d.expr, "path", getattr(d.expr, "name", None)) == value


def test_adapter_application_with_scales():
    d = one("model m = base + a * 0.8 + b + c * -1")
    assert isinstance(d.expr, A.Adapted) and d.expr.base == A.ModelRef("base", span=d.span)
    assert [(x.adapter, x.scale) for x in d.expr.adapters] == [("a", 0.8), ("b", 1.0), ("c", -1.0)]


def test_adapter_sources():
    assert isinstance(one('adapter a = lora "folder"').source, A.LoraSource)
    t = one('adapter a = train lora on "d.jsonl" { base: m, rank: 8 }').source
    assert isinstance(t, A.TrainSource) and t.data.path == "d.jsonl" and len(t.options.entries) == 2
    assert one('adapter a = train lora on "d.jsonl"').source.options.entries == ()
    assert isinstance(one("adapter a = merge linear { models: { x: 1 } }").source, A.AdapterMerge)


def test_merge_and_fuse_expressions():
    m = one("model m = merge ties { base: b, models: { b + x: 1.0, c: { weight: 0.5 } }, density: 0.2 }").expr
    assert isinstance(m, A.MergeExpr) and m.method == "ties" and len(m.options.entries) == 3
    f = one("model f = fuse contrastive(plausibility: 0.1) { a: 1, b: -1 }").expr
    assert isinstance(f, A.FuseExpr) and f.mode == "contrastive" and f.options[0].name == "plausibility"
    assert one("model f = fuse { a: 1, b: 1 }").expr.mode == "linear"


@pytest.mark.parametrize("kind", ["embedding", "rules"])
def test_routers(kind):
    r = one(f"router r = route {kind} {{ a: [\"x\"], b: \"y\" }}")
    assert isinstance(r, A.RouterDecl) and r.kind == kind and r.using is None


def test_router_classify_using():
    r = one('router r = route classify using base { a: "x", b: "y" }')
    assert r.using == A.ModelRef("base", span=r.span)


def test_query_everything():
    q = one(
        'query q(a: str, b) using pick(a) decode sample(temperature: 0.5) {\n'
        '  system "sys"\n  user "hi {a} {a.b}"\n  assistant "x [h1] y [h2]"\n'
        '  where h1 in ["1", "2"] and tokens(h2) <= 5\n  where h2 stops before "."\n'
        '  distribution h1 in ["1", "2"]\n}'
    )
    assert [p.name for p in q.params] == ["a", "b"] and q.params[1].type is None
    assert isinstance(q.using, A.RouterCall) and q.using.router == "pick"
    assert q.decoder.name == "sample" and q.decoder.options[0].value.value == 0.5
    assert [s.role for s in q.segments] == ["system", "user", "assistant"]
    user = q.segments[1].parts
    assert [type(p) for p in user] == [A.Text, A.Interp, A.Text, A.Interp]
    assert user[3].path == ("a", "b")
    holes = [p for p in q.segments[2].parts if isinstance(p, A.Hole)]
    assert [h.name for h in holes] == ["h1", "h2"]
    assert (holes[0].span.line, holes[0].span.col, holes[0].span.end_col) == (4, 16, 20)
    assert len(q.wheres) == 2 and len(q.wheres[0].conds) == 2
    assert q.distribution.hole == "h1"


@pytest.mark.parametrize(
    "cond, cls",
    [
        ('x in ["a"]', A.CIn),
        ('x matches r"\\d+"', A.CMatches),
        ("x is int", A.CIs),
        ("x is float", A.CIs),
        ("x is bool", A.CIs),
        ("x is int(0..9)", A.CIs),
        ("x is int(-5..)", A.CIs),
        ("x is json { a: int(0..9), b?: [str](1..), c: \"u\" | \"v\" }", A.CJson),
        ('x is json "s.json"', A.CJson),
        ('x is grammar "g.lark"', A.CGrammar),
        ('x stops at "."', A.CStop),
        ('x stops before "."', A.CStop),
        ("tokens(x) <= 3", A.CLen),
        ("len(x) < 9", A.CLen),
    ],
)
def test_each_constraint_form(cond, cls):
    q = one(f'query q() {{ "[x]" where {cond} }}')
    assert isinstance(q.wheres[0].conds[0], cls)


def test_flow_statements_and_expressions():
    f = one(
        "flow {\n a = q(x, k = 1).f[0]\n if not a == 1 and b or c { x = -1 } else if d in [1] { y = 2 } else { z = 3 }\n"
        " for i in xs { emit i }\n emit a, b = a + 1 * 2 % 3 - 4 / 5\n}"
    )
    assert [type(s) for s in f.body] == [A.Assign, A.If, A.For, A.Emit]
    assign = f.body[0]
    assert isinstance(assign.value, A.Index) and isinstance(assign.value.obj, A.Attr)
    call = assign.value.obj.obj
    assert call.func == "q" and call.kwargs[0][0] == "k"
    assert isinstance(f.body[1].orelse[0], A.If)
    assert f.body[3].items[0].value == A.Var("a", span=f.span)


def test_use_and_comments():
    prog = parse('# header\nuse "lib.lm"   # trailing\n# footer')
    assert prog.decls == (A.UseDecl("lib.lm", span=prog.span),)


def test_prompt_escapes_are_literal_text():
    q = one(r'query q() { "\{a\} \[b\] [x]" where x is int }')
    assert q.segments[0].parts[0].text == "{a} [b] "


def test_strings_and_prompts_share_one_escape_table():
    q = one(r'query q() { "caf\u00e9 \t\d \"q\" [x]" where x matches "caf\u00e9\d" }')
    assert q.segments[0].parts[0].text == 'café \t\\d "q" '
    prog = parse(r'input s: str = "caf\u00e9\d\n"')
    assert prog.decls[0].default.value == "café\\d\n"


def test_keywords_are_soft_where_unambiguous():
    prog = parse("model default_x = default\nquery len2(len: str) { \"{len} [at]\" where at is int }")
    assert prog.decls[1].params[0].name == "len"


def test_every_node_has_a_span_and_no_lark_type_escapes():
    text = open(Path(__file__).resolve().parents[1] / "fixtures" / "ok_constraints.lm").read()
    for node in walk(parse(text, "f.lm")):
        assert "lark" not in type(node).__module__
        if isinstance(node, A.Node):
            assert node.span.line >= 1 and node.span.filename == "f.lm", node


@pytest.mark.parametrize(
    "text, line, col, words",
    [
        ("model = default", 1, 7, "unexpected"),
        ("model m = default\nquery q( {", 2, 10, "unexpected"),
        ('query q() { "[x" }', 1, 14, "unclosed '['"),
        ('query q() { "{a.}" }', 1, 14, "invalid interpolation"),
        ('query q() { "a]" }', 1, 15, "unmatched ']'"),
        ('model m = "abc', 1, 11, "unclosed string"),
        ("model m = default\n§", 2, 1, "unexpected character"),
        ("flow {", 1, 7, "end of file"),
        ('query q() { "[x]" distribution x in ["a"] distribution x in ["b"] }', 1, 43, "at most one distribution"),
    ],
)
def test_syntax_errors_have_location_and_message(text, line, col, words):
    with pytest.raises(LmlangSyntaxError) as ei:
        parse(text, "s.lm")
    e = ei.value
    assert words in e.message
    assert (e.span.line, e.span.col) == (line, col), e.render()
    assert e.span.filename == "s.lm"
    assert "s.lm:" in e.render()


def test_deep_nesting_is_a_clean_error():
    for opener, closer in (("(", ")"), ("[", "]"), ("{", "}")):
        text = "flow { x = " + opener * 5000 + "1" + closer * 5000 + " }"
        with pytest.raises(LmlangSyntaxError) as ei:
            parse(text)
        assert "nesting" in ei.value.message


def test_nesting_within_the_limit_parses():
    text = "flow { x = " + "(" * 60 + "1" + ")" * 60 + "\n if a { if b { if c { y = [[[[1]]]] } } } }"
    parse(text)


@pytest.mark.parametrize(
    "expr",
    [" + ".join(["1"] * 20000), "not " * 5000 + "true", "-" * 300 + "1", "x" + ".f" * 500, " and ".join(["a"] * 400)],
)
def test_long_chains_are_a_clean_error(expr):
    with pytest.raises(LmlangSyntaxError, match="nested too deeply"):
        parse("flow { x = " + expr + " }")


def test_deep_blocks_and_chains_within_limits_compile_and_round_trip():
    import json

    from lmlang.graph import graph_from_json, graph_to_json
    from lmlang.frontend import build

    text = (
        "flow {"
        + " if true { for i in [1] {" * 31
        + " x = "
        + " + ".join(["1"] * 95)
        + "}}" * 31
        + " y = "
        + "[" * 60
        + "1"
        + "]" * 60
        + " emit y }"
    )
    fe = build(text)
    data = json.loads(json.dumps(graph_to_json(fe.compiled)))
    assert graph_from_json(data) == fe.compiled


def test_true_and_false_are_expressions():
    f = one("flow { if true { x = false } }")
    assert f.body[0].cond == A.Lit(True, span=f.span)
    assert f.body[0].then[0].value == A.Lit(False, span=f.span)


def test_multi_megabyte_file_parses():
    filler = "# " + "x" * 78 + "\n"
    big_prompt = "word " * 200_000
    text = filler * 20_000 + f'query q() {{ "{big_prompt} [a]" where a is int }}\n'
    assert len(text) > 2_500_000
    prog = parse(text)
    assert prog.decls[0].segments[0].parts[-1] == A.Hole("a", span=prog.span)


def test_many_declarations_parse():
    block = 'query q{i}(x: str) using base {{\n  user "{{x}} number {i}"\n  assistant "[a]"\n  where a in ["yes", "no"]\n}}\n'
    text = "model base = default\n" + "".join(block.format(i=i) for i in range(5000))
    assert len(parse(text).decls) == 5001


def test_oversized_file_is_refused():
    with pytest.raises(LmlangSyntaxError, match="larger than"):
        parse("#" * (17 * 1024 * 1024))
