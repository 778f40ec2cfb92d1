"""Inline JSON types (`{ name: str, age: int(0..150), tags?: [str] }`) -> JSON Schema.

Objects are closed (additionalProperties: false) and required unless `?`,
so what the model writes is exactly what the type says. Numbers are bounded
where the type leaves an end open: an `int` within +-(2**53 - 1), the range
every JSON reader (JavaScript's included) reads exactly; a `float` within
+-1e16, written without an exponent, so it is always a finite double and a
model never writes hundreds of digits."""

from __future__ import annotations

from . import ast as A
from .suggest import did_you_mean

SCALAR_SCHEMAS = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "null": {"type": "null"},
    "any": {},
}


JSON_INT_MAX = 2**53 - 1  # open ends of an inline `int`
JSON_FLOAT_MAX = 1e16  # open ends of an inline `float`
_DEFAULT_BOUNDS = {"int": (-JSON_INT_MAX, JSON_INT_MAX), "float": (-JSON_FLOAT_MAX, JSON_FLOAT_MAX)}


class JsonTypeError(Exception):
    def __init__(self, message: str, node: A.Node, hint: str = ""):
        super().__init__(message)
        self.node, self.hint = node, hint


def to_schema(t: A.JsonType) -> dict:
    if isinstance(t, A.JObject):
        seen: set[str] = set()
        props, required = {}, []
        for f in t.fields:
            if f.name in seen:
                raise JsonTypeError(f"duplicate field '{f.name}'", f)
            seen.add(f.name)
            props[f.name] = to_schema(f.type)
            if not f.optional:
                required.append(f.name)
        schema = {"type": "object", "properties": props, "additionalProperties": False}
        if required:
            schema["required"] = required
        return schema
    if isinstance(t, A.JArray):
        schema = {"type": "array", "items": to_schema(t.item)}
        if t.range is not None:
            _check_range(t.range, integral=True)
            if t.range.lo is not None:
                schema["minItems"] = int(t.range.lo)
            if t.range.hi is not None:
                schema["maxItems"] = int(t.range.hi)
        return schema
    if isinstance(t, A.JEnum):
        return {"enum": list(dict.fromkeys(t.options))}
    if isinstance(t, A.JScalar):
        if t.name not in SCALAR_SCHEMAS:
            raise JsonTypeError(
                f"unknown JSON type '{t.name}'",
                t,
                did_you_mean(t.name, SCALAR_SCHEMAS) or "use str, int, float, bool, null, any, [T] or { ... }",
            )
        schema = dict(SCALAR_SCHEMAS[t.name])
        if t.name in _DEFAULT_BOUNDS:
            lo, hi = _DEFAULT_BOUNDS[t.name]
            if t.range is not None:
                _check_range(t.range, integral=t.name == "int")
                lo = lo if t.range.lo is None else t.range.lo
                hi = hi if t.range.hi is None else t.range.hi
            if lo > hi:
                assert t.range is not None  # the default bounds are never empty
                raise JsonTypeError(
                    f"empty range {lo}..{hi} (an open end of `{t.name}` is {hi if t.range.hi is None else lo})",
                    t.range,
                    f"an inline {t.name} lies within {_DEFAULT_BOUNDS[t.name][0]}.."
                    f"{_DEFAULT_BOUNDS[t.name][1]} unless both ends are given",
                )
            schema["minimum"], schema["maximum"] = lo, hi
        elif t.range is not None:
            if t.name == "str":
                _check_range(t.range, integral=True)
                if t.range.lo is not None:
                    schema["minLength"] = int(t.range.lo)
                if t.range.hi is not None:
                    schema["maxLength"] = int(t.range.hi)
            else:
                raise JsonTypeError(f"'{t.name}' takes no range", t.range)
        return schema
    raise JsonTypeError("unknown JSON type", t)  # pragma: no cover


def _check_range(r: A.JRange, integral: bool) -> None:
    for v in (r.lo, r.hi):
        if v is not None and integral and float(v) != int(v):
            raise JsonTypeError("this range takes integers", r)
    if r.lo is not None and r.hi is not None and r.lo > r.hi:
        raise JsonTypeError(f"empty range {r.lo}..{r.hi}", r, "write the lower bound first")
