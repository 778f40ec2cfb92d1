"""Closed objects: lmlang writes only the properties a JSON schema names.

A JSON Schema object without `additionalProperties` allows any other key
(pydantic writes none unless a model sets `extra="forbid"`), so a model
decoding it may invent keys until its token budget runs out. lmlang
generates *closed* objects instead: an object schema that lists
`properties` gets `additionalProperties: false`, unless the schema says
otherwise explicitly (`additionalProperties`, `patternProperties` or
`unevaluatedProperties` on that object).

Closing an object narrows what the decoder may write, so every value stays
valid under the schema as written; it is done only where narrowing is sound
and keeps the schema satisfiable:

* only in positive positions: never under `not`, `if` or `oneOf` (narrowing
  a branch there can let through a value the schema forbids);
* never where objects are combined (`allOf` of several schemas, `then`,
  `else`, `dependentSchemas`, or composition keywords beside `properties`):
  the other schema may add the properties a closed one would forbid;
* only when every `required` name is listed in `properties` and
  `minProperties` can still be met.

Torch-free, backend-free: lowering, the check and the served-model
validation all see the closed schema.
"""

from __future__ import annotations

import json

from .pointer import resolve_local_ref

_OPEN = ("additionalProperties", "patternProperties", "unevaluatedProperties")
_COMBINED = ("allOf", "anyOf", "oneOf", "not", "$ref", "if", "then", "else", "dependentSchemas")
# Where subschemas sit: (keyword, how its value holds them)
_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_ONE = (
    "items",
    "additionalProperties",
    "additionalItems",
    "contains",
    "propertyNames",
    "not",
    "if",
    "then",
    "else",
    "unevaluatedProperties",
    "unevaluatedItems",
)
_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems", "items")
# Positions where narrowing a subschema is unsound or may conflict with another schema.
_EXCLUDING_ONE = ("not", "if", "then", "else")
_EXCLUDING_LISTS = ("oneOf",)


def closed_schema_text(text: str) -> str:
    """The schema text with its objects closed (the text itself when nothing changes)."""
    if '"properties"' not in text:
        return text
    try:
        schema = json.loads(text)
        if not isinstance(schema, dict) or not close_objects(schema):
            return text
    except (ValueError, RecursionError):
        return text  # the check reports it
    return json.dumps(schema, ensure_ascii=False)  # key order kept: llguidance writes properties in it


def close_objects(schema: dict) -> int:
    """Close every closable object of `schema`, in place; how many were closed."""
    excluded = _excluded(schema)
    todo = [node for node in _positive(schema) if id(node) not in excluded and _closable(node)]
    for node in todo:
        node["additionalProperties"] = False
    return len(todo)


def _closable(node: dict) -> bool:
    props = node.get("properties")
    if not isinstance(props, dict) or any(k in node for k in _OPEN) or any(k in node for k in _COMBINED):
        return False
    required = node.get("required", [])
    if not isinstance(required, list) or any(r not in props for r in required):
        return False
    min_props = node.get("minProperties", 0)
    return not isinstance(min_props, (int, float)) or min_props <= len(props)


def _children(node: dict):
    """(keyword, subschema) for every subschema directly under node."""
    for key, value in node.items():
        if key in _MAPS and isinstance(value, dict):
            for sub in value.values():
                yield key, sub
        if key in _ONE and isinstance(value, dict):
            yield key, value
        if key in _LISTS and isinstance(value, list):
            for sub in value:
                yield key, sub


def _reach(root: dict, starts: list) -> set[int]:
    """ids of every subschema reachable from starts (through keywords and local $refs)."""
    seen: set[int] = set()
    todo = list(starts)
    while todo:
        node = todo.pop()
        if not isinstance(node, dict) or id(node) in seen:
            continue
        seen.add(id(node))
        todo.extend(sub for _, sub in _children(node))
        ref = node.get("$ref")
        if isinstance(ref, str):
            todo.append(resolve_local_ref(root, ref))
    return seen


def _excluded(root: dict) -> set[int]:
    """Subschemas reachable from a negative or combining position."""
    starts = []
    for node in _all_nodes(root):
        for key, sub in _children(node):
            if key in _EXCLUDING_ONE or key in _EXCLUDING_LISTS or key == "dependentSchemas":
                starts.append(sub)
        all_of = node.get("allOf")
        if isinstance(all_of, list) and (len(all_of) > 1 or "properties" in node):
            starts.extend(all_of)
    return _reach(root, starts)


def _all_nodes(root: dict) -> list[dict]:
    out, seen, todo = [], set(), [root]
    while todo:
        node = todo.pop()
        if not isinstance(node, dict) or id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        todo.extend(sub for _, sub in _children(node))
    return out


def _positive(root: dict) -> list[dict]:
    """Subschemas that constrain the value where narrowing them narrows the whole."""
    out, seen, todo = [], set(), [root]
    while todo:
        node = todo.pop()
        if not isinstance(node, dict) or id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        for key, sub in _children(node):
            if key not in _EXCLUDING_ONE and key not in _EXCLUDING_LISTS and key not in ("$defs", "definitions"):
                todo.append(sub)
        ref = node.get("$ref")
        if isinstance(ref, str):
            todo.append(resolve_local_ref(root, ref))
    return out
