"""Local JSON Schema references (`"$ref": "#/$defs/x"`): one resolver for
every walk over a schema (the checker's limits, the judges, the format
walk, the closed-object rewrite, llguidance's sound rewrites)."""

from __future__ import annotations


def resolve_local_ref(root, ref: str):
    """The node the local reference `ref` names in `root` ("#" is the root),
    or None when it is not local or names nothing."""
    if not ref.startswith("#"):
        return None
    node = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node
