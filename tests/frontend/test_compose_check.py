"""Check-time rules of `compress`, `merge twin` and `merge atlas` (issue #17):
each error at the line and column of what is wrong, with its hint; the
graph nodes they compile to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmlang.errors import CheckError
from lmlang.frontend import build_file
from lmlang.graph import from_jsonable, to_jsonable
from lmlang.merge import atlas, compress, twin
from lmlang.merge import compose_options as C

HEAD = """model base = default
adapter senti = train lora on "train.jsonl" { base: base }
adapter math = lora "math"
adapter d = train dora on "train.jsonl" { base: base }
"""
USE = 'query q(x: str) using m { user "{x}" assistant "[y]" }\n'


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "labels.jsonl").write_text(json.dumps({"text": "a", "label": "b"}) + "\n")
    (tmp_path / "math").mkdir()
    (tmp_path / "math" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    return tmp_path


def diagnostics(folder: Path, body: str) -> list[tuple[int, int, str, str]]:
    """(line, col, message, hint) of each error, lines counted in `body`."""
    f = folder / "main.lm"
    f.write_text(HEAD + body)
    try:
        build_file(f)
    except CheckError as e:
        n = HEAD.count("\n")
        return [(d.span.line - n, d.span.col, d.message, d.hint) for d in e.diagnostics]
    return []


def test_the_three_forms_check_and_compile(folder):
    body = (
        "adapter small = compress senti { density: 0.1, quantize: ternary }\n"
        "router r = route embedding { base + senti: [\"great film\"], base + math: [\"2 + 2\"] }\n"
        "model t1 = merge twin { base: base, models: [base + senti, base + math], router: by_example }\n"
        "model t2 = merge twin { base: base, models: [base + math, base + senti], router: r, rank: 8 }\n"
        'model m = merge atlas { base: base, models: [base + senti, base + math], fit_on: "train.jsonl", granularity: block }\n'
        "model s = base + small\n"
    )
    assert diagnostics(folder, body + USE) == []
    c = build_file(folder / "main.lm").compiled
    small = c.spec(c.names["small"])
    assert small.kind == "compress" and dict(small.options) == {"density": 0.1, "quantize": "ternary"}
    assert small.adapter == c.names["senti"]
    t2 = c.spec(c.names["t2"])
    assert t2.kind == "twin" and t2.router == "r"
    assert t2.examples == (("2 + 2",), ("great film",))  # the router's examples in the twin's order
    assert dict(t2.options) == {"rank": 8}
    assert c.spec(c.names["t1"]).examples == ()
    m = c.spec(c.names["m"])
    assert m.kind == "atlas" and m.data == str(folder / "train.jsonl") and dict(m.options) == {"granularity": "block"}
    assert len(m.models) == 2 and all(c.spec(x).kind == "apply" for x in m.models)
    for name in ("small", "t1", "t2", "m"):  # the graph's JSON form round-trips the new specs
        spec = c.spec(c.names[name])
        assert from_jsonable(json.loads(json.dumps(to_jsonable(spec)))) == spec


def test_compress_errors(folder):
    body = (
        "adapter a = compress sentii\n"
        "adapter b = compress senti { density: 0, quantize: ternery }\n"
        "adapter c = compress senti { densty: 0.2 }\n"
        "adapter e = compress senti { quantize: int8, alpha: 2 }\n"
        "adapter f = compress d\n"
    )
    got = diagnostics(folder, body + 'query q(x: str) { user "{x}" assistant "[y]" }\n')
    assert got == [
        (1, 22, "undefined adapter 'sentii'", "did you mean 'senti'?"),
        (2, 39, "density must be in (0, 1], got 0", "density: fraction of each LoRA factor kept"),
        (2, 52, "quantize must be one of ternary, int8, none, got 'ternery'", "did you mean 'ternary'?"),
        (3, 30, "unknown option 'densty' for compress", "did you mean 'density'?"),
        (
            4,
            53,
            "alpha (ComPEFT's alpha * std scale) applies to quantize: ternary only",
            "drop alpha, or use quantize: ternary",
        ),
        (
            5,
            22,
            "adapter 'd' is a dora adapter; compress takes LoRA adapters",
            "ComPEFT sparsifies LoRA factors; train it with `train lora`",
        ),
    ]


def test_twin_errors(folder):
    body = (
        "router k = route classify using base { base + senti: \"reviews\", base + math: \"sums\" }\n"
        'model other = "someorg/other"\n'
        "model t1 = merge twin { base: base, models: [base + senti], router: by_exampel }\n"
        "model t2 = merge twin { base: base, models: [base + senti, other + math], router: k }\n"
        "model t3 = merge twin { base: base, models: [base + senti, base + d], cor: ties }\n"
        "model t4 = merge twin { models: [base + senti * 0.5, base + math] }\n"
    )
    got = diagnostics(folder, body + USE.replace("using m", "using t1"))
    assert got == [
        (3, 45, "merge twin needs at least 2 models", ""),
        (3, 69, "undefined router 'by_exampel'", "did you mean 'by_example'?"),
        (
            4,
            60,
            "merge twin: 'math' is applied to another model than the base",
            "the adapters compose on one base: write base + math",
        ),
        (
            4,
            83,
            "merge twin weighs experts by embedding scores; router 'k' is a classify router",
            "declare `route embedding` over the same models, or use router: by_example",
        ),
        (
            5,
            67,
            "adapter 'd' is a dora adapter; merges combine LoRA deltas only",
            "apply it at query time instead (base + d), or train it with `train lora`",
        ),
        (5, 71, "unknown option 'cor' for merge twin", "did you mean 'core'?"),
        (6, 12, "merge twin needs base: ...", "name the model the adapters were trained on: base: base"),
        (6, 34, "merge twin: each model is the base plus one LoRA adapter", "write it as BASE + ADAPTER"),
    ]


def test_atlas_errors(folder):
    body = (
        'model a1 = merge atlas { base: base, models: [base + senti], fit_on: "missing.jsonl", granularity: layer }\n'
        'model a2 = merge atlas { base: base, models: [base + senti], fit_on: "labels.jsonl", steps: 0 }\n'
        "model a3 = merge atlas { base: base, models: { base + senti: 1.0 } }\n"
        "adapter a4 = merge atlas { models: { senti: 1.0 } }\n"
    )
    got = diagnostics(folder, body + USE.replace("using m", "using a1"))
    messages = [(line, col, msg) for line, col, msg, _ in got]
    assert messages[:2] == [
        (1, 70, "training data not found: missing.jsonl"),
        (1, 100, "granularity must be one of block, tensor, model, got 'layer'"),
    ]
    assert got[2][:2] == (2, 70) and "missing key 'prompt'" in got[2][2]  # rows without prompt/completion
    assert messages[3:] == [
        (2, 93, "steps must be in [1, inf), got 0"),
        (3, 12, "merge atlas needs fit_on: ..."),
        (3, 46, "merge atlas takes a list of models: [base + a, base + b]"),
        (4, 26, "merge atlas makes a model, not an adapter"),
    ]


def test_fit_on_a_data_set_needs_training_columns(folder):
    body = (
        'data labels = "labels.jsonl"\n'
        'data rows = "train.jsonl"\n'
        "model a1 = merge atlas { base: base, models: [base + senti], fit_on: labels }\n"
        "model m = merge atlas { base: base, models: [base + senti], fit_on: rows }\n"
    )
    got = diagnostics(folder, body + USE)
    assert [(line, col, msg) for line, col, msg, _ in got] == [
        (3, 70, "data set 'labels' has no columns 'prompt', 'completion'")
    ]
    (folder / "main.lm").write_text(HEAD + body.replace("fit_on: labels", "fit_on: rows") + USE)
    c = build_file(folder / "main.lm").compiled
    assert c.spec(c.names["m"]).data == str(folder / "train.jsonl")  # a file data set is its file


def test_the_table_agrees_with_the_library():
    assert C.QUANTIZE == compress.QUANTIZE
    assert C.GRANULARITY == atlas.GRANULARITY
    assert C.TWIN_CORES == twin.CORE_METHODS
    assert {k: v.default for k, v in C.ATLAS.items()} == {k: v for k, v in atlas.DEFAULTS.items() if k != "output"}


def test_a_twin_cannot_be_exported_an_atlas_and_a_compressed_adapter_can(folder):
    body = (
        "adapter small = compress senti\n"
        "model t = merge twin { base: base, models: [base + senti, base + math] }\n"
        'model m = merge atlas { base: base, models: [base + senti], fit_on: "train.jsonl" }\n'
        'export small to "out/small"\n'
        'export m to "out/m"\n'
        'export t to "out/t"\n'
    )
    got = diagnostics(folder, body + USE)
    assert [(line, col, msg) for line, col, msg, _ in got] == [
        (
            6,
            8,
            "model 't' cannot be exported: a twin merge weighs its experts per input and has no single set of weights",
        )
    ]


def test_results_of_an_atlas_follow_its_rows(folder):
    """The result cache keys an atlas model on its fit_on rows' bytes, as it
    keys a trained adapter on its data: new rows, new results."""
    from lmlang.runtime.result_cache import CallKeys

    (folder / "dev.jsonl").write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    body = 'model m = merge atlas { base: base, models: [base + senti], fit_on: "dev.jsonl" }\n'
    assert diagnostics(folder, body + USE) == []

    def key() -> str:
        c = build_file(folder / "main.lm").compiled
        return CallKeys(c, {}).model_hash(c.names["m"])

    before = key()
    assert key() == before
    with (folder / "dev.jsonl").open("a") as f:  # not the adapter's own training data
        f.write(json.dumps({"prompt": "e", "completion": "f"}) + "\n")
    assert key() != before
