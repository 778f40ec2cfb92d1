"""The graph between compiler and runtime, in one torch-free place that does
not import the checker: node specs (`specs`), the flow and router IR
(`ir`), the `Compiled` container (`compiled`), labels and exports. The
compiler produces it; the runtime reads only this package.

    specs.py     immutable node specs; their JSON form and content ids
    ir.py        flow statements, expressions, router payloads; effects()
    compiled.py  Compiled: specs by id, names, edges, steps
    labels.py    one-line labels of nodes and statements
    export.py    JSON (round-trips), dot, mermaid
"""

from . import ir
from .compiled import Compiled
from .export import GRAPH_FORMAT_VERSION, graph_from_json, graph_to_dot, graph_to_json, graph_to_mermaid
from .labels import expr_text, node_label, stmt_text
from .specs import (
    CONSTRAINT_TYPES,
    SPEC_TYPES,
    AdapterMergeSpec,
    ApplySpec,
    FuseSpec,
    InputSpec,
    LoraSpec,
    MergeSpec,
    ModelSpec,
    QuerySpec,
    RouterSpec,
    Spec,
    StepSpec,
    TrainSpec,
    content_digest,
    from_jsonable,
    to_jsonable,
)

__all__ = [
    "ir",
    "Compiled",
    "GRAPH_FORMAT_VERSION",
    "graph_from_json",
    "graph_to_dot",
    "graph_to_json",
    "graph_to_mermaid",
    "expr_text",
    "node_label",
    "stmt_text",
    "CONSTRAINT_TYPES",
    "SPEC_TYPES",
    "AdapterMergeSpec",
    "ApplySpec",
    "FuseSpec",
    "InputSpec",
    "LoraSpec",
    "MergeSpec",
    "ModelSpec",
    "QuerySpec",
    "RouterSpec",
    "Spec",
    "StepSpec",
    "TrainSpec",
    "content_digest",
    "from_jsonable",
    "to_jsonable",
]
