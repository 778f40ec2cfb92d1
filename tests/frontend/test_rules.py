"""One rule, one place: each rule of the language is one torch-free table or
function that the checker validates against and the runtime executes from.
These tests pin the shared rules, and that every layer reads the same one."""

import json

import pytest

from lmlang import datarun
from lmlang.constraints import check as constraint_check
from lmlang.constraints.lower import lower
from lmlang.constraints.shapes import merge_shapes, option_fits, split_options
from lmlang.constraints.spec import All, BoolType, Choice, FloatType, IntType, JsonSchema, Regex, Stop
from lmlang.jsonl import parse_jsonl
from lmlang.merge import options as merge_options
from lmlang.models import options as model_options
from lmlang.models import training
from lmlang.models.peft_config import pattern_value
from lmlang.problems import Problem
from lmlang.errors import DataError, LmlangRuntimeError


# ---------------------------------------------------------------- PEFT rank/alpha patterns


def test_pattern_alternation_matches_every_branch_as_peft_does():
    # The merger's old regex, (.*\.)?{key}$, read `q_proj|v_proj` as
    # "(.*\.)?q_proj" or "v_proj$" anchored at the start: layer 0's v_proj got
    # the default rank. PEFT groups the pattern whole.
    patterns = {"q_proj|v_proj": 16}
    assert pattern_value(patterns, "model.layers.0.self_attn.v_proj", 8) == 16
    assert pattern_value(patterns, "model.layers.0.self_attn.q_proj", 8) == 16
    assert pattern_value(patterns, "model.layers.0.self_attn.q_proj_extra", 8) == 8
    assert pattern_value(patterns, "model.layers.0.self_attn.k_proj", 8) == 8
    assert pattern_value({r"layers\.0\.self_attn\.q_proj": 4}, "model.layers.0.self_attn.q_proj", 8) == 4
    assert pattern_value({r"layers\.0\.self_attn\.q_proj": 4}, "model.layers.10.self_attn.q_proj", 8) == 8
    assert pattern_value(None, "x", 3) == 3


def test_pattern_rule_agrees_with_peft():
    from peft.utils.other import get_pattern_key

    patterns = {"q_proj|v_proj": 16, r"layers\.1\..*": 2, "o_proj": 4}
    for module in (
        "model.layers.0.self_attn.v_proj",
        "model.layers.1.mlp.up_proj",
        "model.layers.0.o_proj",
        "model.layers.0.mlp.down_proj",
        "q_proj",
    ):
        key = get_pattern_key(list(patterns), module)
        assert pattern_value(patterns, module, None) == patterns.get(key), module


def test_loader_and_merger_share_the_pattern_rule():
    from lmlang.merge import lora
    from lmlang.models import adapters

    assert lora.pattern_value is pattern_value
    assert adapters._pattern_value is pattern_value


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "option,shape,fits",
    [
        ("12", IntType(), True),
        ("012", IntType(), False),
        ("5", IntType(1, 3), False),
        ("2", IntType(1, 3), True),
        ("1.5e3", FloatType(), True),
        ("true", BoolType(), True),
        ("yes", BoolType(), False),
        ("yes", Regex("^y.s$"), True),
        ("no", Regex("y.s"), False),
        ("a", Regex("("), False),
        ('{"a": 1}', JsonSchema(json.dumps({"type": "object"})), True),
        ('{"a":1}', JsonSchema('{"type": "object"}'), False),
        ("b", Choice(("a", "b")), True),
    ],
)
def test_option_fits(option, shape, fits):
    assert option_fits(option, shape) is fits


def test_checker_merge_policy():
    choice = Choice(("1", "2"))
    assert merge_shapes(choice, IntType(1, 3)) == choice
    assert merge_shapes(IntType(1, 3), choice) == choice
    assert merge_shapes(Choice(("2", "9")), IntType(1, 3)) is None  # a partial fit is a contradiction
    assert merge_shapes(choice, Choice(("2", "3"))) == Choice(("2",))  # two lists: the common options
    assert merge_shapes(choice, Choice(("3",))) is None
    assert merge_shapes(choice, JsonSchema('{"type": "integer"}')) is None
    assert merge_shapes(IntType(), BoolType()) is None
    assert merge_shapes(IntType(), IntType()) == IntType()


def test_lowering_and_checking_narrow_a_choice_by_the_same_rule():
    shapes = (Choice(("1", "x", "22")), Regex(r"\d"))
    fit, unfit = split_options(shapes[0].options, shapes[1])
    assert (fit, unfit) == (("1",), ("x", "22"))
    assert lower(All(shapes)).options == fit
    problems = constraint_check.check_constraint(All(shapes))
    assert [p.code for p in problems] == ["dead-option"] and "['x', '22']" in problems[0].message


def test_constraint_problems_are_the_shared_problem_type():
    problems = constraint_check.check_constraint(All((Choice(("ab",)), Stop("a", False))))
    assert problems and all(isinstance(p, Problem) for p in problems)
    assert "shapes.py" in constraint_check._JUDGES  # the disk cache knows who judges


# ---------------------------------------------------------------- training options


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("rank", 0, "training option 'rank' must be positive"),
        ("rank", 1.5, "training option 'rank' must be an integer"),
        ("lr", 2.0, "training option 'lr' must be in (0, 1)"),
        ("dropout", 1.0, "training option 'dropout' must be in [0, 1)"),
        ("max_length", 4, "training option 'max_length' must be at least 8"),
        ("alpha", float("inf"), "training option 'alpha' must be positive"),
        ("alpha", True, "training option 'alpha' must be a number"),
        ("target_modules", [], "target_modules takes a non-empty list of module names"),
        ("target_modules", "q_proj", "training option 'target_modules' must be a list"),
        ("seed", "x", "training option 'seed' must be an integer"),
        ("epoch", 3, "unknown training option 'epoch'"),
    ],
)
def test_training_option_rules_are_one_table(name, value, message):
    problem = model_options.check_train_option(name, value)
    assert problem is not None and problem.message == message and problem.option == name
    with pytest.raises(LmlangRuntimeError) as info:  # the runtime refuses by the same rule, same words
        training.normalize_options({name: value})
    assert info.value.message.startswith(message)


def test_training_defaults_come_from_the_table():
    out = training.normalize_options({})
    assert set(out) == set(model_options.TRAIN_OPTIONS)
    assert out == {**model_options.train_defaults(), "alpha": 16.0, "dropout": 0.0}
    assert model_options.check_train_option("seed", -3) is None
    assert model_options.check_train_option("epoch", 1).hint == "did you mean 'epochs'?"
    assert model_options.check_train_option("xyz", 1).hint.startswith("options: rank, alpha")  # `base` is the script's


# ---------------------------------------------------------------- fuse options


def test_fuse_options_table():
    assert model_options.fuse_default("plausibility") == 0.1
    assert model_options.check_fuse_option("contrastive", "plausibility", 0.5) is None
    bad = model_options.check_fuse_option("contrastive", "plausibility", 5)
    assert bad.message == "fuse plausibility must be a number in (0.0, 1.0]"
    unknown = model_options.check_fuse_option("contrastive", "plausibilty", 0.5)
    assert unknown.code == "unknown-option" and unknown.hint == "did you mean 'plausibility'?"
    assert model_options.check_fuse_option("linear", "plausibility", 0.5).code == "unknown-option"


def test_fusion_reads_its_default_from_the_table(tiny_model_dir, monkeypatch):
    import dataclasses

    from lmlang.models.loader import load_model
    from lmlang.runtime.fusion import FusedLM
    from lmlang.runtime.lm import HFModel

    lm = HFModel(load_model(tiny_model_dir, device="cpu"))
    spec = model_options.FUSE_MODES["contrastive"]["plausibility"]
    monkeypatch.setitem(
        model_options.FUSE_MODES["contrastive"], "plausibility", dataclasses.replace(spec, default=0.25)
    )
    assert FusedLM([(lm, 1.0), (lm, -1.0)], "contrastive").plausibility == 0.25
    assert FusedLM([(lm, 1.0), (lm, -1.0)], "contrastive", {"plausibility": 0.5}).plausibility == 0.5


# ---------------------------------------------------------------- merge problems are structured


def test_merge_problems_say_which_option_and_model():
    problems = merge_options.option_problems("ties", {"densty": 0.5}, [{"weight": 1.0}, {"density": 1.5}])
    by_code = {p.code: p for p in problems}
    unknown = by_code["unknown-option"]
    assert (unknown.option, unknown.model, unknown.hint) == ("densty", None, "did you mean 'density'?")
    bad = by_code["bad-value"]
    assert (bad.option, bad.model) == ("density", 1) and bad.message == "option 'density' must be <= 1.0, got 1.5"
    assert merge_options.validate_options("ties", {}, [{}, {"density": 1.5}]) == [
        "model 2: option 'density' must be <= 1.0, got 1.5"
    ]


def test_first_adapter_plays_the_base_in_one_place():
    assert merge_options.first_adapter_is_base("slerp") and not merge_options.first_adapter_is_base("ties")
    # slerp over three adapters: the first is the base, so two others are one too many
    problems = merge_options.adapter_merge_problems("slerp", {"t": 0.5}, [{}, {}, {}])
    assert [p.code for p in problems] == ["model-count"]
    assert merge_options.adapter_merge_problems("slerp", {"t": 0.5}, [{}, {}]) == []
    # a model's problem names its place in the list as written, the base included
    (p,) = merge_options.adapter_merge_problems("slerp", {"t": 0.5}, [{}, {"weight": 1.0}])
    assert (p.code, p.model) == ("unknown-option", 1)


def test_step_options():
    assert (
        merge_options.step_option_problems({"compat": "mergekit", "dtype": "bfloat16", "rank": 4}, adapters=True) == []
    )
    (p,) = merge_options.step_option_problems({"dtype": "int4"}, adapters=False)
    assert p.option == "dtype" and p.hint.startswith("dtype: float32")
    (p,) = merge_options.step_option_problems({"rank": 4}, adapters=False)
    assert p.code == "not-applicable"


# ---------------------------------------------------------------- decoders


def test_decoder_problems_are_structured():
    from lmlang import decoders

    (p,) = decoders.validate("sample", {"temprature": 0.5})
    assert (p.option, p.code, p.hint) == ("temprature", "unknown-option", "did you mean 'temperature'?")
    (p,) = decoders.validate("argmx", {})
    assert p.hint == "did you mean 'argmax'?"


# ---------------------------------------------------------------- one JSONL reader


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_jsonl_contract():
    data = '\ufeff{"a": 1}\r\n\n  \n[1]\n{"s": "x\u2028y"}\n{bad\n'.encode() + b'{"b": "\xff"}\n' + b'{"c": 2}'
    lines = list(parse_jsonl(data))
    assert [(x.line, x.code) for x in lines] == [
        (1, ""),
        (4, "not-object"),
        (5, ""),
        (6, "invalid-json"),
        (7, "not-utf8"),
        (8, ""),
    ]
    assert lines[0].value == {"a": 1} and lines[2].value == {"s": "x\u2028y"} and lines[5].value == {"c": 2}
    assert lines[1].problem == "expected a JSON object, got list"


@pytest.mark.parametrize(
    "line",
    [
        '{"a": "plain", "b": [1, {"c": 2.5}]}',
        '{"a": "\\ud800"}',  # a lone surrogate escape
        '{"a": "\\uDFFF x"}',
        '{"a": "\\ud83d\\ude00"}',  # a pair: one character, fine
        '{"a": "\\\\ud800"}',  # an escaped backslash, then text
        '{"a": ' + "[" * 99 + "]" * 99 + "}",  # 100 levels: the limit
        '{"a": ' + "[" * 100 + "]" * 100 + "}",  # 101: too deep
        '{"a": "' + "[" * 150 + '"}',  # brackets inside a string
    ],
)
def test_jsonl_skips_the_value_walk_only_where_it_cannot_find_a_problem(line):
    """parse_jsonl walks a row's values (value_problem) only when its text
    could hide a problem; the answer is the walk's, line by line."""
    from lmlang.jsonl import loads_strict, value_problem

    (got,) = parse_jsonl(line.encode())
    code, problem = value_problem(loads_strict(line))
    assert (got.code, got.problem) == (code, problem)
    assert (got.value is None) == bool(code)


def test_data_runs_and_training_read_jsonl_alike(tmp_path):
    row = {"prompt": "a\u2028b", "completion": "c"}
    path = _write(
        tmp_path / "d.jsonl",
        b"\xef\xbb\xbf" + json.dumps(row, ensure_ascii=False).encode() + b"\r\n\n" + json.dumps(row).encode() + b"\n",
    )
    assert training.read_rows(path) == [(1, row), (3, row)]
    assert [(r.index, r.values) for r in datarun.read_rows(path)] == [(0, row), (1, row)]


def test_a_bad_line_is_named_by_both_readers(tmp_path):
    path = _write(tmp_path / "d.jsonl", b'{"prompt": "a", "completion": "b"}\n\n\xff\xfe\n')
    (good, bad) = datarun.read_rows(path)
    assert good.error is None and f"{path}:3: bad data row: not UTF-8 text" in bad.error.message
    with pytest.raises(DataError, match=r"d.jsonl:3: not UTF-8 text"):
        training.read_rows(path)


# ---------------------------------------------------------------- the checker reads the same tables


def _check_errors(text: str, tmp_path) -> list[str]:
    from lmlang.errors import CheckError
    from lmlang.frontend import build_file

    f = tmp_path / "main.lm"
    f.write_text(text)
    try:
        build_file(f)
    except CheckError as e:
        return [d.message for d in e.diagnostics]
    return []


def test_checker_refuses_what_training_would_refuse(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    text = 'adapter a = train lora on "d.jsonl" { alpha: -1, dropout: 1.0, rank: 4 }\n'
    assert _check_errors(text, tmp_path) == [
        "training option 'alpha' must be positive",
        "training option 'dropout' must be in [0, 1)",
    ]
    # 1e999 is inf: the old checker let it through to fail when training started;
    # the parser now refuses every non-finite number literal, at the number
    from lmlang.errors import LmlangSyntaxError
    from lmlang.frontend import build_file

    (tmp_path / "main.lm").write_text('adapter a = train lora on "d.jsonl" { alpha: 1e999, rank: 4 }\n')
    with pytest.raises(LmlangSyntaxError, match="not a finite"):
        build_file(tmp_path / "main.lm")


def test_checker_reports_structured_merge_problems_on_the_member(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text("{}")
    text = (
        'adapter a = lora "a"\nadapter b = lora "b"\nadapter c = lora "c"\n'
        'adapter s = merge slerp { models: [a, b, c], t: 0.5 }\n'
        'adapter w = merge slerp { models: { a: 1.0, b: { weight: 1.0, densty: 0.5 } }, t: 0.5 }\n'
    )
    assert _check_errors(text, tmp_path) == [
        "merge method 'slerp' takes at most 2 models including the base, got 3",
        "merge slerp: unknown option 'weight' for merge method 'slerp'",
        "merge slerp: unknown option 'densty' for merge method 'slerp'",
    ]


def test_rules_router_words_must_be_strings(tmp_path):
    # `contains [x, ...]` used to crash the checker with a TypeError
    text = 'model a = default\nmodel b = default\nrouter r = route rules { a: contains [x, "y"], default: b }\n'
    assert _check_errors(text, tmp_path) == ["contains [...] takes a list of strings"]


def test_model_references_are_one_rule(tmp_path):
    from lmlang import ast as A
    from lmlang.compare import _model_refs
    from lmlang.frontend import build
    from lmlang.values import model_refs

    fe = build(
        'model base = default\nmodel t = base\nmodel other = "org/other"\n'
        'model m = merge slerp { base: base, models: [other], t: 0.5, compat: mergekit }\n'
        'model f = fuse linear { m: 1.0, t: -0.5 }\n'
    )
    checked = fe.checked
    assert [n for n, _ in model_refs(checked.models["m"].expr)] == ["base", "other"]
    # option keys (`t:`) and bare-word values (`mergekit`) are not models
    assert _model_refs(checked, checked.models["m"].expr) == {"base", "other"}
    assert _model_refs(checked, checked.models["f"].expr) == {"m", "t", "base", "other"}
    assert list(model_refs(A.ModelRef("x", span=checked.models["m"].span))) == [("x", A.ModelRef("x", span=None))]
