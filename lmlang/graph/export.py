"""The graph out of the process: JSON (round-trips), Graphviz dot and
mermaid. Labels come from `labels.node_label`; node ids are the specs'
content hashes, so the same script exports the same text on every machine."""

from __future__ import annotations

import json

from .compiled import Compiled
from .labels import node_label
from .specs import from_jsonable, to_jsonable

# 2: flow statements, expressions and router payloads are `$type` objects
# (1 stored them as positional lists).
GRAPH_FORMAT_VERSION = 2


def graph_to_json(compiled: Compiled) -> dict:
    return {
        "version": GRAPH_FORMAT_VERSION,
        "nodes": [
            {
                "id": n,
                "names": list(compiled.node_names[n]),
                "label": node_label(compiled, n),
                "spec": to_jsonable(compiled.nodes[n]),
            }
            for n in sorted(compiled.nodes)
        ],
        "edges": [list(e) for e in compiled.edges],
        "names": dict(sorted(compiled.names.items())),
        "steps": list(compiled.steps),
    }


def graph_from_json(data: dict | str) -> Compiled:
    """The inverse of graph_to_json (labels are derived, so not read back)."""
    if isinstance(data, str):
        data = json.loads(data)
    if not isinstance(data, dict) or data.get("version") != GRAPH_FORMAT_VERSION:
        raise ValueError(f"unsupported graph version {data.get('version') if isinstance(data, dict) else None!r}")
    nodes = {n["id"]: from_jsonable(n["spec"]) for n in data["nodes"]}
    names = {n["id"]: list(n["names"]) for n in data["nodes"]}
    return Compiled(nodes, names, [tuple(e) for e in data["edges"]], dict(data["names"]), list(data["steps"]))


_DOT_SHAPES = {
    "model": "cylinder",
    "server": "cylinder",
    "vllm": "cylinder",
    "query": "note",
    "step": "ellipse",
    "router": "diamond",
    "input": "invhouse",
    "lora": "folder",
    "train": "folder",
    "adapter_merge": "folder",
    "compress": "folder",
}


def _display_label(compiled: Compiled, nid: str) -> str:
    spec = compiled.spec(nid)
    label = node_label(compiled, nid)
    names = compiled.node_names[nid]
    if names and spec.kind not in ("query", "input", "router", "def"):
        label = f"{', '.join(names)} = {label}"
    return label


def graph_to_dot(compiled: Compiled) -> str:
    lines = ["digraph lmlang {", "  rankdir=LR;", '  node [shape=box, fontname="Helvetica"];']
    for n in sorted(compiled.nodes):
        spec = compiled.spec(n)
        label = _display_label(compiled, n).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        lines.append(f'  "{n}" [label="{label}", shape={_DOT_SHAPES.get(spec.kind, "box")}];')
    for a, b in compiled.edges:
        lines.append(f'  "{a}" -> "{b}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def graph_to_mermaid(compiled: Compiled) -> str:
    ids = {n: f"n{i}" for i, n in enumerate(sorted(compiled.nodes))}
    lines = ["flowchart LR"]
    for n in sorted(compiled.nodes):
        label = _display_label(compiled, n).replace('"', "#quot;").replace("\n", " ")
        lines.append(f'  {ids[n]}["{label}"]')
    for a, b in compiled.edges:
        lines.append(f"  {ids[a]} --> {ids[b]}")
    return "\n".join(lines) + "\n"
