"""The tables of docs/architecture.md are complete: a kind added to one
place but not the others fails here, not in a user's script."""

import importlib
import inspect

from lmlang.constraints import kinds as K
from lmlang.constraints import spec as C
from lmlang.constraints.lower import lower
from lmlang.graph.specs import CONSTRAINT_TYPES
from lmlang.highlight import KEYWORDS
from lmlang.models.sources import SOURCE_KINDS
from lmlang.router_kinds import ROUTER_KINDS

EXAMPLE = {
    C.Choice: C.Choice(("a", "b")),
    C.Regex: C.Regex("[a-z]+"),
    C.IntType: C.IntType(),
    C.FloatType: C.FloatType(),
    C.BoolType: C.BoolType(),
    C.JsonSchema: C.JsonSchema('{"type": "integer"}'),
    C.Grammar: C.Grammar('start: "x"'),
    C.AnyOf: C.AnyOf((C.IntType(), C.Choice(("none",)))),
}
# shapes known only when a query is called: lowered after runtime_lists.resolve
RUNTIME = {C.ChoiceParam: (C.ChoiceParam("labels"), {"labels": ["a", "b"]}, "choice")}


def test_every_constraint_class_has_one_kind():
    classes = {
        c for _, c in inspect.getmembers(C, inspect.isclass) if issubclass(c, C.Constraint) and c is not C.Constraint
    }
    assert classes == set(K.BY_CLASS)
    assert len({k.name for k in K.CONSTRAINT_KINDS.values()}) == len(K.CONSTRAINT_KINDS)
    assert set(CONSTRAINT_TYPES.values()) == classes


def test_every_shape_lowers_to_its_declared_language():
    assert set(K.SHAPES) == set(EXAMPLE) | set(RUNTIME)
    from lmlang.constraints.runtime_lists import resolve

    for cls, (c, env, source) in RUNTIME.items():
        assert lower(resolve({"x": c}, env)["x"]).source == source, cls
    for cls, c in EXAMPLE.items():
        plan = lower(c)
        kind = K.kind_of(c)
        assert plan.source == kind.name, cls
        want = {"regex": ("regex", "lark", "json"), "json": ("json",), "lark": ("lark",)}[kind.lowers_to]
        assert plan.kind in want, (cls, plan.kind)


def test_split_by_role_keeps_every_part():
    c = C.All((C.Regex("[a-z]+"), C.Stop(".", True), C.MaxTokens(9), C.MaxTokens(4), C.MaxChars(30)))
    parts = K.split(c)
    assert parts.shapes == (C.Regex("[a-z]+"),) and parts.stops == (C.Stop(".", True),)
    assert parts.max_tokens == 4 and parts.max_chars == 30


def test_is_types_and_keywords_come_from_the_table():
    assert K.IS_TYPES == {"int": C.IntType, "float": C.FloatType, "bool": C.BoolType}
    for word in ("matches", "is", "stops", "before", "grammar", "server", "vllm"):
        assert word in KEYWORDS, word


def test_runtime_names_in_the_tables_resolve():
    for kind in ROUTER_KINDS.values():
        module, _, attr = kind.runtime.partition(":")
        assert hasattr(importlib.import_module(module), attr), kind.name
    from lmlang.runtime.engines import ENGINES

    for kind in SOURCE_KINDS.values():
        module, cls = ENGINES[kind.engine]
        assert hasattr(importlib.import_module(module), cls), kind.name
