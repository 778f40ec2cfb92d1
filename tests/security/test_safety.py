"""A script cannot run Python or shell: no eval, no attribute walks, no
format-string tricks. Each attack is a check error (or a syntax error) with a
span, and the compiled program contains nothing executable."""

from pathlib import Path
import dataclasses

import pytest

import lmlang
from lmlang.errors import LmlangError, ScriptError
from lmlang.frontend import build
from lmlang.graph import ir

HEAD = "model base = default\n"

ATTACKS = [
    # format-string attribute walks inside prompts
    'query q(x: str) { user "{x.__class__}" assistant "[a]" }',
    'query q(x: str) { user "{x.__class__.__mro__}" assistant "[a]" }',
    'query q(x: str) { user "{x.__globals__}" assistant "[a]" }',
    'query q(x: str) { user "{x[0]}" assistant "[a]" }',
    'query q(x: str) { user "{x!r}" assistant "[a]" }',
    'query q(x: str) { user "{x:>10}" assistant "[a]" }',
    'query q(x: str) { user "{0}" assistant "[a]" }',
    'query q(x: str) { user "{}" assistant "[a]" }',
    'query q(x: str) { user "{__import__(\'os\')}" assistant "[a]" }',
    'query q(x: str) { user "{globals}" assistant "[a]" }',
    # names that only exist in Python
    'flow { emit x = __import__("os") }',
    'flow { emit x = eval("1 + 1") }',
    'flow { emit x = exec("import os") }',
    'flow { emit x = open("/etc/passwd") }',
    'flow { emit x = getattr("a", "upper") }',
    'flow { emit x = os.system("ls") }',
    'flow { x = "a" emit y = x.__class__ }',
    'flow { x = "a" emit y = x._secret }',
    'flow { emit y = "".__class__.__mro__ }',
    'flow { emit y = print("hi") }',
    'flow { emit y = compile("1", "f", "eval") }',
    # shell and python have no syntax here
    'flow { `ls` }',
    'flow { $(ls) }',
    'flow { import os }',
    'flow { x = lambda: 1 }',
    'flow { def f(): pass }',
    'flow { x = [c for c in "abc"] }',
    '!ls',
    'model m = __import__("os")',
    'query q() using default { assistant "[a]" where a matches r"x" and eval("1") }',
    'router r = route python { base: "x", base2: "y" }',
    'query q() using base decode exec(code: "import os") { assistant "[a]" }',
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_is_a_script_error_with_a_span(attack):
    with pytest.raises(ScriptError) as ei:
        build(HEAD + attack, "attack.lm")
    e = ei.value
    assert isinstance(e, LmlangError)
    for d in e.diagnostics:
        assert d.span.line >= 1, d


def test_interpolation_is_a_lookup_not_formatting():
    # A literal "{x.__class__}" as *data* is printed as data, never formatted.
    fe = build(
        HEAD + 'query q(x: str) { user "{x}" assistant "[a]" where a in ["y"] }\nflow { emit r = q("{x.__class__}") }',
        "ok.lm",
    )
    q = fe.compiled.spec(fe.compiled.names["q"])
    assert q.segments[0][1] == (("interp", ("x",)),)


def test_registered_functions_are_the_only_escape_hatch():
    text = HEAD + 'flow { emit r = lookup("k") }'
    with pytest.raises(ScriptError, match="undefined function 'lookup'"):
        build(text)
    prog = lmlang.compile(text, functions={"lookup": lambda k: k.upper()})
    assert prog.run() == {"r": "K"}


def test_no_python_objects_in_the_graph():
    fe = build(open(Path(__file__).resolve().parents[1] / "fixtures" / "ok_flow.lm").read(), "f.lm")

    def plain(v):
        if isinstance(v, ir.IRNode):  # the flow IR: frozen nodes of plain data, nothing callable
            return all(plain(getattr(v, f.name)) for f in dataclasses.fields(v))
        if isinstance(v, tuple):
            return all(plain(x) for x in v)
        return v is None or isinstance(v, (str, int, float, bool))

    for nid, spec in fe.compiled.nodes.items():
        if spec.kind == "step":
            assert plain(spec.stmt), nid
