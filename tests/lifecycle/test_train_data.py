"""`train METHOD on NAME { ... }` where NAME is a declared data set: the
checker holds its columns to the training row format, and the runtime trains
on its rows written to a content-keyed JSONL under LMLANG_HOME."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lmlang
from lmlang.errors import CheckError
from lmlang.graph import TrainSpec
from lmlang.lifecycle.data import TRAINING_DATA_DIR, DataSets
from lmlang.models.training import META_FILE, train_lora

MATH = [f"What is {a} plus {b}?" for a, b in [(2, 3), (10, 7), (4, 4), (12, 30)]]
COOKING = ["Whisk the eggs with sugar and bake.", "Fry the onions in butter.", "Knead the dough and let it rise."]
TARGET = [f"What is {a} plus {b}? The sum is {a + b}." for a, b in [(1, 1), (5, 6), (20, 22)]]
OPTS = "rank: 4, alpha: 8, epochs: 1, batch_size: 2, max_length: 48, seed: 1"


def write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture()
def folder(tmp_path) -> Path:
    pool = [COOKING[0], MATH[0], COOKING[1], MATH[1], COOKING[2], MATH[2], MATH[3]]
    write_jsonl(tmp_path / "pool.jsonl", [{"prompt": p, "completion": f" answer {i}"} for i, p in enumerate(pool)])
    write_jsonl(tmp_path / "target.jsonl", [{"text": t} for t in TARGET])
    write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}])
    write_jsonl(tmp_path / "texts.jsonl", [{"text": "a", "label": "b"}])
    write_jsonl(tmp_path / "bad_row.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "c"}])
    return tmp_path


def errors(src: str, folder: Path) -> list:
    with pytest.raises(CheckError) as info:
        lmlang.compile(src, "s.lm", base_dir=folder)
    return info.value.diagnostics


def one(src: str, folder: Path, message: str, col_word: str):
    (d,) = [d for d in errors(src, folder) if message in d.message]
    line = src.splitlines()[d.span.line - 1]
    assert line[d.span.col - 1 :].startswith(col_word), (line, d.span)
    return d


# ---------------------------------------------------------------- check


def test_a_data_set_trains_and_checks(folder):
    src = (
        'data pairs = "pairs.jsonl"\n'
        'data picked = select 2 from "pool.jsonl" like "target.jsonl" by gzip\n'
        "adapter a = train lora on pairs { rank: 4 }\n"
        "adapter b = train dora on picked { rank: 4 }\n"
        "model m = default + a\n"
    )
    prog = lmlang.compile(src, "s.lm", base_dir=folder)
    c = prog.frontend.compiled
    a, b = c.spec(c.names["a"]), c.spec(c.names["b"])
    assert isinstance(a, TrainSpec) and a.data == str(folder / "pairs.jsonl") and a.dataset == ""
    assert isinstance(b, TrainSpec) and b.data == "" and b.dataset == "picked"
    assert b.recipe == (
        "select",
        "gzip",
        2,
        ("file", str(folder / "pool.jsonl")),
        ("file", str(folder / "target.jsonl")),
    )


def test_a_data_set_from_a_file_is_the_same_node_as_the_file(folder):
    by_name = lmlang.compile('data pairs = "pairs.jsonl"\nadapter a = train lora on pairs {}\n', base_dir=folder)
    by_path = lmlang.compile('adapter a = train lora on "pairs.jsonl" {}\n', base_dir=folder)
    assert by_name.frontend.compiled.names["a"] == by_path.frontend.compiled.names["a"]


def test_an_undefined_data_set_is_an_error_at_its_name(folder):
    src = 'data pairs = "pairs.jsonl"\nadapter a = train lora on pair { rank: 4 }\n'
    d = one(src, folder, "undefined data set 'pair'", "pair {")
    assert "pairs" in d.hint


def test_a_name_that_is_not_a_data_set(folder):
    src = "model base = default\nadapter a = train lora on base { rank: 4 }\n"
    one(src, folder, "'base' is a model, not a data set", "base {")


def test_columns_that_are_not_training_rows(folder):
    src = 'data texts = "texts.jsonl"\nadapter a = train ia3 on texts {}\n'
    d = one(src, folder, "data set 'texts' has no columns 'prompt', 'completion'", "texts {")
    assert "text, label" in d.hint and "messages" in d.hint
    # a selection has its pool's columns
    sel = 'data s = select 1 from "texts.jsonl" like "target.jsonl" by gzip\nadapter a = train lora on s {}\n'
    one(sel, folder, "data set 's' has no columns", "s {")


def test_a_data_set_file_with_a_bad_row_is_refused_like_the_file(folder):
    src = 'data rows = "bad_row.jsonl"\nadapter a = train lora on rows {}\n'
    (d,) = [d for d in errors(src, folder) if "bad training data" in d.message]
    assert "bad_row.jsonl:2: missing key 'completion'" in d.message and d.span.line == 2


def test_a_string_path_still_trains_and_errors_as_before(folder):
    (d,) = errors('adapter a = train lora on "missing.jsonl" {}\n', folder)
    assert "training data not found" in d.message and d.span.col == 13


# ---------------------------------------------------------------- run (tiny model)


def build(prog, name: str) -> Path:
    return Path(prog._executor().builder.value(prog.frontend.compiled.names[name]))


def test_training_on_a_selection_uses_its_rows_keyed_by_content(folder, tiny_model_dir, lmlang_home):
    src = (
        f'model base = "{tiny_model_dir}"\n'
        'data picked = select 3 from "pool.jsonl" like "target.jsonl" by gzip\n'
        f"adapter a = train lora on picked {{ base: base, {OPTS} }}\n"
    )
    prog = lmlang.compile(src, base_dir=folder, device="cpu")
    adapter = build(prog, "a")
    (data,) = (lmlang_home / TRAINING_DATA_DIR).glob("*.jsonl")
    rows = [json.loads(x) for x in data.read_text(encoding="utf-8").splitlines()]
    assert rows == DataSets(prog).rows("picked")  # the selected rows, in pool order
    assert len(rows) == 3 and all(r["prompt"] in MATH for r in rows)
    meta = json.loads((adapter / META_FILE).read_text(encoding="utf-8"))
    assert meta["data"] == str(data) and meta["rows"] == 3
    # the adapter is keyed by the rows' bytes: the same rows from any file reuse it
    copy = folder / "copy.jsonl"
    copy.write_bytes(data.read_bytes())
    again = train_lora(
        tiny_model_dir,
        copy,
        {"rank": 4, "alpha": 8, "epochs": 1, "batch_size": 2, "max_length": 48, "seed": 1},
        progress=False,
    )
    assert again.cached and Path(again.path) == adapter
    # another selection is other rows, so another adapter
    other = lmlang.compile(src.replace("select 3", "select 2"), base_dir=folder, device="cpu")
    assert build(other, "a") != adapter
    assert len(list((lmlang_home / TRAINING_DATA_DIR).glob("*.jsonl"))) == 2


def test_training_on_a_file_data_set_is_training_on_the_file(folder, tiny_model_dir, lmlang_home):
    head = f'model base = "{tiny_model_dir}"\ndata pairs = "pairs.jsonl"\n'
    by_name = lmlang.compile(
        head + f"adapter a = train lora on pairs {{ base: base, {OPTS} }}\n", base_dir=folder, device="cpu"
    )
    by_path = lmlang.compile(
        head + f'adapter a = train lora on "pairs.jsonl" {{ base: base, {OPTS} }}\n', base_dir=folder, device="cpu"
    )
    assert build(by_name, "a") == build(by_path, "a")
    assert not (lmlang_home / TRAINING_DATA_DIR).exists() or not list((lmlang_home / TRAINING_DATA_DIR).iterdir())


def test_the_result_cache_key_follows_the_files_under_a_data_set(folder):
    from lmlang.runtime.result_cache import CallKeys

    src = (
        'data picked = select 2 from "pool.jsonl" like "target.jsonl" by gzip\n'
        "adapter a = train lora on picked {}\nmodel m = default + a\n"
    )

    def key() -> str:
        c = lmlang.compile(src, base_dir=folder).frontend.compiled
        return CallKeys(c, {}).model_hash(c.names["a"])

    before = key()
    assert key() == before
    write_jsonl(folder / "pool.jsonl", [{"prompt": "What is 1 plus 1?", "completion": "2"}])
    assert key() != before


def test_a_selection_by_embedding_names_its_encoder(folder, tiny_model_dir, tiny_model_dir_b, lmlang_home):
    """The encoder (the script's first model) is in the train node's recipe,
    so the node and the results cached from it follow it, and in the trained
    adapter's metadata."""
    from lmlang.runtime.result_cache import CallKeys

    def src(model: Path) -> str:
        return (
            f'model base = "{model}"\n'
            'data picked = select 3 from "pool.jsonl" like "target.jsonl" by embedding\n'
            f"adapter a = train lora on picked {{ base: base, {OPTS} }}\n"
        )

    prog = lmlang.compile(src(tiny_model_dir), base_dir=folder, device="cpu")
    c = prog.frontend.compiled
    spec = c.spec(c.names["a"])
    assert isinstance(spec, TrainSpec) and spec.recipe[:3] == ("select", "embedding", 3)
    assert spec.recipe[-1] == ("encoder", ("node", c.names["base"]))
    other = lmlang.compile(src(tiny_model_dir_b), base_dir=folder, device="cpu").frontend.compiled
    assert CallKeys(other, {}).model_hash(other.names["a"]) != CallKeys(c, {}).model_hash(c.names["a"])
    # by gzip there is no encoder
    gz = lmlang.compile(src(tiny_model_dir).replace("embedding", "gzip"), base_dir=folder).frontend.compiled
    assert not any(part[0] == "encoder" for part in gz.spec(gz.names["a"]).recipe if isinstance(part, tuple))

    meta = json.loads((build(prog, "a") / META_FILE).read_text(encoding="utf-8"))
    assert meta["recipe"][-1] == ["encoder", ["node", c.names["base"]]]
    assert meta["recipe"][3] == ["file", str(folder / "pool.jsonl")]
