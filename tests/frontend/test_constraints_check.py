"""Check-time validation: torch-free, table-driven."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmlang.constraints.check import check_constraint
from lmlang.constraints.spec import (
    All,
    BoolType,
    Choice,
    Grammar,
    IntType,
    JsonSchema,
    MaxChars,
    MaxTokens,
    Regex,
    Stop,
)

REPO = Path(__file__).resolve().parents[2]

OBJ = json.dumps({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]})

ERRORS = [
    (Regex("(a"), "bad-regex", "invalid regex"),
    (Regex(r"(a)\1"), "unsupported-regex", "backreferences"),
    (Regex(r"a(?=b)"), "unsupported-regex", "lookahead"),
    (Regex(r"(?<!x)y"), "unsupported-regex", "look"),
    (Regex(r"\bword"), "unsupported-regex", r"\b"),
    (Regex(r"[^\s\S]"), "unsatisfiable", "match nothing"),
    (JsonSchema("{not json"), "bad-schema", "not valid JSON"),
    (JsonSchema(json.dumps({"type": "strng"})), "bad-schema", "invalid JSON schema"),
    (JsonSchema(json.dumps({"type": "array", "uniqueItems": True})), "unsupported-schema", "'uniqueItems'"),
    (
        JsonSchema(json.dumps({"type": "object", "dependentSchemas": {"a": {}}})),
        "unsupported-schema",
        "dependentSchemas",
    ),
    (JsonSchema("false"), "unsatisfiable", "allows no value"),
    (Grammar("start: 'a' |"), "bad-grammar", "invalid Lark grammar"),
    (Grammar("foo: 'a'"), "bad-grammar", "invalid Lark grammar"),
    (Choice(()), "unsatisfiable", "empty choice"),
    (All((Choice(("abc", "de")), MaxChars(1))), "unsatisfiable", "shorter than every option"),
    (All((Choice(("x", "y")), IntType())), "unsatisfiable", "no option is a valid int"),
    (All((Choice(("a\nb", "c\n")), Stop("\n", False))), "unsatisfiable", "stop"),
    (All((Choice(("ab", "cab")), Stop("a", True))), "unsatisfiable", "stop"),
    (All((Regex("[a-z]{5,}"), MaxChars(3))), "unsatisfiable", "no value satisfies"),
    (All((IntType(), BoolType())), "unsatisfiable", "no value satisfies int and bool"),
    (All((JsonSchema(OBJ), MaxChars(5))), "unsatisfiable", "shortest value"),
    (All((JsonSchema(OBJ), IntType())), "conflict", "cannot be combined"),
    (MaxTokens(0), "unsatisfiable", "no room"),
    (Stop("", True), "unsatisfiable", "empty stop"),
]


@pytest.mark.parametrize("constraint,code,text", ERRORS)
def test_check_errors(constraint, code, text):
    problems = [p for p in check_constraint(constraint) if p.severity == "error"]
    assert problems, constraint
    assert problems[0].code == code
    assert text in problems[0].message


OK = [
    None,
    Regex(r"[0-9]{3}-[0-9]{4}"),
    Regex(r"^\d+$"),
    IntType(),
    BoolType(),
    Choice(("yes", "no")),
    All((Choice(("ab\n", "c")), Stop("\n", True))),
    All((Stop("\n", False), MaxTokens(40))),
    JsonSchema(OBJ),
    All((JsonSchema(OBJ), MaxChars(40))),
    Grammar('start: NUMBER ("+" NUMBER)*\nNUMBER: /[0-9]+/\n'),
    All((Regex("[a-z]+"), MaxChars(3))),
]


@pytest.mark.parametrize("constraint", OK)
def test_check_ok(constraint):
    assert [p for p in check_constraint(constraint) if p.severity == "error"] == []


def test_warnings_for_dead_options():
    problems = check_constraint(All((Choice(("1", "x")), IntType())))
    assert [p.severity for p in problems] == ["warning"] and "'x'" in problems[0].message


def test_check_is_torch_free():
    code = (
        "import sys, json\n"
        "from lmlang.constraints.check import check_constraint\n"
        "from lmlang.constraints.lower import lower\n"
        "from lmlang.constraints.spec import *\n"
        "for c in [Regex('(a'), JsonSchema(json.dumps({'type': 'object'})), Grammar('start: \"a\"'),\n"
        "          All((Choice(('1', '2')), IntType(), MaxChars(1))), All((JsonSchema('{}'), MaxChars(9)))]:\n"
        "    check_constraint(c); lower(c)\n"
        "bad = [m for m in ('torch', 'transformers', 'xgrammar') if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_disjoint_one_of_is_enforced_as_any_of():
    disjoint = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    tagged = {
        "oneOf": [
            {"type": "object", "properties": {"kind": {"const": "a"}, "x": {"type": "integer"}}, "required": ["kind"]},
            {"type": "object", "properties": {"kind": {"const": "b"}}, "required": ["kind"]},
        ]
    }
    overlapping = {"oneOf": [{"type": "number"}, {"type": "integer"}]}
    assert check_constraint(JsonSchema(json.dumps(disjoint))) == []
    assert check_constraint(JsonSchema(json.dumps(tagged))) == []
    problems = check_constraint(JsonSchema(json.dumps(overlapping)))
    assert problems and problems[0].code == "unsupported-schema" and "oneOf" in problems[0].message


def test_unknown_format_is_refused_unless_the_script_opts_to_annotate():
    schema = json.dumps({"type": "string", "format": "topic"})
    problems = check_constraint(JsonSchema(schema))
    assert [p.code for p in problems] == ["unsupported-format"] and problems[0].message.startswith("#/format:")
    assert check_constraint(JsonSchema(schema, formats="annotate")) == []


def test_constraint_answers_are_cached_on_disk(lmlang_home, monkeypatch):
    """A regex/schema/grammar is judged once; later checks read the answer back
    (so `lmlang check` skips jsonschema and llguidance), and a damaged cache
    entry is recomputed, never trusted."""
    from lmlang.constraints import check as CK
    from lmlang.constraints.spec import JsonSchema

    bad = JsonSchema('{"type": "object", "properties": {"a": {"type": 3}}}')
    first = CK.check_constraint_cached(bad)
    assert first and first[0].code == "bad-schema"
    files = list((lmlang_home / "check").glob("*.json"))
    assert len(files) == 1

    calls = []
    monkeypatch.setattr(CK, "check_constraint", lambda c: calls.append(c) or [])
    assert CK.check_constraint_cached(bad) == first and calls == []  # from disk
    files[0].write_text("{not json")
    assert CK.check_constraint_cached(bad) == [] and calls == [bad]  # recomputed
    assert CK.check_constraint_cached(JsonSchema('{"type": "integer"}')) == [] and len(calls) == 2
