"""`lmlang.frozen`: frozen dataclasses with shared methods behave as
`@dataclass(frozen=True)` does (the AST, graph specs and constraints rely on it)."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from lmlang import ast as A
from lmlang.frozen import FrozenInstanceError, frozen
from lmlang.graph import QuerySpec
from lmlang.source import Span


@frozen
class Base:
    span: int = dataclasses.field(default=0, compare=False, repr=False, kw_only=True)


@frozen
class Point(Base):
    x: int
    y: int = 2
    tags: tuple = dataclasses.field(default_factory=tuple)


@frozen
class Named(Point):
    name: str = "p"

    def __repr__(self):
        return f"<{self.name}>"


def test_init_defaults_kw_only_and_factories():
    p = Point(1)
    assert (p.x, p.y, p.tags, p.span) == (1, 2, (), 0)
    q = Point(1, 3, ("a",), span=7)
    assert (q.x, q.y, q.tags, q.span) == (1, 3, ("a",), 7)
    assert Point(x=1, y=5).y == 5


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: Point(), "missing required argument: 'x'"),
        (lambda: Point(1, 2, (), 4), "takes 3 positional arguments but 4 were given"),
        (lambda: Point(1, x=2), "multiple values for argument 'x'"),
        (lambda: Point(1, z=2), "unexpected keyword argument 'z'"),
    ],
)
def test_bad_calls_raise_type_error(call, message):
    with pytest.raises(TypeError, match=message):
        call()


def test_frozen():
    p = Point(1)
    with pytest.raises(FrozenInstanceError):
        p.x = 2
    with pytest.raises(FrozenInstanceError):
        del p.x
    assert issubclass(FrozenInstanceError, AttributeError)


def test_equality_and_hash_ignore_compare_false_fields():
    assert Point(1, span=1) == Point(1, span=2)
    assert hash(Point(1, span=1)) == hash(Point(1, span=2))
    assert Point(1) != Point(2)
    assert Point(1) != Named(1)  # different classes never compare equal
    assert len({Point(1), Point(1), Point(2)}) == 2


def test_repr_and_own_methods_win():
    assert repr(Point(1)) == "Point(x=1, y=2, tags=())"  # span is repr=False
    assert repr(Named(1)) == "<p>"


def test_dataclass_tools_work():
    p = Point(1, span=3)
    assert dataclasses.is_dataclass(p)
    assert [f.name for f in dataclasses.fields(p)] == ["span", "x", "y", "tags"]
    r = dataclasses.replace(p, y=9)
    assert (r.x, r.y, r.span) == (1, 9, 3)
    assert dataclasses.asdict(p) == {"span": 3, "x": 1, "y": 2, "tags": ()}
    assert Point.__match_args__ == ("x", "y", "tags")
    match p:
        case Point(x, y):
            assert (x, y) == (1, 2)


def test_pickle_and_copy_round_trip():
    p = Point(1, 2, ("t",), span=5)
    for q in (pickle.loads(pickle.dumps(p)), copy.deepcopy(p), copy.copy(p)):
        assert q == p and q.span == 5


def test_real_nodes_hash_by_value():
    s1, s2 = Span(1, 1, 1, 2, "a.lm"), Span(3, 1, 3, 2, "b.lm")
    assert A.Literal(1, span=s1) == A.Literal(1, span=s2)
    assert hash(A.Literal("x", span=s1)) == hash(A.Literal("x", span=s2))
    assert dataclasses.is_dataclass(QuerySpec)


def test_walk_visits_every_node_in_source_order_without_recursion():
    from lmlang import ast as A
    from lmlang.parser import parse

    prog = parse('flow {\n x = 1\n if x == 1 { y = [x, 2] } else { y = [] }\n emit y\n}\n', "<t>")
    names = [type(n).__name__ for n in prog.walk()]
    assert names[:4] == ["Program", "FlowDecl", "Assign", "Lit"]
    assert names.count("Var") == 3 and names.count("Lit") == 3
    flow = prog.decls[0]
    assert [type(c).__name__ for c in flow.children()] == ["Assign", "If", "Emit"]
    # A deep chain walks iteratively.
    e = A.Lit(0, span=None)
    for _ in range(5000):
        e = A.UnaryOp("-", e, span=None)
    assert sum(1 for _ in e.walk()) == 5001


def test_did_you_mean_one_format():
    from lmlang.suggest import did_you_mean

    assert did_you_mean("tis", ["ties", "linear"]) == "did you mean 'ties'?"
    assert did_you_mean("zzz", ["ties", "linear"]) == ""
    assert did_you_mean("zzz", ["ties", "linear"], known="merge methods") == "merge methods: ties, linear"


_FIELD_ATTRS = ("name", "type", "default", "default_factory", "init", "repr", "hash", "compare", "metadata", "kw_only")


def test_fields_are_the_ones_dataclasses_records():
    """frozen collects fields itself (not through dataclasses.dataclass): the
    Field objects match what @dataclass(frozen=True) makes of the same body."""

    def body(base):
        class C(base):
            a: int
            b: str = "x"
            c: tuple = dataclasses.field(default_factory=tuple, metadata={"m": 1})
            d: int = dataclasses.field(default=0, compare=False, repr=False, kw_only=True)

        return C

    ours = frozen(body(Base))
    theirs = dataclasses.dataclass(frozen=True)(
        body(
            dataclasses.dataclass(frozen=True)(
                type(
                    "B",
                    (),
                    {
                        "__annotations__": {"span": "int"},
                        "span": dataclasses.field(default=0, compare=False, repr=False, kw_only=True),
                    },
                )
            )
        )
    )
    assert [tuple(getattr(f, a) for a in _FIELD_ATTRS) for f in dataclasses.fields(ours)] == [
        tuple(getattr(f, a) for a in _FIELD_ATTRS) for f in dataclasses.fields(theirs)
    ]
    assert (
        ours.b == "x" and not hasattr(ours, "a") and not hasattr(ours, "c")
    )  # class attributes as dataclasses leaves them
    assert dataclasses.asdict(ours(1, span=2)) == {"span": 2, "a": 1, "b": "x", "c": (), "d": 0}


@pytest.mark.parametrize("annotation", ["ClassVar[int]", "typing.ClassVar[int]", "InitVar[int]", "KW_ONLY"])
def test_special_annotations_are_refused(annotation):
    with pytest.raises(TypeError, match="plain fields only"):
        frozen(type("C", (), {"__annotations__": {"x": annotation}}))


def test_a_mutable_default_is_refused_as_dataclasses_does():
    with pytest.raises(ValueError, match="mutable default"):
        frozen(type("C", (), {"__annotations__": {"x": "list"}, "x": []}))
    with pytest.raises(TypeError, match="no type annotation"):
        frozen(type("C", (), {"x": dataclasses.field(default=1)}))


def test_slots_are_refused():
    with pytest.raises(TypeError, match="no __slots__"):
        frozen(type("C", (), {"__slots__": ("x",), "__annotations__": {"x": "int"}}))
