"""`lmlang.frozen`: frozen dataclasses with shared methods behave as
`@dataclass(frozen=True)` does (the AST, graph specs and constraints rely on it)."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from lmlang import frozen as F

from lmlang import ast as A
from lmlang.frozen import FrozenInstanceError, field, frozen, record
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


def test_own_field_specs_give_the_fields_dataclasses_records():
    """`frozen.field` (what lmlang's classes write) and `dataclasses.field`
    declare the same fields; the dataclasses view is built on first access,
    once per class, and a base's Field objects are shared with subclasses
    (as dataclasses shares them)."""

    @frozen
    class Ours(Base):
        a: int
        c: tuple = field(default_factory=tuple, metadata={"m": 1})
        d: int = field(default=0, compare=False, repr=False, kw_only=True)

    @dataclasses.dataclass(frozen=True)
    class Theirs:
        span: int = dataclasses.field(default=0, compare=False, repr=False, kw_only=True)
        a: int = dataclasses.field()
        c: tuple = dataclasses.field(default_factory=tuple, metadata={"m": 1})
        d: int = dataclasses.field(default=0, compare=False, repr=False, kw_only=True)

    assert type(Ours.__dict__["__dataclass_fields__"]).__name__ == "_DataclassView"  # not built yet
    ours = [tuple(getattr(f, a) for a in _FIELD_ATTRS) for f in dataclasses.fields(Ours)]
    theirs = [tuple(getattr(f, a) for a in _FIELD_ATTRS) for f in dataclasses.fields(Theirs)]
    assert [t[1:] for t in ours] == [t[1:] for t in theirs]  # (type: a string here, a class there)
    assert [t[0] for t in ours] == ["span", "a", "c", "d"]
    assert isinstance(Ours.__dict__["__dataclass_fields__"], dict)  # built once, in place of the view
    assert dataclasses.fields(Ours)[0] is dataclasses.fields(Base)[0]
    assert Ours.__dataclass_params__.frozen and Ours.__dataclass_params__.eq
    o = Ours(1, span=4)
    assert dataclasses.replace(o, a=2) == Ours(2) and dataclasses.replace(o, a=2).span == 4
    assert dataclasses.asdict(o) == {"span": 4, "a": 1, "c": (), "d": 0}


def test_field_refuses_both_a_default_and_a_factory():
    with pytest.raises(ValueError, match="both default and default_factory"):
        field(default=(), default_factory=tuple)


def test_lmlangs_helpers_read_the_field_table():
    p = Point(1, span=3)
    assert [f.name for f in F.fields(Point)] == ["span", "x", "y", "tags"] == [f.name for f in F.fields(p)]
    assert F.fields(Point)[0].default == 0 and F.fields(Point)[1].default is F.MISSING
    q = F.replace(p, y=9)
    assert (q.x, q.y, q.span) == (1, 9, 3) and type(q) is Point
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        F.replace(p, z=1)

    @dataclasses.dataclass
    class Plain:
        a: int = 1

    assert F.is_dataclass(p) and F.is_dataclass(Point) and F.is_dataclass(Plain())
    assert not F.is_dataclass(3) and not F.is_dataclass(object)
    assert [f.name for f in F.fields(Plain)] == ["a"] and F.replace(Plain(), a=2) == Plain(2)


@record
class Counter:
    name: str
    seen: list = field(default_factory=list)
    total: int = 0
    note: str = field(default="", compare=False, repr=False)


def test_record_is_a_plain_mutable_dataclass():
    a, b = Counter("a"), Counter("a")
    assert a == b and a is not b
    a.seen.append(1)  # each instance has its own list
    assert b.seen == [] and a != b
    a.total = 5  # mutable
    assert a.total == 5
    assert Counter("x", note="n") == Counter("x", note="m")  # compare=False left out
    assert repr(Counter("x", [1])) == "Counter(name='x', seen=[1], total=0)"
    with pytest.raises(TypeError, match="unhashable"):
        hash(a)
    assert not Counter.__dataclass_params__.frozen
    assert dataclasses.asdict(Counter("x", [2])) == {"name": "x", "seen": [2], "total": 0, "note": ""}
    assert dataclasses.replace(a, name="z").seen is a.seen  # as dataclasses.replace: a shallow copy
    with pytest.raises(ValueError, match="mutable default"):
        record(type("C", (), {"__annotations__": {"x": "list"}, "x": []}))


def test_frozen_instance_error_is_dataclasses_own():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Point(1).x = 2
    assert FrozenInstanceError is dataclasses.FrozenInstanceError


def test_declaring_and_using_nodes_does_not_import_dataclasses():
    """The front end's classes are declared, built, compared, hashed and
    replaced without `dataclasses` (or `inspect`); the first access to the
    dataclasses view imports it, and dataclasses' tools then work."""
    code = (
        "import sys\n"
        "from lmlang import ast as A, frozen as F\n"
        "from lmlang.graph import specs\n"
        "from lmlang.checker.program import CheckedProgram\n"
        "from lmlang.source import Span\n"
        "s = Span(1, 1, 1, 2, 'a.lm')\n"
        "a, b = A.Literal(1, span=s), F.replace(A.Literal(2, span=s), value=1)\n"
        "assert a == b and hash(a) == hash(b) and F.is_dataclass(a)\n"
        "assert [f.name for f in F.fields(a)] == ['span', 'value']\n"
        "assert not {'dataclasses', 'inspect'} & set(sys.modules), 'imported early'\n"
        "import dataclasses\n"
        "assert [f.name for f in dataclasses.fields(a)] == ['span', 'value']\n"
        "assert dataclasses.replace(a, value=3).value == 3 and dataclasses.is_dataclass(CheckedProgram)\n"
        "print('ok')\n"
    )
    repo = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo)
    assert p.stdout.strip() == "ok", p.stderr


def test_a_dataclass_subclass_of_a_frozen_class_keeps_its_own_fields():
    @dataclasses.dataclass(frozen=True)
    class Sub(Point):
        extra: int = 0

    s = Sub(1, extra=5)
    assert [f.name for f in F.fields(s)] == ["span", "x", "y", "tags", "extra"]
    assert F.replace(s, x=3) == Sub(3, extra=5)

    @frozen
    class Again(Sub):
        more: str = ""

    assert [f.name for f in F.fields(Again)] == ["span", "x", "y", "tags", "extra", "more"]
    assert Again(1, more="m").extra == 0
