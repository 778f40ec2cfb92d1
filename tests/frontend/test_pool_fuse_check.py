"""Check-time rules of `route pool "GLOB" { ... }` and `fuse dynamic { a, b }`:
options typed from router_kinds.POOL_OPTIONS and models/options.FUSE_MODES,
the glob resolved against the script's folder, the members' configs read
(LoRA, one base), positions on what is wrong. Torch-free: only JSON files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmlang.errors import CheckError
from lmlang.frontend import build_file
from lmlang.graph import FuseSpec, RouterSpec


def adapter(folder: Path, peft: str = "LORA", base: str = "tiny") -> None:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": peft, "base_model_name_or_path": base}))


def diagnostics(tmp_path: Path, text: str) -> list:
    f = tmp_path / "main.lm"
    f.write_text(text)
    try:
        build_file(f)
    except CheckError as e:
        return list(e.diagnostics)
    return []


def messages(tmp_path: Path, text: str) -> list[str]:
    return [d.message for d in diagnostics(tmp_path, text)]


@pytest.fixture()
def pool(tmp_path) -> Path:
    for name in ("math", "senti", "misc"):
        adapter(tmp_path / "adapters" / name)
    (tmp_path / "adapters" / "notes").mkdir()  # matched, but not a PEFT folder: not a member
    return tmp_path


def test_a_pool_compiles_to_a_router_node_with_its_glob_and_base(pool):
    f = pool / "main.lm"
    f.write_text(
        "model base = default\n"
        'router many = route pool "adapters/*" { base: base, top_k: 2, by: embedding, '
        'examples: { "math": ["1 + 1 ="] } }\n'
        'query q(x: str) using many(x) { "{x} [v]" where v in ["a", "b"] }\n'
        "input t: str\nflow { o = q(t) emit e = o.expert, v = o.v }\n"
    )
    compiled = build_file(f).compiled
    (spec,) = [s for s in compiled.nodes.values() if isinstance(s, RouterSpec)]
    assert spec.mode == "pool" and spec.pool == str(pool / "adapters" / "*")
    assert spec.base is not None and compiled.spec(spec.base).kind == "model"
    assert dict(spec.options) == {"top_k": 2, "by": "embedding", "examples": (("math", ("1 + 1 =",)),)}
    assert spec.base in spec.deps()


@pytest.mark.parametrize(
    "block, message, col_text",
    [
        ("base: base, top_k: 0", "top_k must be a whole number of at least 1", "0"),
        ("base: base, top_k: 1.5", "top_k must be a whole number of at least 1", "1.5"),
        ("base: base, by: vote", "by must be one of embedding, gate", "vote"),
        ("base: base, temperature: 0", "temperature must be a number above 0", "0"),
        ("top_k: 2", "route pool needs `base:`", "{"),
        ("base: base, topk: 2", "unknown option 'topk' for route pool", "topk"),
        ("base: base, base: base", "option 'base' is given twice", "base"),
        ("base: nothing", "undefined model 'nothing'", "nothing"),
        ('base: base, examples: { "other": ["x"] }', "route pool holds no adapter folder named 'other'", '"other"'),
        ('base: base, examples: { "math": "x" }', "examples takes", "{ "),
    ],
)
def test_pool_options_are_checked_at_their_position(pool, block, message, col_text):
    line = f'router many = route pool "adapters/*" {{ {block} }}'
    (d,) = diagnostics(pool, f"model base = default\n{line}\n")
    assert d.message.startswith(message)
    assert d.span.line == 2
    assert line[d.span.col - 1 :].startswith(col_text)


def test_the_glob_is_resolved_against_the_script_and_must_match(pool):
    (d,) = diagnostics(pool, 'model base = default\nrouter many = route pool "nothing/*" { base: base }\n')
    assert d.message == "route pool: no adapter folder matches 'nothing/*'"
    assert str(pool / "nothing" / "*") in d.hint and d.span.col == 26
    assert messages(pool, 'model base = default\nrouter many = route pool { base: base }\n') == [
        "route pool needs a glob of adapter folders"
    ]
    assert messages(pool, 'model a = default\nrouter r = route embedding "adapters/*" { a: "x", a + a: "y" }\n')[
        0
    ].startswith("route embedding takes no folder pattern")


def test_members_must_be_lora_adapters_of_one_base(pool):
    adapter(pool / "adapters" / "zz_ia3", peft="IA3")
    assert messages(pool, 'model base = default\nrouter many = route pool "adapters/*" { base: base }\n') == [
        "route pool: adapter 'zz_ia3' is a IA3 adapter; a pool mixes LoRA adapters"
    ]
    adapter(pool / "other" / "a")
    adapter(pool / "other" / "b", base="another-model")
    (msg,) = messages(pool, 'model base = default\nrouter many = route pool "other/*" { base: base }\n')
    assert msg.startswith("route pool: the adapters were trained on different bases (a: tiny; b: another-model)")


def test_pool_folders_outside_the_script_are_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("LMLANG_ALLOW_PATH", raising=False)
    adapter(tmp_path / "outside" / "a")
    (tmp_path / "script").mkdir()
    (d,) = diagnostics(
        tmp_path / "script", 'model base = default\nrouter r = route pool "../outside/*" { base: base }\n'
    )
    assert d.code == "path-refused"


def fuse_script(fuse: str) -> str:
    return f"model a = default\nmodel b = default\nmodel f = {fuse}\n"


def test_fuse_dynamic_compiles_with_anchor_and_target(tmp_path):
    f = tmp_path / "main.lm"
    f.write_text(
        fuse_script("fuse dynamic(anchor: a, target: b, grid: 4, max: 1.5) { a + a, b }")
        .replace("model a = default\n", 'model a = default\nadapter x = lora "x"\n')
        .replace("a + a", "a + x")
    )
    adapter(tmp_path / "x")
    compiled = build_file(f).compiled
    (spec,) = [s for s in compiled.nodes.values() if isinstance(s, FuseSpec)]
    assert spec.mode == "dynamic" and dict(spec.options) == {"grid": 4, "max": 1.5}
    assert [w for _, w in spec.members] == [1.0, 1.0]
    assert spec.anchor is not None and spec.target is not None
    assert set(spec.deps()) == {m for m, _ in spec.members} | {spec.anchor, spec.target}
    # a weighted fusion keeps its id: the new fields are left out while unset
    from lmlang.graph.specs import _hash_form

    form = _hash_form(FuseSpec("linear", (("m1", 1.0),), ()))
    assert "anchor" not in form and "target" not in form
    assert "pool" not in _hash_form(RouterSpec("r", "rules", (), "m1", None, ()))


@pytest.mark.parametrize(
    "fuse, message, col_text",
    [
        ("fuse dynamic { a: 1.0, b: 1.0 }", "fuse dynamic picks its weights at every step", "{"),
        ("fuse linear { a, b }", "fuse linear takes a weight per model", "{"),
        ("fuse dynamic { a }", "fuse dynamic needs at least two models", "{"),
        ("fuse dynamic(target: b) { a, b }", "fuse dynamic: a target needs an anchor", "target"),
        ("fuse dynamic(grid: 0) { a, b }", "fuse grid must be a positive whole number", "0"),
        ("fuse dynamic(grid: 2.5) { a, b }", "fuse grid must be a positive whole number", "2.5"),
        ("fuse dynamic(max: -1) { a, b }", "fuse max must be a positive number", "-1"),
        ("fuse dynamic(gird: 3) { a, b }", "unknown option 'gird' for fuse dynamic", "gird"),
        ("fuse dynamic(anchor: c) { a, b }", "undefined model 'c'", "c)"),
        ("fuse dynamic { a, nothing }", "undefined model 'nothing'", "nothing"),
    ],
)
def test_fuse_dynamic_errors_at_their_position(tmp_path, fuse, message, col_text):
    (d,) = diagnostics(tmp_path, fuse_script(fuse))
    assert d.message.startswith(message), d.message
    assert d.span.line == 3
    assert f"model f = {fuse}"[d.span.col - 1 :].startswith(col_text)


def test_fuse_dynamic_with_an_anchor_takes_one_expert(tmp_path):
    assert messages(tmp_path, fuse_script("fuse dynamic(anchor: a) { b }")) == []


def test_a_pool_on_a_served_base_is_refused(pool):
    diags = diagnostics(
        pool,
        'model s = server "http://127.0.0.1:9/v1" { model: "m" }\n'
        'router many = route pool "adapters/*" { base: s }\n'
        'query q(x: str) using many(x) { "{x} [v]" where v in ["a", "b"] }\n',
    )
    assert [d.code for d in diags] == ["served-unsupported"]
    assert diags[0].message.startswith("route pool: base must run in this process") and diags[0].span.line == 2
