"""Bounds on the files a script hands to libraries (JSON schemas, Lark
grammars), measured before any library sees them.

jsonschema, the schema rewrites and llguidance all walk a schema recursively,
and llguidance follows `$ref` chains natively: a schema nested 100k deep is a
RecursionError, a 3,000-long `$ref` chain a segfault (exit 139). Both walks
here are iterative, so measuring cannot fail the way the libraries do.
Lark's grammar analysis (run at check time to prove a grammar has a word)
grows much faster than linearly in the number of rules: a 2,000-rule chain
took minutes. The limits are documented in docs/language.md ("Limits").
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..constraints.pointer import resolve_local_ref

MAX_SCHEMA_DEPTH = 128  # nested JSON objects and arrays in one schema
MAX_REF_CHAIN = 100  # `$ref`s followed one inside another (recursion cut at the cycle)
MAX_GRAMMAR_RULES = 256  # rule and terminal definitions in one grammar file
MAX_GRAMMAR_BYTES = 64 * 1024

_DEFINITION = re.compile(r"^[ \t]*[?!]?[A-Za-z_][A-Za-z_0-9]*(?:\.-?\d+)?[ \t]*:", re.MULTILINE)


def grammar_problem(text: str) -> tuple[str, str] | None:
    """(message, hint) when a Lark grammar is beyond the limits, else None."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_GRAMMAR_BYTES:
        return (
            f"the grammar is {size} bytes, more than {MAX_GRAMMAR_BYTES}",
            "describe the language with fewer, more general rules",
        )
    rules = len(_DEFINITION.findall(text))
    if rules > MAX_GRAMMAR_RULES:
        return (
            f"the grammar defines {rules} rules and terminals, more than {MAX_GRAMMAR_RULES}",
            "describe the language with fewer, more general rules (a terminal regex can replace many literal rules)",
        )
    return None


def schema_problem(schema) -> tuple[str, str] | None:
    """(message, hint) when the schema is beyond the limits, else None."""
    depth = _depth(schema)
    if depth > MAX_SCHEMA_DEPTH:
        return (
            f"the JSON schema is nested {depth} levels deep, more than {MAX_SCHEMA_DEPTH}",
            "name the inner parts in `$defs` and refer to them with `$ref`",
        )
    chain = _ref_chain(schema)
    if chain > MAX_REF_CHAIN:
        return (
            f"the JSON schema's `$ref`s chain {chain} deep, more than {MAX_REF_CHAIN}",
            "inline some of the definitions so fewer `$ref`s lead one to the next",
        )
    return None


def _depth(value) -> int:
    """Container nesting of a JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict):
            children: Iterable = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, d)
        stack.extend((c, d + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def _refs_below(node) -> list[str]:
    """Every local `$ref` ("#...") anywhere inside node."""
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            ref = n.get("$ref")
            if isinstance(ref, str) and ref.startswith("#"):
                out.append(ref)
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)
    return out


def _ref_chain(root) -> int:
    """The longest chain of `$ref`s where each target holds the next ref.

    An iterative depth-first search over targets; a ref back to a target on
    the current path (a recursive schema) ends the chain there, since that is
    recursion the decoder unrolls lazily, not nesting it must resolve."""
    longest: dict[str, int] = {}
    edges: dict[str, list[str]] = {}

    def targets(ref: str) -> list[str]:
        if ref not in edges:
            node = resolve_local_ref(root, ref)
            edges[ref] = _refs_below(node) if node is not None else []
        return edges[ref]

    best = 0
    on_path: set[str] = set()
    for start in _refs_below(root):
        if start in longest:
            best = max(best, longest[start])
            continue
        stack = [(start, iter(targets(start)))]
        on_path.add(start)
        while stack:
            ref, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                on_path.discard(ref)
                longest[ref] = 1 + max((longest.get(t, 0) for t in targets(ref) if t not in on_path), default=0)
                continue
            if nxt in longest or nxt in on_path:
                continue
            on_path.add(nxt)
            stack.append((nxt, iter(targets(nxt))))
        best = max(best, longest[start])
    return best
