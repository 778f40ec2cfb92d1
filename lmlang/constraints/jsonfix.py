"""Semantics-preserving JSON Schema rewrites that let llguidance enforce more schemas.

* `oneOf` whose branches are provably disjoint (different JSON types, or a
  required property with different const/enum values in each branch) means the
  same as `anyOf`, so llguidance's `coerce_one_of` is exact for it.

`xgrammar_ignored` names what xgrammar's fallback would silently drop.

Formats are not rewritten here: the lowering (formats.py) has already written
those lmlang enforces as keywords llguidance enforces, and removed those a
script opted to treat as annotations. A `format` llguidance still reports as
unknown is one lmlang cannot enforce, and is refused with its JSON path.

Anything else llguidance rejects stays rejected: lmlang never relaxes a
keyword it cannot enforce. Torch-free.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from .pointer import resolve_local_ref

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

_NUMERIC = {"integer", "number"}


def _resolve(root, node, depth: int = 0):
    while isinstance(node, dict) and "$ref" in node and isinstance(node["$ref"], str) and depth < 20:
        node = resolve_local_ref(root, node["$ref"])
        if node is None:
            return None
        depth += 1
    return node


def _json_type(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "integer" if v.is_integer() else "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _types(root, branch) -> set[str] | None:
    b = _resolve(root, branch)
    if not isinstance(b, dict):
        return None
    if "const" in b:
        return {_json_type(b["const"])}
    if "enum" in b and isinstance(b["enum"], list):
        return {_json_type(v) for v in b["enum"]}
    t = b.get("type")
    if isinstance(t, str):
        return {t}
    if isinstance(t, list) and all(isinstance(x, str) for x in t):
        return set(t)
    if "properties" in b or "required" in b:
        return None  # objects usually, but without "type" other types also validate
    return None


def _overlap(a: set[str], b: set[str]) -> bool:
    if a & b:
        return True
    return ("number" in a and "integer" in b) or ("integer" in a and "number" in b)


def _discriminator_values(root, branch, prop: str):
    b = _resolve(root, branch)
    if not isinstance(b, dict) or prop not in (b.get("required") or []):
        return None
    p = _resolve(root, (b.get("properties") or {}).get(prop))
    if not isinstance(p, dict):
        return None
    if "const" in p:
        return [json.dumps(p["const"], sort_keys=True)]
    if isinstance(p.get("enum"), list):
        return [json.dumps(v, sort_keys=True) for v in p["enum"]]
    return None


def one_of_is_disjoint(root, branches: list) -> bool:
    types = [_types(root, b) for b in branches]
    known = [t for t in types if t is not None]
    if len(known) == len(types):
        if all(not _overlap(known[i], known[j]) for i in range(len(known)) for j in range(i + 1, len(known))):
            return True
    first = _resolve(root, branches[0]) if branches else None
    if not isinstance(first, dict):
        return False
    for prop in first.get("required") or []:
        seen: set[str] = set()
        ok = True
        for b in branches:
            vals = _discriminator_values(root, b, prop)
            if vals is None or seen & set(vals):
                ok = False
                break
            seen |= set(vals)
        if ok:
            return True
    return False


def all_one_of_disjoint(schema) -> bool:
    ok = True

    def walk(node) -> None:
        nonlocal ok
        if isinstance(node, dict):
            one = node.get("oneOf")
            if isinstance(one, list) and not one_of_is_disjoint(schema, one):
                ok = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return ok


def xgrammar_ignored(schema) -> set[str]:
    """Keyword combinations xgrammar 0.2 accepts but does not enforce, though it
    enforces each keyword alone: a `pattern` beside `minLength`/`maxLength` (it
    warns and drops the length bounds)."""
    from .formats import subschemas

    found: set[str] = set()
    for node, _ in subschemas(schema):
        if "pattern" in node and ("minLength" in node or "maxLength" in node):
            found.add("pattern with minLength/maxLength")
    return found


_UNKNOWN_FORMAT = re.compile(r"Unknown format: (.+)")


def _format_refusal(text: str, name: str) -> str:
    """The refusal of an unknown format, at the JSON path where the schema uses it."""
    from .formats import refusal, unenforceable_formats

    where = next((w for w, n in unenforceable_formats(text) if n == name), None)
    if where is None:  # somewhere lmlang's walk does not reach (e.g. behind an `$anchor` reference)
        return f"format {name!r} cannot be enforced while decoding"
    return refusal(where, name)[0]


def llguidance_schema_grammar(text: str, options: JsonCompileOptions) -> tuple[str, str]:
    """(grammar, error): llguidance's grammar for a (lowered) schema after the sound
    rewrites; error "" if llguidance enforces it."""
    import llguidance

    opts = options.copy()
    while True:
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(text, overrides=opts)
        except Exception as e:
            return "", str(e)
        err = llguidance.LLMatcher.validate_grammar(grammar).strip()
        if not err:
            return grammar, ""
        m = _UNKNOWN_FORMAT.search(err.splitlines()[0])
        if m:
            return grammar, _format_refusal(text, m.group(1).strip())
        if "oneOf" in err and not opts.get("coerce_one_of"):
            schema = json.loads(text)
            if isinstance(schema, dict) and all_one_of_disjoint(schema):
                opts["coerce_one_of"] = True
                continue
        return grammar, err


__all__ = ["llguidance_schema_grammar", "one_of_is_disjoint", "xgrammar_ignored"]
