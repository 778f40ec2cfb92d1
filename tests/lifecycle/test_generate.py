"""`data NAME = generate using MODEL from DATA { task, instruction, n, seed, where ... }`:
rows the model writes through an internal query, cached by content, shown
by `lmlang data show`, trained on by `train ... on NAME`; with `vote: k,
agree: m`, k sampled answers per row and only the rows m of them agree on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import lmlang
from lmlang import cachefile
from lmlang.errors import CheckError
from lmlang.lifecycle import generate as G
from lmlang.lifecycle.data import DataSets
from lmlang.lifecycle.select import row_text

REVIEWS = ["I loved it", "Awful food", "Great service", "Cold soup", "Friendly staff"]
LABELS = ["positive", "negative"]


def script(model: str, extra: str = "", opts: str = 'n: 3, seed: 1') -> str:
    return (
        f'model base = "{model}"\n'
        'data reviews = "reviews.jsonl"\n'
        "data synth = generate using base from reviews {\n"
        f'    task: "sentiment", instruction: "Label the review positive or negative.", {opts}\n'
        '    where output in ["positive", "negative"]\n'
        "}\n" + extra
    )


@pytest.fixture()
def folder(tmp_path) -> Path:
    (tmp_path / "reviews.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in REVIEWS), encoding="utf-8")
    return tmp_path


def test_pick_rows_is_seeded_and_keeps_source_order():
    rows = [{"i": i} for i in range(10)]
    a = G.pick_rows(rows, 4, seed=1)
    assert a == G.pick_rows(rows, 4, seed=1) and len(a) == 4
    assert [r["i"] for r in a] == sorted(r["i"] for r in a)
    assert G.pick_rows(rows, 4, seed=2) != a
    assert G.pick_rows(rows, None, 0) == rows and G.pick_rows(rows, 99, 0) == rows


def test_generated_rows_obey_the_where_clause_and_are_cached(folder, tiny_model_dir, lmlang_home, monkeypatch):
    prog = lmlang.compile(script(str(tiny_model_dir)), base_dir=folder, device="cpu")
    rows = DataSets(prog).rows("synth")
    picked = G.pick_rows([{"text": t} for t in REVIEWS], 3, 1)
    assert [r["prompt"] for r in rows] == [
        f"Task: sentiment\nLabel the review positive or negative.\n\n{row_text(r)}" for r in picked
    ]
    assert all(r["completion"] in LABELS for r in rows)
    assert len(list((lmlang_home / "generate").glob("*.json"))) == 1
    # the same outputs as calling the internal query directly
    direct = prog.call_query("synth.generate", kwargs={"input": picked[0]["text"]})
    assert direct["output"] == rows[0]["completion"]

    def boom(*a, **k):
        raise AssertionError("decoded again")

    again = lmlang.compile(script(str(tiny_model_dir)), base_dir=folder, device="cpu")
    monkeypatch.setattr(type(again._executor()), "run_calls", boom)
    assert DataSets(again).rows("synth") == rows
    # another instruction is another query: generated again
    other = lmlang.compile(
        script(str(tiny_model_dir)).replace("Label the", "Classify the"), base_dir=folder, device="cpu"
    )
    monkeypatch.setattr(type(other._executor()), "run_calls", boom)
    with pytest.raises(AssertionError, match="decoded again"):
        DataSets(other).rows("synth")


def test_training_on_generated_rows(folder, tiny_model_dir, lmlang_home):
    from lmlang.graph import TrainSpec

    extra = "adapter a = train lora on synth { base: base, rank: 4, epochs: 1, batch_size: 2, max_length: 64 }\n"
    prog = lmlang.compile(script(str(tiny_model_dir), extra), base_dir=folder, device="cpu")
    c = prog.frontend.compiled
    spec = c.spec(c.names["a"])
    assert isinstance(spec, TrainSpec) and spec.dataset == "synth"
    assert spec.recipe[0] == "generate" and spec.recipe[1] == ("node", c.names["synth.generate"])
    adapter = Path(prog._executor().builder.value(c.names["a"]))
    (data,) = (lmlang_home / "training-data").glob("*.jsonl")
    assert [json.loads(x) for x in data.read_text(encoding="utf-8").splitlines()] == DataSets(prog).rows("synth")
    assert (adapter / "adapter_model.safetensors").is_file()


def test_cli_data_show_generates(folder, tiny_model_dir, lmlang_home):
    (folder / "s.lm").write_text(script(str(tiny_model_dir)), encoding="utf-8")
    cmd = [
        sys.executable,
        "-m",
        "lmlang.cli",
        "data",
        "show",
        "synth",
        str(folder / "s.lm"),
        "--json",
        "--device",
        "cpu",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    shown = [json.loads(x) for x in out.stdout.splitlines()]
    assert len(shown) == 3 and all(r["completion"] in LABELS for r in shown)


def errors(src: str, folder: Path) -> list:
    with pytest.raises(CheckError) as info:
        lmlang.compile(src, "s.lm", base_dir=folder)
    return info.value.diagnostics


def at(src: str, d) -> str:
    return src.splitlines()[d.span.line - 1][d.span.col - 1 :]


def test_check_errors_are_positioned(folder):
    bad_hole = script("default").replace("where output", "where label")
    (d,) = errors(bad_hole, folder)
    assert "constraint on [label]" in d.message and at(bad_hole, d).startswith("label in") and "output" in d.hint
    bad_opts = script("default", opts='n: 0, sed: 1, task: 3')
    found = {d.message: at(bad_opts, d) for d in errors(bad_opts, folder)}
    assert found["generate takes a positive number of rows, got n: 0"].startswith("0,")
    assert found["unknown generate option 'sed'"].startswith("sed:")
    # `task` given twice (a string above, an integer here): both reported
    assert any(m.startswith("generate option 'task' takes a string") for m in found)
    no_instruction = script("default").replace('instruction: "Label the review positive or negative.", ', "")
    (d,) = errors(no_instruction, folder)
    assert d.message == "generate needs an instruction" and at(no_instruction, d).startswith("{")
    missing = script("default").replace("from reviews", "from review")
    (d,) = [d for d in errors(missing, folder) if "undefined data set" in d.message]
    assert at(missing, d).startswith("review {") and "reviews" in d.hint
    not_a_model = script("default").replace("using base", "using reviews")
    (d,) = errors(not_a_model, folder)
    assert d.message == "'reviews' is a data set, not a model" and at(not_a_model, d).startswith("reviews from")


def test_a_generated_data_set_has_training_columns(folder):
    src = script("default", "adapter a = train lora on synth { rank: 4 }\n")
    assert lmlang.compile(src, base_dir=folder).frontend.checked.data_columns["synth"] == ("prompt", "completion")


def test_a_generation_on_a_served_model_is_checked_like_any_query(folder):
    # the internal query joins the query passes, so what a server cannot
    # decode is refused at check time, positioned at the where clause
    src = (
        'model srv = server "http://127.0.0.1:9/v1" { backend: none }\n'
        'data reviews = "reviews.jsonl"\n'
        "data synth = generate using srv from reviews {\n"
        '    instruction: "Label it."\n'
        '    where output in ["positive", "negative"]\n'
        "}\n"
    )
    (d,) = errors(src, folder)
    assert d.message.startswith("served model 'srv' cannot enforce a choice") and d.code == "served-unsupported"
    assert at(src, d).startswith('output in ["positive"')


# ---------------------------------------------------------------- vote: k, agree: m


def test_the_vote_samples_and_keeps_the_rows_its_samples_agree_on(folder, tiny_model_dir, lmlang_home):
    prog = lmlang.compile(script(str(tiny_model_dir), opts="seed: 1, vote: 4, agree: 2"), base_dir=folder)
    spec = prog._executor().c.spec(prog._executor().query_ids["synth.generate"])
    assert spec.decoder[0] == "vote" and dict(spec.decoder[1])["n"] == 4  # sampled, not argmax
    kept = DataSets(prog).rows("synth")
    (cache,) = (lmlang_home / "generate").glob("*.json")
    answers = json.loads(cachefile.read(cache, G.CACHE_KIND))  # [winner, its votes] per source row
    assert len(answers) == len(REVIEWS) and all(1 <= votes <= 4 for _, votes in answers)
    assert [r["completion"] for r in kept] == [a for a, votes in answers if votes >= 2]
    # a stricter agreement keeps a subset of the same cached answers (no new decoding: same query)
    strict = lmlang.compile(script(str(tiny_model_dir), opts="seed: 1, vote: 4"), base_dir=folder)
    rows = DataSets(strict).rows("synth")
    assert [r["completion"] for r in rows] == [a for a, votes in answers if votes == 4]
    assert len(list((lmlang_home / "generate").glob("*.json"))) == 1


def test_rows_keep_only_answers_with_enough_votes():
    opts = {"instruction": "Label it.", "vote": 3, "agree": 2}
    rows = G._rows(opts, ["a", "b", "c"], [["positive", 3], ["negative", 1], ["negative", 2]])
    assert [(r["prompt"], r["completion"]) for r in rows] == [
        ("Label it.\n\na", "positive"),
        ("Label it.\n\nc", "negative"),
    ]
    assert [r["completion"] for r in G._rows({**opts, "agree": 3}, ["a", "b"], [["x", 3], ["y", 2]])] == ["x"]
    assert not G._well_formed("x", opts) and G._well_formed(["x", 2], opts) and G._well_formed("x", {})


def test_the_vote_is_in_the_recipe(folder):
    def recipe(opts):
        prog = lmlang.compile(script("default", "adapter a = train lora on synth { rank: 4 }\n", opts), base_dir=folder)
        return prog.frontend.compiled.graph.nodes[prog.frontend.compiled.names["a"]]["spec"].recipe

    assert recipe("n: 3, vote: 3") != recipe("n: 3, vote: 3, agree: 2") != recipe("n: 3")


@pytest.mark.parametrize(
    "opts, message, word",
    [
        ("vote: 1", "a vote needs at least 2 samples, got vote: 1", "1"),
        ("agree: 2", "agree needs vote (the samples it counts)", "2"),
        ("vote: 3, agree: 4", "agree counts votes of 3 samples: between 1 and 3, got 4", "4"),
        ("vote: 3, agree: 0", "agree counts votes of 3 samples: between 1 and 3, got 0", "0"),
        ('vote: "3"', "generate option 'vote' takes an integer", '"3"'),
    ],
)
def test_vote_errors_are_positioned(folder, opts, message, word):
    src = script("default", opts=opts)
    (d,) = errors(src, folder)
    assert d.message == message
    assert src.splitlines()[d.span.line - 1][d.span.col - 1 :].startswith(word)


# ---------------------------------------------------------------- demos: DATA, shots: k

DEMOS = [("Service was slow", "negative"), ("Lovely room", "positive"), ("Rude waiter", "negative")]


def with_demos(folder: Path, opts: str) -> str:
    (folder / "demos.jsonl").write_text(
        "".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in DEMOS), encoding="utf-8"
    )
    return script("default", opts=opts)


def test_demos_are_shown_to_the_generator_not_trained_on(folder, tiny_model_dir, lmlang_home, monkeypatch):
    src = with_demos(folder, 'n: 3, seed: 1, demos: "demos.jsonl", shots: 2').replace("default", str(tiny_model_dir))
    prog = lmlang.compile(src, base_dir=folder, device="cpu")
    rows = DataSets(prog).rows("synth")
    picked = G.pick_rows([{"text": t} for t in REVIEWS], 3, 1)
    # the training rows are zero-shot: the user message without the examples
    assert [r["prompt"] for r in rows] == [
        f"Task: sentiment\nLabel the review positive or negative.\n\n{row_text(r)}" for r in picked
    ]
    assert all(r["completion"] in LABELS for r in rows)
    shown = G.pick_rows([{"prompt": p, "completion": c} for p, c in DEMOS], 2, 1)
    text = "".join(f"{r['prompt']}\nAnswer: {r['completion']}\n\n" for r in shown)
    spec = prog._executor().c.spec(prog._executor().query_ids["synth.generate"])
    assert [p[0] for p in spec.params] == ["input", "demos"]
    direct = prog.call_query("synth.generate", kwargs={"input": picked[0]["text"], "demos": text})
    assert direct["output"] == rows[0]["completion"]
    # other demonstrations are another generation: decoded again, not read from the cache
    monkeypatch.setattr(type(prog._executor()), "run_calls", lambda *a, **k: pytest.fail("decoded again"))
    assert DataSets(prog).rows("synth") == rows
    other = lmlang.compile(src.replace("shots: 2", "shots: 3"), base_dir=folder, device="cpu")

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(type(other._executor()), "run_calls", boom)
    with pytest.raises(AssertionError, match="decoded again"):
        DataSets(other).rows("synth")


def test_demos_prompt_plain_text_few_shot(folder):
    prog = lmlang.compile(with_demos(folder, 'demos: "demos.jsonl"'), base_dir=folder)
    q = prog.frontend.checked.query_decls["synth.generate"]
    (seg,) = q.segments  # one plain-text segment: no chat template
    assert seg.role is None
    texts = [getattr(p, "text", None) for p in seg.parts]
    assert texts[0] == "Task: sentiment\nLabel the review positive or negative.\n\n"
    assert texts[-3:] == ["\nAnswer: ", None, "\n"] and seg.parts[-2].name == "output"
    rows = [{"prompt": "a", "completion": "b"}]
    from lmlang.lifecycle.tables import demo_text

    assert demo_text(rows) == "a\nAnswer: b\n\n"


def test_demos_are_in_the_recipe(folder):
    def recipe(opts):
        src = with_demos(folder, opts) + "adapter a = train lora on synth { rank: 4 }\n"
        prog = lmlang.compile(src, base_dir=folder)
        return prog.frontend.compiled.graph.nodes[prog.frontend.compiled.names["a"]]["spec"].recipe

    plain, two, three = (
        recipe("n: 3"),
        recipe('demos: "demos.jsonl", shots: 2'),
        recipe('demos: "demos.jsonl", shots: 3'),
    )
    assert len(plain) == 4 and two[-1] == ("demos", ("file", str(folder / "demos.jsonl")))
    assert ("shots", 2) in two[2] and two != three
    # a data set's name works as well as a file
    named = with_demos(folder, "demos: shots_data").replace(
        'data reviews = "reviews.jsonl"\n', 'data reviews = "reviews.jsonl"\ndata shots_data = "demos.jsonl"\n'
    )
    assert lmlang.compile(named, base_dir=folder).frontend.checked.data_columns["synth"] == ("prompt", "completion")


def test_demos_check_errors(folder):
    (folder / "unlabelled.jsonl").write_text(json.dumps({"text": "x"}) + "\n", encoding="utf-8")
    no_demos = script("default", opts="shots: 2")
    (d,) = errors(no_demos, folder)
    assert d.message == "shots needs demos (the rows it picks)" and at(no_demos, d).startswith("2")
    zero = with_demos(folder, 'demos: "demos.jsonl", shots: 0')
    (d,) = errors(zero, folder)
    assert d.message == "shots takes a positive number of rows, got 0"
    unlabelled = script("default", opts='demos: "unlabelled.jsonl"')
    (d,) = errors(unlabelled, folder)
    assert d.message == "the demonstrations 'unlabelled.jsonl' have no prompt or completion column"
    assert at(unlabelled, d).startswith('"unlabelled.jsonl"')
    number = script("default", opts="demos: 3")
    (d,) = errors(number, folder)
    assert d.message == "generate option 'demos' takes a data file or a data set's name" and at(number, d) == "3"
