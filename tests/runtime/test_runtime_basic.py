"""The walking skeleton's runtime on the tiny random model: a query with a
choice hole runs end to end and respects its constraint."""

import pytest
import torch

import lmlang


def program(model_dir, body: str, flow: str) -> lmlang.Program:
    return lmlang.compile(f'model m = "{model_dir}"\n{body}\nflow {{ {flow} }}')


def test_choice_hole_on_tiny_model(tiny_model_dir):
    prog = program(
        tiny_model_dir,
        '''
query pick(text: str) using m {
    user "Review: {text}"
    assistant "[label]"
    where label in ["positive", "negative", "neutral"]
}''',
        'r = pick(review) emit label = r.label'.replace("review", '"I loved it"'),
    )
    out = prog.run()
    assert out["label"] in {"positive", "negative", "neutral"}
    rec = prog.trace.records[-1]
    assert rec.query == "pick" and "Review: I loved it" in rec.prompt


def test_interpolation_is_lookup_not_format(tiny_model_dir):
    prog = program(
        tiny_model_dir,
        '''
input who: str
query greet(name: str) using m {
    "Hello {name}! [x]"
    where x in ["a", "b"]
}''',
        'g = greet(who) emit x = g.x',
    )
    out = prog.run(who="{name.__class__}")
    assert out["x"] in {"a", "b"}
    assert "Hello {name.__class__}!" in prog.trace.records[-1].prompt


def test_missing_input_is_a_script_error(tiny_model_dir):
    prog = program(
        tiny_model_dir, 'input who: str\nquery q(n: str) using m { "[x]" where x in ["a"] }', 'r = q(who) emit x = r.x'
    )
    with pytest.raises(lmlang.ScriptError) as e:
        prog.run()
    assert "missing input 'who'" in str(e.value)
    assert e.value.exit_code == 2


def test_greedy_is_deterministic(tiny_model_dir):
    body = '''
query q(t: str) using m {
    "Say: {t} [x]"
    where x in ["alpha", "beta", "gamma"]
}'''
    a = program(tiny_model_dir, body, 'r = q("hi") emit x = r.x').run()
    b = program(tiny_model_dir, body, 'r = q("hi") emit x = r.x').run()
    assert a == b


def test_batch_equals_one_by_one_under_argmax(tiny_model_dir):
    prog = program(
        tiny_model_dir,
        '''
input t: str
query q(x: str) using m {
    "Text: {x}\\nLabel: [a] and [b]."
    where a in ["positive", "negative"]
    where b stops at "." and tokens(b) <= 6
}''',
        'r = q(t) emit a = r.a, b = r.b',
    )
    texts = ["I loved it", "terrible", "Great food!", "x", "The capital of France is Paris."]
    batched = prog.run_batch([{"t": t} for t in texts])
    single = [prog.run(t=t) for t in texts]
    assert batched == single


def test_row_errors_are_isolated(tiny_model_dir):
    prog = program(
        tiny_model_dir,
        '''
input t: str
query q(x: str) using m { "{x} [a]" where a in ["yes", "no"] }''',
        'r = q(t) emit a = r.a',
    )
    out = prog.run_batch([{"t": "ok"}, {"nope": 1}, {"t": "fine"}], errors="return")
    assert out[0]["a"] in ("yes", "no") and out[2]["a"] in ("yes", "no")
    assert isinstance(out[1], lmlang.LmlangError) and "unknown input 'nope'" in str(out[1])


def test_json_keys_keep_declared_order(tiny_model_dir):
    import json as _json

    prog = program(
        tiny_model_dir,
        '''
query p(x: str) using m { "{x} [v]" where v is json { zeta: str(1..3), alpha: int(0..9) } }''',
        'r = p("go") emit v = r.v',
    )
    info = prog.frontend.checked.queries["p"]
    schema = _json.loads(info.constraints["v"].schema)
    assert list(schema["properties"]) == ["zeta", "alpha"]
    out = prog.run()
    assert list(out["v"]) == ["zeta", "alpha"]


def _pin_next_token(prog, token_id):
    """Make the tiny model always prefer `token_id` (a hook on its output layer)."""
    execu = prog._executor()
    lm = execu.lm(prog.frontend.compiled.names["m"])
    idx = torch.tensor([token_id])
    handle = lm.model.get_output_embeddings().register_forward_hook(lambda mod, i, out: out.index_fill_(-1, idx, 1e4))
    return lm, handle


def test_a_second_end_token_ends_the_value(tiny_model_dir):
    """Models list several end tokens (Llama 3: <|eot_id|>, <|end_of_text|>, ...);
    any of them ends a value cleanly, whichever one the guide knows."""
    prog = program(
        tiny_model_dir, 'query q() using m {\n    "Say:[x]"\n    where tokens(x) <= 5\n}', 'r = q() emit x = r.x'
    )
    prog.run()  # load the model
    lm, handle = _pin_next_token(prog, 7)
    try:
        lm._eos_ids = set(lm._eos_ids) | {7}
        assert 7 != lm.tok_info.eos_token_id
        out = prog.run()
    finally:
        handle.remove()
    assert out["x"] == ""
    assert prog.trace.records[-1].holes[0]["ended_by"] == "eos"


def test_a_budget_over_the_default_is_honoured(tiny_model_dir):
    prog = program(
        tiny_model_dir, 'query q() using m {\n    "Say [x]"\n    where tokens(x) <= 300\n}', 'r = q() emit x = r.x'
    )
    prog.run()
    tok = prog._executor().lm(prog.frontend.compiled.names["m"]).tok_info
    a = tok.encode("a")[0]
    lm, handle = _pin_next_token(prog, a)
    try:
        prog.run()
    finally:
        handle.remove()
    hole = prog.trace.records[-1].holes[0]
    assert hole["generated"] + hole["forced"] == 300 and hole["ended_by"] == "max_tokens"
