"""`@frozen`: a frozen dataclass whose methods are shared, not generated.

Why not `@dataclass(frozen=True)`: on Python 3.11 it compiles six functions
per class with `exec` (`__init__`, `__repr__`, `__eq__`, `__hash__`,
`__setattr__`, `__delattr__`), about 1.2 ms a class. The front-end declares
~90 such classes (AST nodes, graph specs, constraints), which made class
creation alone a third of `lmlang check`'s time budget.

Here the fields are collected as dataclasses records them (real
`dataclasses.Field`s, but without dataclasses' per-field typing lookups; see
`_collect_fields`), and one set of ordinary functions serves every class,
reading a field table computed once per class. The result is still a dataclass:
`dataclasses.fields`, `replace`, `asdict`, `is_dataclass` and `match` work, and
the semantics are the same as frozen=True: assignment raises
`FrozenInstanceError`, equality compares same-class instances field by field
(fields declared `compare=False` left out), the hash is the hash of those
fields, kw_only fields and default factories behave as in dataclasses.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from dataclasses import MISSING, FrozenInstanceError

# A version check, not try/except ImportError: mypy (python_version 3.10) follows it.
if sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:  # Python 3.10: typing_extensions (a pydantic dependency)
    from typing_extensions import dataclass_transform

__all__ = ["frozen", "FrozenInstanceError", "children", "field_names", "walk"]


@dataclass_transform(frozen_default=True, kw_only_default=False, field_specifiers=(dataclasses.field,))
def frozen(cls=None, /):
    """Class decorator; use bare (`@frozen`)."""
    if cls is None:
        return frozen
    if hasattr(cls, "__slots__"):
        raise TypeError(f"@frozen {cls.__name__}: fields live in the instance dict (no __slots__)")
    if cls.__dict__.get("__doc__") is None:
        cls.__doc__ = cls.__name__  # (as before: dataclasses would have written a signature)
    fields = _collect_fields(cls)
    cls.__dataclass_fields__ = fields
    cls.__dataclass_params__ = _PARAMS
    plain = [f for f in fields.values() if f._field_type is _FIELD_KIND]  # what dataclasses.fields() returns
    init_fields = [f for f in plain if f.init]
    cls._lm_positional = tuple((f.name, f.default, f.default_factory) for f in init_fields if not f.kw_only)
    cls._lm_keyword = tuple((f.name, f.default, f.default_factory) for f in init_fields if f.kw_only)
    cls._lm_compare = tuple(f.name for f in plain if f.compare)
    cls._lm_repr = tuple(f.name for f in plain if f.repr)
    setattr(cls, "__match_args__", tuple(name for name, _, _ in cls._lm_positional))  # (read-only to mypy)
    names = tuple(f.name for f in plain)
    cls._lm_fields = staticmethod(lambda: names)
    own = cls.__dict__
    for name, method in (
        ("__init__", _init),
        ("__repr__", _repr),
        ("__eq__", _eq),
        ("__setattr__", _setattr),
        ("__delattr__", _delattr),
    ):
        if name not in own:
            setattr(cls, name, method)
    # dataclasses sets __hash__ = None on a class that defines __eq__; frozen
    # value objects hash by value unless the class wrote its own.
    if own.get("__hash__") is None:
        cls.__hash__ = _hash
    return cls


# What dataclasses.dataclass(init=False, repr=False, eq=False) records on a
# class, taken once from a probe class: every @frozen class shares them.
_PROBE: typing.Any = dataclasses.dataclass(init=False, repr=False, eq=False)(
    type("_Probe", (), {"__doc__": "probe", "__annotations__": {"x": "int"}})
)
_PARAMS = _PROBE.__dataclass_params__
_FIELD_KIND = _PROBE.__dataclass_fields__["x"]._field_type  # a plain field (not ClassVar, not InitVar)


def _collect_fields(cls) -> dict:
    """The fields dataclasses would record for `cls` (bases' first, then its
    own annotations in order), as real `dataclasses.Field`s, so
    `dataclasses.fields`, `replace` and `asdict` work. Why not call dataclasses.dataclass: per field it resolves the
    annotation string against typing (ClassVar? InitVar? KW_ONLY?), ~70 us a
    class, a tenth of `lmlang check`'s start over ~170 classes. A frozen
    class declares plain fields only; the rest is refused here, not guessed."""
    fields: dict = {}
    for base in cls.__mro__[-1:0:-1]:
        base_fields = getattr(base, "__dataclass_fields__", None)
        if base_fields is not None:
            fields.update(base_fields)
    own = cls.__dict__
    for name, annotation in own.get("__annotations__", {}).items():
        if _special(annotation):
            raise TypeError(f"@frozen {cls.__name__}.{name}: a frozen class declares plain fields only")
        default = own.get(name, MISSING)
        if isinstance(default, dataclasses.Field):
            f = default
            if f.default is MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, f.default)
        else:
            f = dataclasses.field(default=default)
        if f.default.__class__.__hash__ is None:  # dataclasses' mutable-default check
            raise ValueError(f"mutable default {type(f.default)} for field {name} is not allowed: use default_factory")
        f.name, f.type = name, annotation
        f._field_type = _FIELD_KIND  # type: ignore[attr-defined]  # (dataclasses' own marker)
        if f.kw_only is MISSING:
            f.kw_only = False
        fields[name] = f
    for name, value in own.items():
        if isinstance(value, dataclasses.Field) and name not in fields:
            raise TypeError(f"{name!r} is a field but has no type annotation")
    return fields


def _special(annotation) -> bool:
    """An annotation dataclasses would not read as a plain field: ClassVar,
    InitVar or KW_ONLY, written as a string or as the object."""
    if isinstance(annotation, str):
        return _SPECIAL.match(annotation) is not None
    special = (typing.ClassVar, dataclasses.InitVar, dataclasses.KW_ONLY)
    return (
        annotation in special
        or typing.get_origin(annotation) is typing.ClassVar
        or isinstance(annotation, dataclasses.InitVar)
    )


_SPECIAL = re.compile(r"\s*(?:\w+\s*\.\s*)?(?:ClassVar|InitVar|KW_ONLY)\b")


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
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _delattr(self, name):
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
