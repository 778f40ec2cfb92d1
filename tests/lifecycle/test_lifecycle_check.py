"""Check-time errors of `data`, `eval` and `export`: each positioned at the
word that is wrong, before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lmlang
from lmlang.errors import CheckError

QUERY = '''
query classify(text: str) {
    user "Review: {text}"
    assistant "[label]"
    where label in ["positive", "negative"]
}
'''


@pytest.fixture()
def folder(tmp_path) -> Path:
    (tmp_path / "test.jsonl").write_text(json.dumps({"text": "a", "label": "positive"}) + "\n", encoding="utf-8")
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n", encoding="utf-8")
    (tmp_path / "h.csv").write_text("text,label\nok,positive\n", encoding="utf-8")
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
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


def test_a_good_script_checks(folder):
    src = (
        QUERY
        + '''
model base = default
adapter a = lora "adapter"
data tests = "test.jsonl"
data csv = "h.csv"
data picked = select 1 from "pairs.jsonl" like tests by gzip
data near = select 1 from picked like csv by embedding
eval acc = exact_match(classify, tests, expected: label)
eval acc2 = f1(classify, csv, expected: label)
export base to "out/base"
'''
    )
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    prog = lmlang.compile(src, "s.lm", base_dir=folder)
    c = prog.frontend.checked
    assert c.data_columns == {
        "tests": ("text", "label"),
        "csv": ("text", "label"),
        "picked": ("prompt", "completion"),
        "near": ("prompt", "completion"),
    }
    assert [e.name for e in c.evals.values()] == ["acc", "acc2"]
    assert not [w for w in prog.warnings if "never called" in w.message]


@pytest.mark.parametrize(
    "line, message, word",
    [
        ('eval e = exact_match(classify, "pairs.jsonl", expected: label)', "has no columns 'text', 'label'", '"pairs'),
        ('eval e = exact_match(clasify, "test.jsonl", expected: label)', "undefined query 'clasify'", "clasify"),
        (
            'eval e = exact_macth(classify, "test.jsonl", expected: label)',
            "unknown metric 'exact_macth'",
            "exact_macth",
        ),
        ('eval e = f1(classify, "test.jsonl", wanted: label)', "with `expected:`, not `wanted:`", "wanted"),
        ('eval e = f1(classify, "test.jsonl", expected: labl)', "no hole 'labl'", "labl"),
        ('eval e = f1(classify, nothing, expected: label)', "undefined data set 'nothing'", "nothing"),
        ('eval e = f1(classify, "missing.jsonl", expected: label)', "data file not found", '"missing'),
        ('eval e = f1(classify, "x.txt", expected: label)', "a data file is .jsonl or .csv", '"x.txt'),
        ('eval e = f1(classify, "empty.jsonl", expected: label)', "has no rows", '"empty'),
        ('data d = select 0 from "test.jsonl" like "test.jsonl" by gzip', "positive number of rows", "select"),
        ('data d = select 2 from "test.jsonl" like "test.jsonl" by zip', "unknown selection method 'zip'", "zip"),
        ('data d = select 2 from d like "test.jsonl" by gzip', "selected from itself", "d like"),
        ('data d = "/etc/passwd.jsonl"', "outside the script's folder", '"/etc'),
        ('export nothing to "out"', "undefined model or adapter 'nothing'", "nothing"),
        ('export classify to "out"', "'classify' is a query; export takes a model or an adapter", "classify"),
        ('export base to "/tmp/elsewhere"', "export path '/tmp/elsewhere' is outside", "export"),
        ('export base to "test.jsonl"', "is a file", "export"),
    ],
)
def test_positioned_errors(folder, line, message, word):
    one(QUERY + "model base = default\n" + line + "\n", folder, message, word)


@pytest.mark.parametrize(
    "decl, message",
    [
        ("model f = fuse { base: 1.0, base: -0.5 }", "a fusion mixes its members' logits"),
        ('model f = server "http://127.0.0.1:9/v1" { model: "m" }', "a served model's weights live in its server"),
        ("router f = route rules { base: matches r\"a\" }", "is a router, which cannot be exported"),
    ],
)
def test_unexportable_targets_are_refused(folder, decl, message):
    src = f'model base = default\n{decl}\nmodel g = f\nexport f to "out/f"\n'
    d = one(src, folder, message, "f to")
    assert d.hint
    if "router" not in decl:  # through a name, too
        one(src.replace('export f to "out/f"', 'export g to "out/g"'), folder, message, "g to")


def test_two_exports_to_one_folder(folder):
    one('model base = default\nexport base to "out"\nexport base to "./out"\n', folder, "two exports write", "export")


def test_lifecycle_words_stay_names_elsewhere(folder):
    src = (
        QUERY
        + '''
flow {
    data = classify("x")
    eval = data.label
    export = eval
    emit select = export, by = 1, like = 2, to = 3
}
'''
    )
    prog = lmlang.compile(src, "s.lm", base_dir=folder)
    assert prog.frontend.checked.flow is not None


def test_a_used_file_shares_its_data_sets_with_paths_relative_to_it(folder):
    lib = folder / "lib"
    lib.mkdir()
    (lib / "rows.jsonl").write_text(json.dumps({"text": "b", "label": "negative"}) + "\n", encoding="utf-8")
    (lib / "data.lm").write_text(
        'data shared = "rows.jsonl"\nmodel m = default\nexport m to "out/m"\n', encoding="utf-8"
    )
    prog = lmlang.compile(
        'use "lib/data.lm"\n' + QUERY + "eval e = exact_match(classify, shared, expected: label)\n",
        "s.lm",
        base_dir=folder,
    )
    c = prog.frontend.checked
    assert c.data_columns["shared"] == ("text", "label") and c.exports == []
    from lmlang.lifecycle.data import DataSets

    assert DataSets(prog).rows("shared") == [{"text": "b", "label": "negative"}]
