"""The served engine without a real server: how holes become requests (healing,
canonical choices, next-text terminators), prompts as the exact token ids of
the local decoding loop (on the tiny model), adapter stacks exported exactly,
and error paths against a small in-process fake server (a value that breaks
its constraint, retries, timeouts, malformed answers). What a real vLLM
answers is tested in test_served_vllm.py."""

from __future__ import annotations

import json
import re

import pytest

import lmlang
from lmlang.constraints import spec as C
from lmlang.errors import LmlangError
from lmlang.runtime.engines.served_holes import plan_hole
from lmlang.serving.client import Completion
from lmlang.serving.structured import ServedValueError, ServerFeatures

from test_serving_client import FakeServer

EXACT = ServerFeatures()  # vLLM with the guidance backend
XGRAMMAR = ServerFeatures("vllm", True, "xgrammar")


def completion(text, finish="stop", stop_reason=None, tokens=3):
    return Completion(
        text, finish, stop_reason, request="POST /completions (model 'm', prompt '...')", completion_tokens=tokens
    )


# ---------------------------------------------------------------- holes -> requests


def test_a_held_back_seam_prefixes_the_shape_and_is_cut_off_the_value():
    from lmlang.constraints.shapes import shape_regex

    req = plan_hole("n", C.IntType(), EXACT, "m", heal=" ")
    int64 = shape_regex(C.IntType())  # an unbounded `is int` is int64 (docs/language.md)
    assert re.fullmatch(int64, "9223372036854775807") and not re.fullmatch(int64, "9223372036854775808")
    assert req.structured == {"regex": r"\x20(?:" + int64 + ")"} and req.max_tokens == 256
    assert req.value(completion(" 42"), "server x") == ("42", "eos")
    choice = plan_hole("c", C.Choice(("yes", "no")), EXACT, "m", heal=" ")
    assert choice.structured == {"choice": [" yes", " no"]}
    free = plan_hole("f", C.All((C.Stop("\n", False), C.MaxTokens(9))), EXACT, "m", heal=" ")
    assert free.structured == {"regex": r"\x20(?s:.*)"} and free.max_tokens == 9
    assert free.kwargs()["stop"] == ["\n"] and free.kwargs()["include_stop"] is True
    assert free.value(completion(" a b\n", stop_reason="\n"), "s") == ("a b", "stop")


def test_json_holes_give_the_seam_back():
    schema = C.JsonSchema(json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}}))
    req = plan_hole("j", schema, EXACT, "m", heal=" ")
    assert req.heal == "" and "json" in req.structured


ARITH = 'start: expr\nexpr: NUMBER (" * " NUMBER)*\nNUMBER: /[0-9]+/ // start "start"\n'


def test_a_grammar_gets_the_seam_and_the_next_text_under_a_new_start_rule():
    """As locally: the seam space in front, and the next text's first token
    may end a complete value (a stop string, trimmed off)."""
    req = plan_hole("g", C.Grammar(ARITH), EXACT, "m", heal=" ", terminator="\n")
    grammar = req.structured["grammar"]
    assert grammar.startswith('start: " " lmlang_value | " " lmlang_value "\\n"\nlmlang_value: expr\n')
    assert grammar.endswith('// start "start"\n')  # the comment is left alone
    assert req.kwargs()["stop"] == ["\n"] and req.kwargs()["include_stop"] is True
    assert req.value(completion(" 12 * 4\n", stop_reason="\n"), "s") == ("12 * 4", "next-text")
    assert req.value(completion(" 12"), "s") == ("12", "eos")
    plain = plan_hole("g", C.Grammar(ARITH), EXACT, "m")
    assert plain.structured == {"grammar": "start: lmlang_value\nlmlang_value: expr\n" + ARITH.split("\n", 1)[1]}
    other = plan_hole("g", C.Grammar(ARITH), XGRAMMAR, "m", heal=" ", terminator="\n")
    assert other.structured == {"grammar": ARITH} and other.heal == "" and other.terminator is None


def test_the_next_texts_first_token_ends_a_complete_value_where_it_cannot_continue_it():
    req = plan_hole("n", C.IntType(), EXACT, "m", terminator=".")
    assert req.structured["regex"].endswith(r"(?:\.)?") and req.stops == (".",)
    assert req.value(completion("42.", stop_reason="."), "s") == ("42", "next-text")
    assert plan_hole("x", C.FloatType(), EXACT, "m", terminator=".").terminator is None  # "3." continues a float
    assert plan_hole("x", C.Regex("[a-z]+"), EXACT, "m", terminator=".").terminator is None
    assert plan_hole("x", C.Choice(("a", "a.b")), EXACT, "m", terminator=".").terminator is None


def test_a_choice_follows_its_canonical_token_paths(tiny_model_dir):
    from lmlang.runtime.engines.served_prompt import load_tokens

    tk = load_tokens(str(tiny_model_dir))
    req = plan_hole(
        "c",
        C.Choice(("positive", "negative")),
        EXACT,
        "m",
        heal=" ",
        terminator="\n",
        tokens=tk,
        next_token=tk.encode("\n")[0],
    )
    paths = [tk.tok_info.encode(" positive"), tk.tok_info.encode(" negative")]
    body = " | ".join(" ".join(f"<[{t}]>" for t in p) for p in paths)
    assert req.structured == {"grammar": f"start: choice | choice <[{tk.encode(chr(10))[0]}]>\nchoice: {body}\n"}
    assert req.kwargs()["extra"] == {"stop_token_ids": [tk.encode("\n")[0]]}
    stopped = completion(" positive", stop_reason=tk.encode("\n")[0])
    assert req.value(stopped, "s") == ("positive", "next-text")
    # without llguidance on the server the choice goes as a plain choice
    assert plan_hole("c", C.Choice(("a", "b")), XGRAMMAR, "m", tokens=tk).structured == {"choice": ["a", "b"]}


def test_a_value_that_breaks_its_constraint_is_an_error_naming_server_and_request():
    req = plan_hole("label", C.Choice(("positive", "negative")), EXACT, "m")
    with pytest.raises(ServedValueError) as e:
        req.value(completion("maybe"), "server http://h/v1 (model 'm')")
    msg = str(e.value)
    assert "server http://h/v1 (model 'm')" in msg and "POST /completions" in msg and "[label]" in msg
    assert "'maybe' is not one of the options" in msg
    cut = plan_hole("j", C.JsonSchema('{"type": "object"}'), EXACT, "m")
    with pytest.raises(ServedValueError, match="cut at max_tokens"):
        cut.value(completion('{"a": ', finish="length"), "s")
    healed = plan_hole("n", C.IntType(), EXACT, "m", heal=" ")
    with pytest.raises(ServedValueError, match="held-back seam"):
        healed.value(completion("42"), "s")


# ---------------------------------------------------------------- prompts = the local loop's tokens

PROMPTS = [
    ([(None, (("text", "Say: "), ("hole", "a"), ("text", " then "), ("hole", "b"), ("text", ".")))], False),
    (
        [
            ("user", (("text", "Q: 12 * 7?"),)),
            ("assistant", (("text", "The answer is "), ("hole", "n"), ("text", ". So "), ("hole", "w"))),
        ],
        True,
    ),
    ([(None, (("hole", "a"), ("text", " and more")))], False),
]


@pytest.mark.parametrize("segments,chat", PROMPTS)
def test_prompt_ids_are_the_local_decoding_loops(tiny_model_dir, segments, chat):
    from lmlang.models.loader import load_model
    from lmlang.runtime.decode import QueryRun
    from lmlang.runtime.engines.served_prompt import Cursor, load_tokens
    from lmlang.runtime.lm import HFModel
    from lmlang.runtime.prompt import render

    lm = HFModel(load_model(tiny_model_dir, device="cpu", dtype="float32"))
    rendered = render(segments, {}, lm.tokenizer, chat)
    holes = {h: C.Regex("[a-z]+") for h in rendered.holes}
    run = QueryRun(lm, rendered, holes)
    cur = Cursor.start(rendered, load_tokens(str(tiny_model_dir)))
    assert cur.prompt() == run.chunk_ids[0]
    assert cur.heals == [p.heal for p in run.holes]
    assert cur.next_tokens == [run._next_token(i) for i in range(len(run.holes))]
    ids = list(run.chunk_ids[0])
    for i in range(len(rendered.holes)):
        cur.advance("x")
        if i + 1 < len(rendered.holes):
            canon = lm.encode(run.holes[i].heal + "x" + rendered.chunks[i + 1])
            ids += canon[:-1] if run.holes[i + 1].heal else canon  # what _finish_hole leaves in the cache
            assert cur.prompt() == ids


def test_without_a_tokenizer_prompts_go_as_text_with_the_seam_held_back():
    from lmlang.runtime.engines.served_prompt import Cursor
    from lmlang.runtime.prompt import RenderedPrompt

    cur = Cursor.start(RenderedPrompt(("The answer is ", ". So ", "!"), ("n", "w")), None)
    assert cur.prompt() == "The answer is" and cur.prompt(with_seam=True) == "The answer is "
    cur.advance("42")
    assert cur.prompt() == "The answer is 42. So" and cur.heals == [" ", " "]


# ---------------------------------------------------------------- adapter stacks, exactly


def _random_adapter(base_dir, out, r, targets, seed):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=False)
    get_peft_model(model, cfg).save_pretrained(out)
    return out


def test_an_adapter_stack_exports_as_one_exact_lora(tiny_model_dir, tmp_path, lmlang_home):
    import torch

    from lmlang.merge.lora import load_lora
    from lmlang.serving.lora_export import export_stack

    a = _random_adapter(tiny_model_dir, tmp_path / "a", 4, ["q_proj", "v_proj"], 1)
    b = _random_adapter(tiny_model_dir, tmp_path / "b", 2, ["q_proj", "o_proj"], 2)
    assert export_stack([(a, 1.0)]) == a  # one adapter at scale 1: served as it is
    out = export_stack([(a, 0.8), (b, -0.5)])
    assert export_stack([(a, 0.8), (b, -0.5)]) == out  # cached by content
    got, la, lb = load_lora(out), load_lora(a), load_lora(b)
    assert got.config["r"] == 6 and got.config["lora_alpha"] == 6
    assert set(got.modules) == set(la.modules) | set(lb.modules)
    for name, m in got.modules.items():
        want = (0.8 * la.modules[name].delta() if name in la.modules else 0) + (
            -0.5 * lb.modules[name].delta() if name in lb.modules else 0
        )
        assert torch.allclose(m.delta(), want, atol=1e-6), name


# ---------------------------------------------------------------- error paths against a fake server


def _program(tiny_model_dir, fake_url, query: str, monkeypatch, **client):
    """A program on `server URL` whose deployment talks to the fake server (no probes)."""
    from lmlang.runtime.engines import deploy
    from lmlang.runtime.engines.served_prompt import load_tokens
    from lmlang.serving.client import Client, Endpoint

    opts = dict(retries=2, backoff=0.01, backoff_max=0.02, timeout=2.0, concurrency=4)
    opts.update(client)

    def connect(spec, options):
        return deploy.Deployment(
            "server", spec.url, Client(Endpoint(spec.url, "m", **opts)), "m", load_tokens(str(tiny_model_dir)), EXACT
        )

    monkeypatch.setattr(deploy, "_connect", connect)
    monkeypatch.setattr(deploy, "_DEPLOYMENTS", {})
    return lmlang.compile(f'model m = server "{fake_url}" {{ model: "m", backend: guidance }}\n{query}')


def _answer(text, stop_reason=None):
    return {
        "model": "m",
        "choices": [{"index": 0, "text": text, "finish_reason": "stop", "stop_reason": stop_reason}],
        "usage": {"completion_tokens": 2},
    }


CHOICE = 'query q(t: str) using m { "Label {t}: [y]" where y in ["red", "blue"] }'


def test_a_served_value_is_validated_before_it_is_handed_on(tiny_model_dir, monkeypatch):
    with FakeServer([(200, _answer(" green"))]) as fake:
        prog = _program(tiny_model_dir, fake.url, CHOICE, monkeypatch)
        with pytest.raises(ServedValueError) as e:
            prog.queries["q"]("x")
    msg = str(e.value)
    assert fake.url in msg and "POST /completions" in msg and "'green' is not one of the options" in msg
    body = fake.requests[0]["body"]
    assert isinstance(body["prompt"], list) and body["temperature"] == 0.0  # exact ids, greedy
    assert body["structured_outputs"]["grammar"].startswith("start: choice")  # canonical token paths


def test_retries_then_a_valid_value(tiny_model_dir, monkeypatch):
    with FakeServer([(503, {"error": {"message": "busy"}}), (200, _answer(" blue"))]) as fake:
        prog = _program(tiny_model_dir, fake.url, CHOICE, monkeypatch)
        assert prog.queries["q"]("x") == {"y": "blue"}
    assert len(fake.requests) == 2


@pytest.mark.parametrize(
    "step,error",
    [
        ((200, _answer(" red"), 3.0), "no answer within 0.5 s"),
        ((200, b"not json"), "invalid JSON"),
        ((200, {"choices": []}), "not an OpenAI-compatible completion"),
        ((400, {"message": "bad grammar"}), "HTTP 400: bad grammar"),
    ],
)
def test_server_failures_are_errors_of_their_row_only(tiny_model_dir, monkeypatch, step, error):
    script = [(200, _answer(" red")), step]
    with FakeServer(script) as fake:
        prog = _program(
            tiny_model_dir,
            fake.url,
            CHOICE + '\ninput ts: list[str]\nflow { out = [] for t in ts { out = out + [q(t).y] } emit out }',
            monkeypatch,
            timeout=0.5,
            retries=0,
            concurrency=1,
        )
        rows = prog.run_batch([{"ts": ["a"]}, {"ts": ["b"]}], errors="return")
    assert rows[0] == {"out": ["red"]}
    assert isinstance(rows[1], LmlangError) and error in str(rows[1]) and fake.url in str(rows[1])


def test_rows_are_in_flight_together_up_to_the_concurrency(tiny_model_dir, monkeypatch):
    with FakeServer([(200, _answer(" red"), 0.3)]) as fake:
        prog = _program(
            tiny_model_dir, fake.url, CHOICE + '\ninput t: str\nflow { emit y = q(t).y }', monkeypatch, concurrency=3
        )
        rows = prog.run_batch([{"t": str(i)} for i in range(9)])
    assert rows == [{"y": "red"}] * 9
    assert fake.max_in_flight == 3


def test_a_server_that_is_gone_is_an_error_naming_it(monkeypatch):
    from lmlang.runtime.engines import deploy
    from lmlang.serving.server import free_port

    monkeypatch.setattr(deploy, "_DEPLOYMENTS", {})
    url = f"http://127.0.0.1:{free_port()}/v1"
    prog = lmlang.compile(
        f'model base = server "{url}" {{ model: "m", retries: 0, timeout: 5 }}\n'
        'query q(t: str) using base { "{t} [x]" where tokens(x) <= 3 }\n'
    )
    with pytest.raises(LmlangError) as e:
        prog.queries["q"]("hi")
    assert url in str(e.value) and "cannot connect" in str(e.value)


def test_a_lora_enabled_server_serves_compatible_options(tmp_path):
    from pathlib import Path

    from lmlang.serving.server import ManagedServer, ServerOptions, server_args, server_env

    lora = ServerOptions(model="default", name="smollm2", enable_lora=True, max_lora_rank=64)
    server = ManagedServer(lora, None, Path("/m"), "smollm2", 1, Path("/dev/null"))
    assert server.serves(ServerOptions(model="default"))  # no LoRA needed
    assert server.serves(ServerOptions(model="default", enable_lora=True, max_lora_rank=16))
    assert not server.serves(ServerOptions(model="default", enable_lora=True, max_lora_rank=128))
    assert not server.serves(ServerOptions(model="default", max_model_len=1024))  # other engine settings
    plain = ManagedServer(ServerOptions(model="default"), None, Path("/m"), "m", 1, Path("/dev/null"))
    assert not plain.serves(lora)
    args = server_args(lora, Path("/m"), "smollm2", 1, "cpu")
    i = args.index("--max-lora-rank")
    assert "--enable-lora" in args and args[i + 1] == "64" and args[args.index("--max-loras") + 1] == "4"
    assert "--lora-modules" not in args
    assert server_env("cpu", lora=True)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in server_env("cpu")


def test_on_a_lora_server_a_scoring_request_is_never_in_flight_with_another():
    """vLLM 0.32 with LoRA enabled dies when prompt_logprobs meet another request
    in one batch (deploy.ScoreGate): scores go alone, ordinary requests share."""
    import asyncio

    from lmlang.runtime.engines.deploy import ScoreGate

    gate, log, now = ScoreGate(), [], {"shared": 0, "alone": 0}

    async def request(kind: str, k: int):
        async with gate.alone() if kind == "alone" else gate.shared():
            now[kind] += 1
            log.append(dict(now))
            await asyncio.sleep(0.001 * (k % 3))
            now[kind] -= 1

    async def main():
        await asyncio.gather(*(request("alone" if k % 4 == 0 else "shared", k) for k in range(40)))

    asyncio.run(main())
    assert len(log) == 40
    assert all(s["alone"] <= 1 and not (s["alone"] and s["shared"]) for s in log)
    assert max(s["shared"] for s in log) > 1  # ordinary requests still overlap
