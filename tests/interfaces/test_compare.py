"""`lmlang compare` and lmlang.compare: model-update compatibility (accuracy,
negative and positive flips) on the tiny random model."""

import json

import pytest
from click.testing import CliRunner

import lmlang
from lmlang.cli import main
from lmlang.compare import CompareError, compare, emitted_names, matches, swap_model

TEXTS = [
    "I loved it",
    "Terrible service",
    "Great food!",
    "It was fine",
    "Never again",
    "What a film",
    "so so",
    "The capital of France",
    "12 * 7",
    "yes no",
]
LABELS = [
    "positive",
    "negative",
    "positive",
    "neutral",
    "negative",
    "positive",
    "neutral",
    "neutral",
    "negative",
    "positive",
]


def script(model_dir, options: str, extra: str = "") -> str:
    return f'''
input text: str
model m = "{model_dir}"
{extra}
query pick(t: str) using m {{
    user "Review: {{t}}"
    assistant "[label]"
    where label in [{options}]
}}
flow {{ r = pick(text) emit label = r.label }}
'''


ALL3 = '"positive", "negative", "neutral"'
TWO = '"positive", "negative"'  # the tiny model says "neutral" given the choice, so answers differ


@pytest.fixture()
def rows():
    return [{"text": t, "label": lab} for t, lab in zip(TEXTS, LABELS)]


def labels_of(prog, rows):
    return [r["label"] for r in prog.run_batch([{"text": r["text"]} for r in rows])]


def test_against_itself_has_no_flips(tiny_model_dir, rows):
    a = lmlang.compile(script(tiny_model_dir, ALL3))
    b = lmlang.compile(script(tiny_model_dir, ALL3))
    rep = compare(a, b, rows, expected="label")
    assert rep.output == "label" and rep.total == len(rows)
    assert rep.negative_flips == [] and rep.positive_flips == []
    assert rep.old_correct == rep.new_correct
    direct = labels_of(lmlang.compile(script(tiny_model_dir, ALL3)), rows)
    assert rep.old_correct == sum(d == r["label"] for d, r in zip(direct, rows))
    assert [r.old for r in rep.rows] == direct


def test_counts_match_a_direct_computation(tiny_model_dir, rows):
    old = lmlang.compile(script(tiny_model_dir, ALL3))
    new = lmlang.compile(script(tiny_model_dir, TWO))
    rep = compare(old, new, rows, expected="label", output="label")
    a = labels_of(lmlang.compile(script(tiny_model_dir, ALL3)), rows)
    b = labels_of(lmlang.compile(script(tiny_model_dir, TWO)), rows)
    gold = [r["label"] for r in rows]
    ok_a = [x == g for x, g in zip(a, gold)]
    ok_b = [x == g for x, g in zip(b, gold)]
    assert rep.old_correct == sum(ok_a) and rep.new_correct == sum(ok_b)
    assert [r.index for r in rep.negative_flips] == [i for i in range(len(rows)) if ok_a[i] and not ok_b[i]]
    assert [r.index for r in rep.positive_flips] == [i for i in range(len(rows)) if ok_b[i] and not ok_a[i]]
    assert rep.old_accuracy == pytest.approx(sum(ok_a) / len(rows))
    assert rep.negative_flip_rate == pytest.approx(len(rep.negative_flips) / len(rows))
    # The new program cannot say "neutral": every row it changes was "neutral" before.
    for r in rep.rows:
        assert r.new in ("positive", "negative")
        if r.old != r.new:
            assert r.old == "neutral"
    assert rep.negative_flips and rep.positive_flips  # the case is not vacuous
    d = rep.to_dict()
    assert d["negative_flips"] == len(rep.negative_flips)
    assert [x["row"] for x in d["negative_flip_rows"]] == [r.index for r in rep.negative_flips]
    text = rep.render()
    assert "negative flips (right -> wrong)" in text


def test_flips_are_forced_when_the_gold_is_the_old_answer(tiny_model_dir, rows):
    """Gold = the old program's own answers: old is 100% right, and every row
    where new differs is a negative flip."""
    old = lmlang.compile(script(tiny_model_dir, ALL3))
    new = lmlang.compile(script(tiny_model_dir, TWO))
    a = labels_of(old, rows)
    b = labels_of(new, rows)
    gold_rows = [{"text": r["text"], "label": x} for r, x in zip(rows, a)]
    rep = compare(old, new, gold_rows, expected="label")
    assert rep.old_accuracy == 1.0
    assert len(rep.negative_flips) == sum(x != y for x, y in zip(a, b)) > 0
    assert rep.positive_flips == []


def test_swap_rebinds_a_model(tiny_model_dir, tiny_model_dir_b, rows):
    src = script(tiny_model_dir, ALL3, extra=f'model other = "{tiny_model_dir_b}"')
    prog = lmlang.compile(src)
    swapped = swap_model(prog, "m", "other")
    direct_b = lmlang.compile(script(tiny_model_dir_b, ALL3))
    assert labels_of(swapped, rows) == labels_of(direct_b, rows)
    assert labels_of(prog, rows) == labels_of(lmlang.compile(script(tiny_model_dir, ALL3)), rows)
    rep = compare(prog, swapped, rows, expected="label")
    assert rep.total == len(rows)


def test_swap_errors(tiny_model_dir):
    prog = lmlang.compile(script(tiny_model_dir, ALL3, extra="model wrapped = m"))
    with pytest.raises(CompareError, match="no model named 'nope'"):
        swap_model(prog, "m", "nope")
    with pytest.raises(CompareError, match="circular"):
        swap_model(prog, "m", "wrapped")
    assert swap_model(prog, "m", "m") is prog


def test_output_selection(tiny_model_dir, rows):
    two = lmlang.compile(
        script(tiny_model_dir, ALL3).replace("emit label = r.label", "emit label = r.label, other = r.label")
    )
    one = lmlang.compile(script(tiny_model_dir, ALL3))
    assert emitted_names(two) == ["label", "other"]
    with pytest.raises(CompareError, match="several"):
        compare(two, two, rows, expected="label")
    with pytest.raises(CompareError, match="emits no 'other'"):
        compare(two, one, rows, expected="label", output="other")
    rep = compare(two, two, rows, expected="label", output="other")
    assert rep.output == "other"


def test_matches():
    assert matches(12, "12") and matches(12, 12) and matches("12", 12)
    assert matches(True, "true") and not matches(True, 1)
    assert matches("positive", " positive ") and not matches("positive", "negative")
    assert matches({"a": 1}, {"a": 1}) and matches(1.0, 1)


# ---------------------------------------------------------------- CLI


def write_case(tmp_path, tiny_model_dir, tiny_model_dir_b=None):
    (tmp_path / "old.lm").write_text(
        script(tiny_model_dir, ALL3, extra=f'model other = "{tiny_model_dir_b}"' if tiny_model_dir_b else "")
    )
    (tmp_path / "new.lm").write_text(script(tiny_model_dir, TWO))
    with open(tmp_path / "rows.jsonl", "w") as f:
        for t, lab in zip(TEXTS, LABELS):
            f.write(json.dumps({"text": t, "label": lab, "note": "ignored"}) + "\n")


def test_cli_two_files_json(tmp_path, tiny_model_dir, rows):
    write_case(tmp_path, tiny_model_dir)
    res = CliRunner().invoke(
        main,
        [
            "compare",
            str(tmp_path / "old.lm"),
            str(tmp_path / "new.lm"),
            "--data",
            str(tmp_path / "rows.jsonl"),
            "--expected",
            "label",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    d = json.loads(res.output.strip().splitlines()[-1])
    rep = compare(
        lmlang.compile(script(tiny_model_dir, ALL3)), lmlang.compile(script(tiny_model_dir, TWO)), rows, "label"
    )
    assert d["rows"] == len(rows)
    assert d["old"]["correct"] == rep.old_correct and d["new"]["correct"] == rep.new_correct
    assert d["negative_flips"] == len(rep.negative_flips) and d["positive_flips"] == len(rep.positive_flips)
    assert all("note" in r["input"] for r in d["negative_flip_rows"])


def test_cli_text_and_limit(tmp_path, tiny_model_dir):
    write_case(tmp_path, tiny_model_dir)
    res = CliRunner().invoke(
        main,
        [
            "compare",
            str(tmp_path / "old.lm"),
            str(tmp_path / "new.lm"),
            "--data",
            str(tmp_path / "rows.jsonl"),
            "--expected",
            "label",
            "--limit",
            "4",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "4 rows" in res.output and "negative flips" in res.output


def test_cli_swap(tmp_path, tiny_model_dir, tiny_model_dir_b):
    write_case(tmp_path, tiny_model_dir, tiny_model_dir_b)
    res = CliRunner().invoke(
        main,
        [
            "compare",
            str(tmp_path / "old.lm"),
            "--swap",
            "m=other",
            "--data",
            str(tmp_path / "rows.jsonl"),
            "--expected",
            "label",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    d = json.loads(res.output.strip().splitlines()[-1])
    assert d["rows"] == len(TEXTS) and "m=other" in d["new"]["name"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--expected", "missing"], "no 'missing' column"),
        (["--expected", "label", "--output", "nope"], "emits no 'nope'"),
        (["--expected", "label", "--swap", "m=nope"], "no model named 'nope'"),
    ],
)
def test_cli_errors_exit_2(tmp_path, tiny_model_dir, args, message):
    write_case(tmp_path, tiny_model_dir)
    files = [str(tmp_path / "old.lm")] + ([] if "--swap" in args else [str(tmp_path / "new.lm")])
    res = CliRunner().invoke(main, ["compare", *files, "--data", str(tmp_path / "rows.jsonl"), *args])
    assert res.exit_code == 2, res.output
    assert message in res.output


def test_cli_bad_data_row_exits_2(tmp_path, tiny_model_dir):
    write_case(tmp_path, tiny_model_dir)
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "positive"}\nnot json\n')
    res = CliRunner().invoke(
        main,
        [
            "compare",
            str(tmp_path / "old.lm"),
            str(tmp_path / "new.lm"),
            "--data",
            str(tmp_path / "bad.jsonl"),
            "--expected",
            "label",
        ],
    )
    assert res.exit_code == 2
    assert "bad.jsonl:2" in res.output


def test_cli_usage(tmp_path, tiny_model_dir):
    write_case(tmp_path, tiny_model_dir)
    res = CliRunner().invoke(
        main, ["compare", str(tmp_path / "old.lm"), "--data", str(tmp_path / "rows.jsonl"), "--expected", "label"]
    )
    assert res.exit_code == 2 and "--swap" in res.output
