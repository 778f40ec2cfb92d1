"""Grown prompts (issue 15) on the tiny random model: control flow around
segments, holes in loops as lists, tool calls, and one KV cache that only
ever receives each token once (no re-encoding of the prefix per iteration)."""

import re

import pytest

import lmlang
from lmlang.runtime.decode import Sampler, decode_rows
from lmlang.runtime.flow import Interpreter
from lmlang.runtime.grown import GrownRun
from lmlang.runtime.prompt_flow import Growth, render_grown
from lmlang.tools import calc

AGENT = """
query solve(q: str) using m {
    user "{q}"
    assistant {
        for i in range(3) {
            "Step {i}: [action]\\n"
            if action == "finish" { break }
            "Input: [expr]\\n"
            "Observation: {call(\\"calc\\", expr)}\\n"
        }
        "Answer: [answer]"
    }
    where action in ACTIONS
    where expr matches r"[0-9]{1,2}[+*][0-9]{1,2}"
    where answer is int and tokens(answer) <= 3
}
"""


def compile_agent(model_dir, actions='["calculate"]', functions=None, body=AGENT):
    src = (
        f'model m = "{model_dir}"\n' + body.replace("ACTIONS", actions) + "\nflow { s = solve(\"3 + 4?\") emit s = s }"
    )
    return lmlang.compile(src, functions=functions or {})


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    from lmlang.models.loader import load_model
    from lmlang.runtime.lm import HFModel

    return HFModel(load_model(tiny_model_dir, device="cpu"))


def query_spec(prog, name="solve"):
    c = prog.frontend.compiled
    return next(s for s in c.nodes.values() if getattr(s, "kind", "") == "query" and s.name == name)


def grown_run(lm, prog, env, functions=None):
    spec = query_spec(prog)
    parts = render_grown(spec.segments, lm.tokenizer, spec.chat)
    growth = Growth(parts, env, Interpreter(functions or {}, set()), functions or {}, spec.name, spec.loc)
    return GrownRun(lm, growth, dict(spec.constraints), spec.name, spec.loc)


def test_loop_holes_are_lists_and_the_tool_output_is_prompt_text(tiny_model_dir):
    prog = compile_agent(tiny_model_dir)
    s = prog.run()["s"]
    assert s["action"] == ["calculate"] * 3  # the mask allows only this option, every iteration
    assert len(s["expr"]) == 3 and all(re.fullmatch(r"[0-9]{1,2}[+*][0-9]{1,2}", e) for e in s["expr"])
    assert isinstance(s["answer"], int)
    prompt = prog.trace.records[-1].prompt
    for i, e in enumerate(s["expr"]):
        assert f"Step {i}: [action]" in prompt
        assert f"Observation: {calc(e)}\n" in prompt  # calc's result, in the prompt the model read


def test_break_reads_the_hole_just_decoded(tiny_model_dir):
    prog = compile_agent(tiny_model_dir, actions='["finish"]')
    s = prog.run()["s"]
    assert s["action"] == ["finish"] and s["expr"] == []  # left the loop in its first iteration
    prompt = prog.trace.records[-1].prompt
    assert "Step 1" not in prompt and "Input:" not in prompt and "Answer: [answer]" in prompt


def test_if_else_and_a_list_loop(tiny_model_dir):
    body = """
query solve(q: str, items: list[str]) using m {
    "Items:\\n"
    for it in items {
        if it == "b" { "* {it} is special: [flag]\\n" } else { "- {it}: [note]\\n" }
    }
    "Done: [end]"
    where flag in ["yes", "no"]
    where note in ["x", "y"]
    where end in ["ok"]
}
"""
    src = f'model m = "{tiny_model_dir}"\n{body}\nflow {{ s = solve("q", ["a", "b", "c"]) emit s = s }}'
    prog = lmlang.compile(src)
    s = prog.run()["s"]
    assert len(s["note"]) == 2 and set(s["note"]) <= {"x", "y"}
    assert len(s["flag"]) == 1 and s["flag"][0] in ("yes", "no")
    assert s["end"] == "ok"
    prompt = prog.trace.records[-1].prompt
    assert "- a: [note]\n* b is special: [flag]\n- c: [note]\nDone: [end]" in prompt


def test_registered_tool_and_error_values(tiny_model_dir):
    seen = []

    def lookup(x):
        seen.append(x)
        raise KeyError(x)

    body = AGENT.replace('{call(\\"calc\\", expr)}', '{call(\\"lookup\\", expr)}')
    prog = compile_agent(tiny_model_dir, functions={"lookup": lookup}, body=body)
    s = prog.run()["s"]
    assert seen == s["expr"]  # called once per iteration, with the decoded value
    assert "Observation: error: KeyError:" in prog.trace.records[-1].prompt  # a value, never a traceback


def test_one_cache_each_token_fed_once(lm, tiny_model_dir, monkeypatch):
    """The prefix is never encoded again: every token the model reads over
    the whole decoding is fed exactly once, except generated tokens that a
    seam re-tokenization replaces (counted by drop_last)."""
    from lmlang.runtime import lm as lm_mod

    fed, dropped = [], []
    real_feed, real_drop = lm_mod.HFBatch.feed, lm_mod.HFBatch.drop_last
    monkeypatch.setattr(
        lm_mod.HFBatch, "feed", lambda self, b, **k: fed.append(sum(map(len, b))) or real_feed(self, b, **k)
    )
    monkeypatch.setattr(
        lm_mod.HFBatch, "drop_last", lambda self, r, n: dropped.append(max(n, 0)) or real_drop(self, r, n)
    )
    prog = compile_agent(tiny_model_dir)
    run = grown_run(lm, prog, {"q": "3 + 4?"})
    (d,) = decode_rows(lm, [run], [Sampler(True)])
    assert fed[0] == len(run.chunk_ids[0])  # the prefill, once
    # nothing read twice: the cache holds what was fed minus what was dropped;
    # token_ids adds the last value's tail that was decided but never fed
    # (nothing reads logits after it), at most its 3-token budget
    tail = len(d.token_ids) - (sum(fed) - sum(dropped))
    assert 0 <= tail <= 3
    assert (" " + d.texts["answer"]).endswith(lm.decode(d.token_ids[len(d.token_ids) - tail :]))
    assert max(fed[1:]) < fed[0]  # no later feed re-encodes the prefix
    assert len(d.values["expr"]) == 3
    # the cache spells the whole transcript, values in place
    text = lm.decode(d.token_ids)
    for e in d.texts["expr"]:
        assert f"Input: {e}\nObservation: {calc(e)}\n" in text
    # a value after a held-back seam space keeps the space, forced or not
    assert re.search(r"\nAnswer: " + re.escape(d.texts["answer"]) + "$", text)


def test_unknown_tool_at_run_time_names_the_call(tiny_model_dir):
    body = AGENT.replace('{call(\\"calc\\", expr)}', '{call(\\"gone\\", expr)}')
    prog = compile_agent(tiny_model_dir, functions={"gone": lambda x: x}, body=body)
    prog.functions.pop("gone")  # registered at check time, gone at run time
    with pytest.raises(lmlang.LmlangError) as e:
        prog.run()
    assert "query solve, unknown tool 'gone'" in str(e.value)
    assert (e.value.span.line, e.value.span.col) == (10, 27)  # the call inside the prompt


def test_a_registered_tool_runs_again_with_the_result_cache_on(tiny_model_dir):
    """The result cache keys a call by its compiled query, inputs and model:
    a registered Python function's code and state are not in the key, so a
    grown prompt that may call one is never answered from the cache."""
    seen = []

    def lookup(x):
        seen.append(x)
        return "ok"

    body = AGENT.replace('{call(\\"calc\\", expr)}', '{call(\\"lookup\\", expr)}')
    src = f'model m = "{tiny_model_dir}"\n' + body.replace("ACTIONS", '["calculate"]')
    src += '\nflow { s = solve("3 + 4?") emit s = s }'
    first = lmlang.compile(src, functions={"lookup": lookup}, cache=True).run()["s"]
    assert seen == first["expr"] and seen
    second = lmlang.compile(src, functions={"lookup": lookup}, cache=True).run()["s"]
    assert second == first
    assert seen == first["expr"] * 2  # the tool ran again: not a cache hit
