"""The compiled graph: one node per distinct sub-expression, deterministic
ids, edges that follow the specs' declared inputs, labels that use the
script's names, and exports (JSON round trip, dot, mermaid)."""

import json

from click.testing import CliRunner

from lmlang.cli import main
from lmlang.graph import graph_from_json, graph_to_dot, graph_to_json, graph_to_mermaid, node_label
from lmlang.frontend import build

SRC = '''
input text: str
model base = default
adapter a = lora "ad"
adapter b = lora "bd"
model tuned = base + a * 0.8 + b
model m1 = merge ties { base: base, models: { base + a: 1.0, base + b: 0.5 }, density: 0.2 }
model m2 = merge ties { base: base, models: { base + a: 1.0, base + b: 0.5 }, density: 0.2 }
model f = fuse { tuned: 1.0, base: -1.0 }
router r = route embedding { base + a: ["x"], tuned: "say \\"hi\\"" }
query q(x: str) using r(x) { user "{x}" assistant "[y]" }
query p(x: str) using m2 { user "{x}" assistant "[y]" }
flow {
    one = q(text)
    two = p(one.y)
    emit one = one.y, two = two.y
}
'''


def compiled(tmp_path):
    for d in ("ad", "bd"):
        (tmp_path / d).mkdir(exist_ok=True)
        (tmp_path / d / "adapter_config.json").write_text("{}")
    f = tmp_path / "g.lm"
    f.write_text(SRC)
    return build(SRC, str(f)).compiled


def test_same_merge_twice_is_one_node_with_both_names(tmp_path):
    c = compiled(tmp_path)
    assert c.names["m1"] == c.names["m2"]
    assert c.node_names[c.names["m1"]] == ["m1", "m2"]
    merges = [n for n, s in c.nodes.items() if s.kind == "merge"]
    assert len(merges) == 1
    # `base + a` in the merge and in the router is one apply node
    applies = [n for n, s in c.nodes.items() if s.kind == "apply"]
    assert len(applies) == 3  # base + a, base + b, tuned


def test_ids_are_deterministic_and_edges_follow_deps(tmp_path):
    a, b = compiled(tmp_path), compiled(tmp_path)
    assert a == b and list(a.nodes) == list(b.nodes)
    for nid, spec in a.nodes.items():
        for dep in spec.deps():
            assert (dep, nid) in a.edges
    step_two = a.steps[1]
    assert (a.steps[0], step_two) in a.edges  # two reads one
    assert (a.names["text"], a.steps[0]) in a.edges  # the input feeds the first step


def test_labels_name_things(tmp_path):
    c = compiled(tmp_path)
    assert node_label(c, c.names["tuned"]) == "base + a*0.8 + b"
    assert node_label(c, c.names["m1"]) == "merge ties(base: base; (base + a):1, (base + b):0.5)"
    assert node_label(c, c.names["f"]) == "fuse linear: tuned - base"
    assert node_label(c, c.names["r"]) == "router r (embedding: (base + a), tuned)"
    assert node_label(c, c.names["q"]) == "query q(x) -> [y] using r"
    assert node_label(c, c.steps[1]) == "two = p(one.y)"


def test_json_round_trip_and_networkx_view(tmp_path):
    c = compiled(tmp_path)
    data = json.loads(json.dumps(graph_to_json(c)))
    back = graph_from_json(data)
    assert back == c
    assert graph_to_json(back) == data
    g = back.graph
    assert set(g.nodes) == set(c.nodes) and set(g.edges) == set(c.edges)
    assert g.nodes[c.names["m1"]]["names"] == ["m1", "m2"]
    import networkx as nx

    assert nx.is_directed_acyclic_graph(g)


def test_dot_and_mermaid_escape_labels(tmp_path):
    c = compiled(tmp_path)
    dot = graph_to_dot(c)
    assert dot.startswith("digraph lmlang {") and dot.rstrip().endswith("}")
    assert dot.count('" -> "') == len(c.edges)
    mer = graph_to_mermaid(c)
    assert mer.count(" --> ") == len(c.edges)
    for line in mer.splitlines()[1:]:
        if "[" in line and '"' in line:
            assert line.count('"') == 2, line


def test_cli_json_output_round_trips(tmp_path):
    compiled(tmp_path)
    r = CliRunner().invoke(main, ["graph", str(tmp_path / "g.lm"), "--format", "json"])
    assert r.exit_code == 0, r.output
    back = graph_from_json(r.output)
    assert graph_to_json(back) == json.loads(r.output)


def test_graph_of_a_broken_script_is_a_script_error(tmp_path):
    f = tmp_path / "bad.lm"
    f.write_text("model m = nosuch\n")
    r = CliRunner().invoke(main, ["graph", str(f)])
    assert r.exit_code == 2 and "undefined model 'nosuch'" in r.output


def test_quoted_option_keys_are_the_same_options(tmp_path):
    """`"density": 0.2` and `density: 0.2` are one merge (also per model and in
    adapter merges), not a crash at compile time."""
    quoted = SRC.replace("density: 0.2 }\nmodel m2", '"density": 0.2 }\nmodel m2').replace(
        "base + b: 0.5 }, density: 0.2 }\nmodel f", 'base + b: { "weight": 0.5 } }, "density": 0.2 }\nmodel f'
    )
    assert quoted.count('"density"') == 2 and '"weight"' in quoted
    (tmp_path / "ad").mkdir(exist_ok=True)
    (tmp_path / "ad" / "adapter_config.json").write_text("{}")
    (tmp_path / "bd").mkdir(exist_ok=True)
    (tmp_path / "bd" / "adapter_config.json").write_text("{}")
    c = build(quoted, str(tmp_path / "q.lm")).compiled
    assert c.names["m1"] == c.names["m2"] == compiled(tmp_path).names["m1"]
    src = (
        'model base = default\nadapter a = lora "ad"\nadapter b = lora "bd"\n'
        'adapter both = merge ties {{ models: {{ a: {{ {w}: 1.0 }}, b: 1.0 }}, {d}: 0.5 }}\nmodel m = base + both\n'
        'query q(x: str) using m {{ user "{{x}}" assistant "[y]" }}\n'
    )
    plain = build(src.format(w="weight", d="density"), str(tmp_path / "a.lm")).compiled
    q = build(src.format(w='"weight"', d='"density"'), str(tmp_path / "b.lm")).compiled
    assert plain.names["both"] == q.names["both"]  # node ids hash the content, not the file
    a, b = plain.spec(plain.names["both"]), q.spec(q.names["both"])
    assert (a.adapters, a.options) == (b.adapters, b.options) and a.options == (("density", 0.5),)
