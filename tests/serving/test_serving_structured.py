"""Constraint -> served request fields, and validation of returned values (no server)."""

from __future__ import annotations

import json

import pytest

from lmlang.constraints.lower import llguidance_json_options
from lmlang.constraints.shapes import FLOAT_REGEX, INT64_MAX, INT64_MIN, int_regex
from lmlang.constraints.spec import (
    All,
    BoolType,
    Choice,
    FloatType,
    Grammar,
    IntType,
    JsonSchema,
    MaxChars,
    MaxTokens,
    Regex,
    Stop,
)
from lmlang.serving.client import Completion
from lmlang.serving.structured import (
    ServedConstraint,
    ServedValueError,
    ServerFeatures,
    Unsupported,
    check_value,
    served_value,
    to_request,
    validate,
)

SCHEMA = JsonSchema(
    json.dumps(
        {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
            "additionalProperties": False,
        },
        sort_keys=True,
    )
)
VLLM = ServerFeatures()  # what lmlang's managed server runs
XGRAMMAR = ServerFeatures(engine="vllm", structured=True, backend="auto")
OPENAI = ServerFeatures(engine="openai", structured=False, backend="none")
LAYOUT = llguidance_json_options()

# (constraint, expected kwargs on lmlang's managed vLLM)
MAPPING = [
    (None, {}),
    (Choice(("yes", "no")), {"structured": {"choice": ["yes", "no"]}}),
    (Regex(r"^[0-9]{3}-[0-9]{4}$"), {"structured": {"regex": "[0-9]{3}-[0-9]{4}"}}),
    (IntType(), {"structured": {"regex": int_regex(INT64_MIN, INT64_MAX)}}),  # int64 when unbounded
    (IntType(0, 150), {"structured": {"regex": "(?:[0-9]|[1-9][0-9]|(?:1(?:[0-4][0-9]|50)))"}}),
    (FloatType(), {"structured": {"regex": FLOAT_REGEX}}),
    (BoolType(), {"structured": {"regex": "true|false"}}),
    (SCHEMA, {"structured": {"json": {**json.loads(SCHEMA.schema), "x-guidance": LAYOUT}}}),
    (Grammar('start: "a"+ "b"'), {"structured": {"grammar": 'start: "a"+ "b"'}}),
    (
        All((Regex("[a-z]+"), MaxChars(5))),
        {"structured": {"grammar": "start: VALUE\nVALUE: /[a-z]+/ & /(?s:.{0,5})/\n"}},
    ),
    (MaxChars(10), {"structured": {"regex": "(?s:.{0,10})"}}),
    (All((Stop("\n", False), Stop(".", True))), {"stop": ["\n", "."], "include_stop": True}),
    (MaxTokens(7), {"max_tokens": 7}),
    (
        All((Choice(("red", "green", "blue")), MaxChars(4), MaxTokens(3))),
        {"structured": {"choice": ["red", "blue"]}, "max_tokens": 3},
    ),
    (All((Choice(("12", "x", "7")), IntType())), {"structured": {"choice": ["12", "7"]}}),
]


@pytest.mark.parametrize("constraint,expected", MAPPING, ids=lambda v: type(v).__name__)
def test_mapping_on_the_managed_server(constraint, expected):
    served = to_request(constraint, VLLM)
    assert isinstance(served, ServedConstraint)
    assert served.kwargs() == expected


@pytest.mark.parametrize(
    "constraint,feature",
    [
        (All((SCHEMA, MaxChars(20))), "len(x) <= 20 on a JSON schema"),
        (All((Grammar('start: "a"+'), MaxChars(3))), "len(x) <= 3 on a grammar"),
        (All((SCHEMA, Regex("x"))), "this combination of constraints"),
    ],
)
def test_what_no_server_can_enforce(constraint, feature):
    got = to_request(constraint, VLLM)
    assert isinstance(got, Unsupported) and got.feature == feature
    problem = got.problem("served")
    assert problem.code == "served-unsupported" and "served model 'served'" in problem.message


def test_other_backends_lose_exactness_where_they_must():
    bounded = to_request(All((Regex("[a-z]+"), MaxChars(5))), XGRAMMAR)
    assert isinstance(bounded, Unsupported) and "llguidance" in bounded.message
    js = to_request(SCHEMA, XGRAMMAR)
    assert js.structured == {"json": json.loads(SCHEMA.schema)} and js.semantic_json
    assert to_request(Choice(("a", "b")), XGRAMMAR).structured == {"choice": ["a", "b"]}


def test_plain_openai_servers():
    assert isinstance(to_request(Choice(("a", "b")), OPENAI), Unsupported)
    assert isinstance(to_request(MaxChars(3), OPENAI), Unsupported)
    keep = to_request(Stop(".", True), OPENAI)
    assert isinstance(keep, Unsupported) and "stops at" in keep.feature
    drop = to_request(All((Stop(".", False), MaxTokens(9))), OPENAI)
    assert drop.kwargs() == {"stop": ["."], "max_tokens": 9}


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "constraint,value,kw,problem",
    [
        (Choice(("yes", "no")), "yes", {}, None),
        (Choice(("yes", "no")), "maybe", {}, "not one of the options"),
        (Regex("[0-9]{3}"), "123", {}, None),
        (Regex("[0-9]{3}"), "12", {}, "ended before it was complete"),
        (Regex("[0-9]{3}"), "12", {"ended_by": "length"}, "cut at max_tokens"),
        (Regex("[0-9]{3}"), "12a", {}, "leaves its regex shape after '12'"),
        (IntType(0, 150), "150", {}, None),
        (IntType(0, 150), "151", {}, "leaves its int shape"),
        (FloatType(), "-3.25e2", {}, None),
        (BoolType(), "True", {}, "leaves its bool shape"),
        (SCHEMA, '{"age": 3, "name": "Ann"}', {}, None),
        (SCHEMA, '{"age":3,"name":"Ann"}', {}, "leaves its json shape"),
        (SCHEMA, '{"age": 3}', {}, "leaves its json shape"),
        (Grammar('start: "a"+ "b"'), "aab", {}, None),
        (Grammar('start: "a"+ "b"'), "aa", {}, "ended before"),
        (All((Regex("[a-z]+"), MaxChars(5))), "abcdef", {}, "6 characters"),
        (MaxTokens(3), "a b c d", {"completion_tokens": 4}, "4 tokens"),
        # a stop ends the value early: a prefix of the shape is enough, as in local decoding
        (All((Regex("[a-z]+,[a-z]+"), Stop(",", False))), "abc", {"stop_matched": ","}, None),
        (All((Regex("[a-z]+,[a-z]+"), Stop(",", False))), "ab1", {"stop_matched": ","}, "leaves its regex shape"),
        (All((Stop(".", True),)), "Hi.", {"stop_matched": "."}, None),
        (All((Stop(".", True),)), "Hi. There", {}, "contains the stop string '.'"),
        (All((Stop("\n", False),)), "a\nb", {}, "contains the stop string"),
        (All((Stop("\n", False),)), "ab", {"stop_matched": "#"}, "not one of its stop strings"),
        (SCHEMA, '{ "age" : 3, "name":"Ann" }', {"semantic_json": True}, None),
        (SCHEMA, '{"age": "3", "name": "Ann"}', {"semantic_json": True}, "breaks its JSON schema"),
    ],
)
def test_check_value(constraint, value, kw, problem):
    got = check_value(value, constraint, **kw)
    if problem is None:
        assert got is None
    else:
        assert got is not None and problem in got


def test_validate_names_the_server_and_the_request():
    with pytest.raises(ServedValueError) as err:
        validate("maybe", Choice(("yes", "no")), url="http://127.0.0.1:9/v1", request="POST /completions (x)")
    assert "server http://127.0.0.1:9/v1, POST /completions (x): returned 'maybe'" in str(err.value)


def _completion(text, finish="stop", reason=None, tokens=None):
    return Completion(
        text=text, finish_reason=finish, stop_reason=reason, request="POST /completions", completion_tokens=tokens
    )


def test_served_value_trims_stops_by_stop_reason():
    c = All((Stop("\n", False), Stop(".", True)))
    served = to_request(c, VLLM)
    assert served_value(_completion("Paris.", reason="."), served, c) == "Paris."
    assert served_value(_completion("Paris\n", reason="\n"), served, c) == "Paris"
    assert served_value(_completion("Paris"), served, c) == "Paris"


def test_served_value_normalises_json_from_other_backends():
    served = to_request(SCHEMA, XGRAMMAR)
    assert served_value(_completion('{"name":"Ann","age":3}'), served, SCHEMA) == '{"name": "Ann", "age": 3}'
    with pytest.raises(ServedValueError, match="breaks its JSON schema"):
        served_value(_completion('{"name": "Ann"}'), served, SCHEMA)


def test_served_value_rejects_a_cut_value():
    c = All((SCHEMA, MaxTokens(4)))
    served = to_request(c, VLLM)
    assert served.notes and "closing path" in served.notes[0]
    with pytest.raises(ServedValueError, match="cut at max_tokens"):
        served_value(_completion('{"age": 1', finish="length", tokens=4), served, c)
