"""`@frozen` and `@record`: dataclasses whose methods are shared, not
generated, and that do not import `dataclasses` to be declared.

Why not `@dataclass(frozen=True)`: on Python 3.11 it compiles six functions
per class with `exec` (`__init__`, `__repr__`, `__eq__`, `__hash__`,
`__setattr__`, `__delattr__`), about 1.2 ms a class, and resolves every
annotation against typing. The front end declares ~170 such classes (AST
nodes, graph specs, constraints), and importing `dataclasses` itself pulls in
`inspect` (with `ast`, `dis`, `tokenize`): together a tenth of `lmlang check`.

Here each class records its fields as this module's `Field`s (written with
this module's `field(...)`), and one set of ordinary functions serves every
class, reading a field table computed once per class. lmlang's own code reads
the table through `fields()`, `replace()` and `is_dataclass()` below.

The classes are still dataclasses for everyone else: `__dataclass_fields__`
and `__dataclass_params__` are class-level descriptors that import
`dataclasses` on first access and build its real `Field` objects once per
class, so `dataclasses.fields`, `replace`, `asdict`, `is_dataclass` and
`match` work. The semantics are those of `@dataclass(frozen=True)` for
`@frozen` (assignment raises `dataclasses.FrozenInstanceError`, the hash is
the hash of the compared fields) and of a plain `@dataclass` for `@record`
(mutable, unhashable): equality compares same-class instances field by field
(fields declared `compare=False` left out), kw_only fields and default
factories behave as in dataclasses.
"""

from __future__ import annotations

import re
import sys
import types
import typing
from typing import TYPE_CHECKING, Any

# A version check, not try/except ImportError: mypy (python_version 3.10) follows it.
if sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:  # Python 3.10: typing_extensions (a pydantic dependency)
    from typing_extensions import dataclass_transform

if TYPE_CHECKING:
    from dataclasses import FrozenInstanceError

__all__ = [
    "frozen",
    "record",
    "field",
    "fields",
    "replace",
    "is_dataclass",
    "FrozenInstanceError",
    "children",
    "field_names",
    "walk",
]


class _Missing:
    """The marker for "no default" (this module's; `dataclasses.MISSING` in
    the real Field objects built for dataclasses)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
_NO_METADATA: types.MappingProxyType[str, Any] = types.MappingProxyType({})


class Field:
    """One field of a @frozen or @record class, as `field(...)` declares it
    (the subset of `dataclasses.Field` lmlang uses: every field is an
    `__init__` argument and hashes when it compares)."""

    __slots__ = ("name", "type", "default", "default_factory", "repr", "compare", "kw_only", "metadata", "_real")
    init = True  # (what dataclasses.Field says; kept so code reads both alike)

    def __init__(
        self, default: Any, default_factory: Any, repr: bool, compare: bool, kw_only: Any, metadata: dict | None
    ) -> None:
        if default is not MISSING and default_factory is not MISSING:
            raise ValueError("cannot specify both default and default_factory")
        self.name: str = ""
        self.type: Any = None
        self.default = default
        self.default_factory = default_factory
        self.repr = repr
        self.compare = compare
        self.kw_only = kw_only
        self.metadata = _NO_METADATA if metadata is None else types.MappingProxyType(metadata)
        self._real: Any = None  # the dataclasses.Field, once something asks for one

    def __repr__(self) -> str:
        return (
            f"Field(name={self.name!r}, default={self.default!r}, default_factory={self.default_factory!r}, "
            f"repr={self.repr}, compare={self.compare}, kw_only={self.kw_only}, metadata={self.metadata!r})"
        )


def field(
    *,
    default: Any = MISSING,
    default_factory: Any = MISSING,
    repr: bool = True,
    compare: bool = True,
    kw_only: Any = MISSING,
    metadata: dict | None = None,
) -> Any:
    """A field with options, as `dataclasses.field` (same keywords, less
    `init` and `hash`)."""
    return Field(default, default_factory, repr, compare, kw_only, metadata)


@dataclass_transform(frozen_default=True, kw_only_default=False, field_specifiers=(field,))
def frozen(cls=None, /):
    """Class decorator; use bare (`@frozen`): a frozen, hashable value class."""
    if cls is None:
        return frozen
    _declare(cls, frozen=True)
    own = cls.__dict__
    for name, method in (("__setattr__", _setattr), ("__delattr__", _delattr)):
        if name not in own:
            setattr(cls, name, method)
    # dataclasses sets __hash__ = None on a class that defines __eq__; frozen
    # value objects hash by value unless the class wrote its own.
    if own.get("__hash__") is None:
        cls.__hash__ = _hash
    return cls


@dataclass_transform(kw_only_default=False, field_specifiers=(field,))
def record(cls=None, /):
    """Class decorator; use bare (`@record`): a mutable class with fields, as
    a plain `@dataclass` makes one (`__init__`, `__repr__`, `__eq__`; no
    hash, since instances change)."""
    if cls is None:
        return record
    _declare(cls, frozen=False)
    if cls.__dict__.get("__hash__") is None:
        cls.__hash__ = None  # as dataclasses does for eq=True, frozen=False
    return cls


def _declare(cls, frozen: bool) -> None:
    """What both decorators do: the field table, the shared methods, and the
    lazy dataclasses view."""
    if hasattr(cls, "__slots__"):
        raise TypeError(f"@frozen {cls.__name__}: fields live in the instance dict (no __slots__)")
    if cls.__dict__.get("__doc__") is None:
        cls.__doc__ = cls.__name__  # (as before: dataclasses would have written a signature)
    specs = _collect_fields(cls)
    cls._lm_specs = specs
    cls._lm_positional = tuple((f.name, f.default, f.default_factory) for f in specs if not f.kw_only)
    cls._lm_keyword = tuple((f.name, f.default, f.default_factory) for f in specs if f.kw_only)
    cls._lm_compare = tuple(f.name for f in specs if f.compare)
    cls._lm_repr = tuple(f.name for f in specs if f.repr)
    setattr(cls, "__match_args__", tuple(name for name, _, _ in cls._lm_positional))  # (read-only to mypy)
    names = tuple(f.name for f in specs)
    cls._lm_fields = staticmethod(lambda: names)
    cls.__dataclass_fields__ = _DataclassView(cls, frozen, "__dataclass_fields__")
    cls.__dataclass_params__ = _DataclassView(cls, frozen, "__dataclass_params__")
    own = cls.__dict__
    for name, method in (("__init__", _init), ("__repr__", _repr), ("__eq__", _eq)):
        if name not in own:
            setattr(cls, name, method)


def _collect_fields(cls) -> tuple[Field, ...]:
    """The fields dataclasses would record for `cls`: bases' first (in MRO
    order, a redeclared name keeping its place), then its own annotations in
    order. Read from the class body, never resolved against typing (that is
    what made dataclasses slow to declare a class). A class declares plain
    fields only; ClassVar, InitVar and KW_ONLY are refused, not guessed."""
    fields: dict[str, Field] = {}
    for base in cls.__mro__[-1:0:-1]:
        for f in _base_fields(base):
            fields[f.name] = f
    own = cls.__dict__
    for name, annotation in own.get("__annotations__", {}).items():
        if _special(annotation):
            raise TypeError(f"@frozen {cls.__name__}.{name}: a frozen class declares plain fields only")
        default = own.get(name, MISSING)
        if isinstance(default, Field) or _is_dataclasses_field(default):
            f = default if isinstance(default, Field) else _from_dataclasses(default)
            if f.default is MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, f.default)
        else:
            f = Field(default, MISSING, True, True, MISSING, None)
        if f.default.__class__.__hash__ is None:  # dataclasses' mutable-default check
            raise ValueError(f"mutable default {type(f.default)} for field {name} is not allowed: use default_factory")
        f.name, f.type = name, annotation
        if f.kw_only is MISSING:
            f.kw_only = False
        fields[name] = f
    for name, value in own.items():
        if (isinstance(value, Field) or _is_dataclasses_field(value)) and name not in fields:
            raise TypeError(f"{name!r} is a field but has no type annotation")
    return tuple(fields.values())


def _base_fields(base) -> tuple[Field, ...]:
    """A base class's fields: its own table, or (a real dataclass as a base)
    those dataclasses recorded."""
    specs = base.__dict__.get("_lm_specs")
    if specs is not None:
        return specs
    real = base.__dict__.get("__dataclass_fields__")
    if real is None or isinstance(real, _DataclassView):
        return ()
    out = []
    for f in real.values():
        if f._field_type is not _dataclasses_field_kind():
            continue  # a ClassVar or InitVar pseudo-field: not a field of instances
        spec = _from_dataclasses(f)
        spec.name, spec.type, spec.kw_only = f.name, f.type, bool(f.kw_only)
        out.append(spec)
    return tuple(out)


def _is_dataclasses_field(value) -> bool:
    """A `dataclasses.field(...)` in a class body (tests and users may write
    one). Without `dataclasses` imported there can be none."""
    dc = sys.modules.get("dataclasses")
    return dc is not None and isinstance(value, dc.Field)


def _from_dataclasses(f) -> Field:
    """This module's Field for a `dataclasses.Field` (the options lmlang supports)."""
    if not f.init or f.hash is not None:
        raise TypeError("a @frozen/@record field is always an __init__ argument and hashes as it compares")
    missing = sys.modules["dataclasses"].MISSING

    def mine(value):
        return MISSING if value is missing else value

    metadata = dict(f.metadata) if f.metadata else None
    return Field(mine(f.default), mine(f.default_factory), f.repr, f.compare, mine(f.kw_only), metadata)


def _special(annotation) -> bool:
    """An annotation dataclasses would not read as a plain field: ClassVar,
    InitVar or KW_ONLY, written as a string or as the object (the last two
    exist only once `dataclasses` is imported)."""
    if isinstance(annotation, str):
        return _SPECIAL.match(annotation) is not None
    if annotation is typing.ClassVar or typing.get_origin(annotation) is typing.ClassVar:
        return True
    dc = sys.modules.get("dataclasses")
    return dc is not None and (annotation in (dc.InitVar, dc.KW_ONLY) or isinstance(annotation, dc.InitVar))


_SPECIAL = re.compile(r"\s*(?:\w+\s*\.\s*)?(?:ClassVar|InitVar|KW_ONLY)\b")


# ------------------------------------------------- the dataclasses view (lazy)


class _DataclassView:
    """`__dataclass_fields__` (or `__dataclass_params__`) of one class, built
    on first access: `dataclasses` is imported then, not when the class is
    declared. The real `Field`s are made once per field (a base's are shared
    with its subclasses, as dataclasses does), and both attributes then
    replace their descriptors on the class."""

    def __init__(self, cls, frozen: bool, attr: str):
        self.cls, self.frozen, self.attr = cls, frozen, attr

    def __get__(self, instance, owner):
        cls = self.cls
        real = {}
        for spec in cls._lm_specs:
            if spec._real is None:
                spec._real = _to_dataclasses(spec)
            real[spec.name] = spec._real
        cls.__dataclass_fields__ = real
        cls.__dataclass_params__ = _dataclasses_probe(self.frozen).__dataclass_params__
        return cls.__dict__[self.attr]


def _to_dataclasses(spec: Field):
    """The `dataclasses.Field` that `@dataclass` would have recorded for `spec`."""
    import dataclasses

    def theirs(value):
        return dataclasses.MISSING if value is MISSING else value

    f = dataclasses.field(
        default=theirs(spec.default),
        default_factory=theirs(spec.default_factory),
        repr=spec.repr,
        compare=spec.compare,
        kw_only=spec.kw_only,
        metadata=dict(spec.metadata) if spec.metadata else None,
    )
    f.name, f.type = spec.name, spec.type
    f._field_type = _dataclasses_field_kind()  # type: ignore[attr-defined]  # (dataclasses' own marker)
    return f


_PROBES: dict[bool, Any] = {}


def _dataclasses_probe(frozen: bool) -> Any:
    """A one-field class made by `dataclasses.dataclass(frozen=...)`, once:
    what dataclasses records on a class (its params, its plain-field marker)
    is read from it instead of from dataclasses' private names."""
    probe = _PROBES.get(frozen)
    if probe is None:
        import dataclasses

        body = {"__doc__": "probe", "__annotations__": {"x": "int"}}
        probe = _PROBES[frozen] = dataclasses.dataclass(frozen=frozen)(type("_Probe", (), body))
    return probe


def _dataclasses_field_kind() -> Any:
    """dataclasses' marker of a plain field (not ClassVar, not InitVar)."""
    return _dataclasses_probe(True).__dataclass_fields__["x"]._field_type


def __getattr__(name: str) -> Any:
    """`FrozenInstanceError` is dataclasses' own (imported when asked for)."""
    if name == "FrozenInstanceError":
        from dataclasses import FrozenInstanceError

        return FrozenInstanceError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------- helpers
# lmlang's code reads its classes through these, never through dataclasses
# (importing it costs `lmlang check` a tenth of its time).


def fields(class_or_instance) -> tuple[Field, ...]:
    """The fields of a @frozen/@record class or instance, in order, as this
    module's `Field`s (`name`, `type`, `default`, `metadata`, ...); any other
    dataclass through `dataclasses.fields`."""
    cls = class_or_instance if isinstance(class_or_instance, type) else type(class_or_instance)
    specs = _specs_of(cls)
    if specs is not None:
        return specs
    import dataclasses

    return dataclasses.fields(class_or_instance)  # type: ignore[return-value]


def replace(obj, /, **changes):
    """A copy of `obj` with some fields changed (`dataclasses.replace`)."""
    cls = type(obj)
    specs = _specs_of(cls)
    if specs is None:
        import dataclasses

        return dataclasses.replace(obj, **changes)
    for f in specs:
        if f.name not in changes:
            changes[f.name] = getattr(obj, f.name)
    return cls(**changes)


def _specs_of(cls) -> tuple[Field, ...] | None:
    """The field table of a @frozen/@record class (or of an undecorated
    subclass of one); None for a class dataclasses made, even one whose
    base is @frozen (its own table has the fields it added)."""
    for klass in cls.__mro__:
        own = klass.__dict__
        if "_lm_specs" in own:
            return own["_lm_specs"]
        if "__dataclass_fields__" in own:
            return None
    return None


def is_dataclass(obj) -> bool:
    """Whether `obj` is a dataclass or an instance of one (@frozen and
    @record classes included), without importing dataclasses: if it is not
    imported, no other dataclass exists."""
    cls = obj if isinstance(obj, type) else type(obj)
    if hasattr(cls, "_lm_specs"):
        return True
    return "dataclasses" in sys.modules and hasattr(cls, "__dataclass_fields__")


# ---------------------------------------------------------------- shared methods


def _init(self, *args, **kwargs):
    cls = type(self)
    positional = cls._lm_positional
    n = len(args)
    if n > len(positional):
        raise TypeError(f"{cls.__name__}() takes {len(positional)} positional arguments but {n} were given")
    # Straight into the instance dict (what object.__setattr__ does for a
    # field of a class without slots; `frozen` refuses __slots__): the AST
    # builds a thousand nodes a script.
    fields = self.__dict__
    for (name, _, _), value in zip(positional, args):
        fields[name] = value
    if kwargs:
        for name, _, _ in positional[:n]:
            if name in kwargs:
                raise TypeError(f"{cls.__name__}() got multiple values for argument '{name}'")
    for rest in (positional[n:], cls._lm_keyword):
        for name, default, factory in rest:
            if name in kwargs:
                value = kwargs.pop(name)
            elif default is not MISSING:
                value = default
            elif factory is not MISSING:
                value = factory()
            else:
                raise TypeError(f"{cls.__name__}() missing required argument: '{name}'")
            fields[name] = value
    if kwargs:
        raise TypeError(f"{cls.__name__}() got an unexpected keyword argument '{next(iter(kwargs))}'")
    post = getattr(self, "__post_init__", None)
    if post is not None:
        post()


def _repr(self):
    parts = ", ".join(f"{name}={getattr(self, name)!r}" for name in type(self)._lm_repr)
    return f"{type(self).__qualname__}({parts})"


def _values(self):
    return tuple(getattr(self, name) for name in type(self)._lm_compare)


def _eq(self, other):
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self):
    return hash(_values(self))


def _setattr(self, name, value):
    from dataclasses import FrozenInstanceError  # (an error path: dataclasses' own exception)

    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _delattr(self, name):
    from dataclasses import FrozenInstanceError

    raise FrozenInstanceError(f"cannot delete field {name!r}")


# ---------------------------------------------------------------- traversal
# One generic walk for every tree of frozen nodes (the AST, the flow IR):
# a node's children are the field values that are nodes of the same family,
# directly or inside tuples and lists, in field order. Passes then say what
# they look for, not how to walk.


def field_names(cls: type) -> tuple[str, ...]:
    """The names `dataclasses.fields` gives for a @frozen class, in order,
    without building the Field tuple each call."""
    return cls._lm_fields()  # type: ignore[attr-defined]


def children(node, kind: type):
    """The direct children of `node` that are instances of `kind`."""
    for name in type(node)._lm_fields():
        yield from _nodes_in(getattr(node, name), kind)


def walk(node, kind: type):
    """`node` and every node below it (instances of `kind`), depth first, in
    source order. Iterative: a 10,000-deep else-if chain does not recurse."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(list(children(n, kind))))


def _nodes_in(value, kind):
    if isinstance(value, kind):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _nodes_in(v, kind)
