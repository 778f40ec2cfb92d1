"""`Compiled`: the program as the runtime receives it.

The graph is held as plain dicts and turned into a `networkx.DiGraph` only
on first use of `Compiled.graph`: `lmlang check` compiles every script, and
running one reads the dicts, without paying for the networkx import.
"""

from __future__ import annotations

from .labels import node_label
from .specs import Spec


class Compiled:
    """The compiled program: node specs by id, their declared names, edges,
    the declared-name -> node table and the flow steps in order."""

    def __init__(self, nodes: dict, node_names: dict, edges, names: dict, steps: list):
        self.nodes: dict[str, Spec] = dict(nodes)
        self.node_names: dict[str, list[str]] = {n: list(node_names.get(n, ())) for n in self.nodes}
        self.edges: list[tuple[str, str]] = sorted(set(map(tuple, edges)))
        self.names: dict[str, str] = dict(names)
        self.steps: list[str] = list(steps)
        self._graph = None  # the networkx view, built on first use

    def spec(self, nid: str) -> Spec:
        return self.nodes[nid]

    @property
    def graph(self):
        """The networkx view (built once; each node has `spec` and `names`)."""
        if self._graph is None:
            import networkx as nx

            g = nx.DiGraph()
            for nid in sorted(self.nodes):
                g.add_node(nid, spec=self.nodes[nid], names=self.node_names[nid])
            g.add_edges_from(self.edges)
            self._graph = g
        return self._graph

    def display_name(self, nid: str) -> str:
        """How a node reads in labels: its first declared name, else its label."""
        names = self.node_names.get(nid)
        return names[0] if names else node_label(self, nid)

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, Compiled)
            and self.nodes == other.nodes
            and self.node_names == other.node_names
            and self.edges == other.edges
            and self.names == other.names
            and self.steps == other.steps
        )

    __hash__ = None  # type: ignore[assignment]  # unhashable (mutable): Python's idiom, which typeshed types as a method
