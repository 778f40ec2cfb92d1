"""What the front end reads out of option blocks and model expressions.

Option blocks (`{ rank: 8, base: m }`, `merge ties { models: {...} }`) are
parsed as generic entries whose keys read as model references; these
functions give their plain meaning, for the checker (which validates them)
and the compiler (which lowers them) alike:

* `plain_value`: a literal or list of literals as Python data, else NOT_PLAIN;
* `key_name` / `key_text`: an entry's key as an option name;
* `merge_members`: a merge's `models:` as (model expression, weight) pairs;
* `model_refs` / `source_refs`: the declared names a model expression or an
  adapter source refers to, one rule for every pass that follows references
  (cycle detection, `compare --swap`).
"""

from __future__ import annotations

from typing import Iterator

from . import ast as A

NOT_PLAIN = object()


def plain_value(v):
    """A block value as a plain Python value, or NOT_PLAIN (models, blocks)."""
    if isinstance(v, A.Literal):
        return v.value
    if isinstance(v, A.ListValue):
        items = [plain_value(x) for x in v.items]
        return NOT_PLAIN if any(x is NOT_PLAIN for x in items) else items
    return NOT_PLAIN


def key_name(key) -> str | None:
    """An entry's key as an option name, or None when it is not a bare word."""
    if isinstance(key, A.DefaultModel):
        return "default"  # `default:` reads as a key in option blocks
    return key.name if isinstance(key, A.ModelRef) else None


def key_text(key) -> str:
    """An entry's key as written, for messages (`density` or `"density"`)."""
    if isinstance(key, A.ModelRef):
        return key.name
    if isinstance(key, A.Literal):
        return str(key.value)
    if isinstance(key, A.DefaultModel):
        return "default"
    return "<expression>"


def merge_members(value) -> list:
    """A merge's `models:` as (model expression, weight value or None):
    a map `{ m: 1.0, n: { weight: 0.5 } }`, or a list `[m, n]` for methods
    that take no per-model weight (slerp, model_stock). [] if neither."""
    if isinstance(value, A.Block):
        return [(e.key, e.value) for e in value.entries]
    if isinstance(value, A.ListValue):
        return [(item, None) for item in value.items]
    return []


def merge_inputs(block: A.Block) -> Iterator:
    """The model expressions a merge block builds from: its `base:` value
    and the keys of its `models:`. Other entries are options, whose keys
    and bare-word values (`compat: mergekit`) name no model."""
    for entry in block.entries:
        key = key_name(entry.key)
        if key == "base":
            yield entry.value
        elif key == "models":
            for member, _weight in merge_members(entry.value):
                yield member


def model_refs(e) -> Iterator[tuple[str, A.Node]]:
    """(name, node) of every declared model or adapter a model expression
    refers to directly (not through other declarations), in source order.
    A router call's arguments are flow values, not models."""
    if isinstance(e, A.ModelRef):
        yield e.name, e
    elif isinstance(e, A.ScaledAdapter):
        yield e.adapter, e
    elif isinstance(e, A.MergeExpr):
        for member in merge_inputs(e.options):
            yield from model_refs(member)
    elif isinstance(e, A.FuseExpr):
        for m in e.members.entries:
            yield from model_refs(m.key)
    elif isinstance(e, A.Adapted):
        for child in e.children():
            yield from model_refs(child)


def source_refs(source) -> Iterator[tuple[str, A.Node]]:
    """(name, node) of the declarations an adapter's source refers to: a
    trained adapter's `base:` model, the adapters an adapter merge merges."""
    if isinstance(source, A.TrainSource):
        for entry in source.options.entries:
            if key_name(entry.key) in ("base", "compatible_with"):
                yield from model_refs(entry.value)
    elif isinstance(source, A.AdapterMerge):
        for entry in source.options.entries:  # an adapter merge has no base: only its models
            if key_name(entry.key) == "models":
                for member, _weight in merge_members(entry.value):
                    yield from model_refs(member)
    elif isinstance(source, A.AdapterCompress):  # the adapter it compresses
        yield source.adapter, source
