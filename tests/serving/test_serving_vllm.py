"""Against a REAL vLLM server serving the bundled model (marker `vllm`): the client
and the constraint mapping on their own (tests/serving/test_served_vllm.py runs scripts).

The session fixture (tests/served_server.py) builds the vLLM venv once (cached under
the lmlang home: ~10 min and ~3.4 GB the first time on 2 busy cores), makes a small
deterministic LoRA adapter, and starts ONE server for the whole run. Set
LMLANG_SKIP_VLLM=1 to skip these tests on a machine that cannot install vLLM, or
LMLANG_TEST_VLLM_URL=http://127.0.0.1:PORT/v1 to run them against a server started
with `python tests/served_server.py`.
"""

from __future__ import annotations

import json
import math

import pytest

from lmlang.constraints.spec import (
    All,
    BoolType,
    Choice,
    FloatType,
    Grammar,
    IntType,
    JsonSchema,
    MaxChars,
    MaxTokens,
    Regex,
    Stop,
)
from lmlang.serving.structured import ServedConstraint, ServerFeatures, served_value, to_request
from served_server import LORA, SERVED

pytestmark = [pytest.mark.vllm, pytest.mark.e2e]

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def chat_prompt(user: str, assistant: str = "") -> str:
    """A raw prompt that ends inside the assistant turn (SmolLM2's chat template)."""
    return f"{SYSTEM}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}"


@pytest.fixture(scope="module")
def client(vllm_server):
    from lmlang.serving.client import Client

    with Client(vllm_server.endpoint(timeout=600.0, concurrency=4)) as c:
        yield c


@pytest.fixture(scope="session")
def local():
    """lmlang's own (transformers) model and tokenizer for the same folder."""
    from lmlang.models.loader import load_model, resolve_model

    return load_model(resolve_model("default"), device="cpu", dtype="float32")


# ---------------------------------------------------------------------------- capabilities
def test_version_models_and_capabilities(client, vllm_server):
    from lmlang.serving.vllm_env import VLLM_VERSION

    caps = client.capabilities()
    assert caps.version == VLLM_VERSION and caps.engine == "vllm"
    assert caps.base_models == (SERVED,)
    assert LORA in caps.lora_modules  # others load as scripts apply adapters
    assert {m.id: m.parent for m in caps.models}[LORA] == SERVED
    assert caps.structured_outputs is True and caps.prompt_logprobs is True
    assert client.health()


def test_the_same_options_reuse_the_running_server(vllm_server):
    from lmlang.serving.server import ServerOptions, start_server

    assert start_server(vllm_server.options, progress=False) is vllm_server
    # what `model m = vllm default` asks for, with and without adapters, is served by it too
    assert start_server(ServerOptions(model="default"), progress=False) is vllm_server
    assert (
        start_server(ServerOptions(model="default", enable_lora=True, max_lora_rank=64), progress=False) is vllm_server
    )


# ---------------------------------------------------------------------------- constraint kinds
PERSON = JsonSchema(
    json.dumps(
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "age"],
            "properties": {
                "name": {"type": "string", "maxLength": 12},
                "age": {"type": "integer", "minimum": 0, "maximum": 120},
            },
        },
        sort_keys=True,
    )
)
ARITH = 'start: NUM " " OP " " NUM\nNUM: /[1-9][0-9]?/\nOP: "+" | "-"'

KINDS = [
    ("choice", "Is the sun a star? Answer yes or no.", Choice(("yes", "no"))),
    ("regex", "Give a phone number.", Regex(r"[0-9]{3}-[0-9]{4}")),
    ("int", "What is 2 plus 2? Reply with just the number.", IntType()),
    ("int-bounds", "How old is a typical grandmother?", IntType(0, 120)),
    ("float", "What is 3.5 plus 1.25? Reply with just the number.", FloatType()),
    ("bool", "Is water wet? Answer true or false.", BoolType()),
    ("json", "Describe a person as JSON with a name and an age.", PERSON),
    ("grammar", "Write a small sum.", Grammar(ARITH)),
    ("stop-before", "Name three colors, one per line.", All((Stop("\n", False), MaxTokens(30)))),
    ("stop-at", "Say a short sentence.", All((Stop(".", True), MaxTokens(30)))),
    ("max-tokens", "Tell me a story.", MaxTokens(5)),
    ("max-chars", "Tell me a story.", MaxChars(12)),
    ("regex-and-len", "Give a lowercase word.", All((Regex("[a-z]+"), MaxChars(4)))),
    ("choice-and-int", "Pick a number.", All((Choice(("12", "seven", "3")), IntType()))),
]


@pytest.mark.parametrize("kind,question,constraint", KINDS, ids=[k[0] for k in KINDS])
def test_each_constraint_kind_returns_valid_values(client, vllm_server, kind, question, constraint):
    served = to_request(constraint, ServerFeatures())
    assert isinstance(served, ServedConstraint), served
    kw = {"max_tokens": 48, **served.kwargs()}
    out = client.completion(chat_prompt(question), temperature=0.0, **kw)
    value = served_value(out, served, constraint, url=vllm_server.base_url)  # raises if invalid
    if kind == "choice-and-int":
        assert value in ("12", "3")
    if kind == "max-tokens":
        assert out.completion_tokens <= 5
    if kind == "stop-at":
        assert value.endswith(".") or out.finish_reason == "length"
    if kind == "stop-before":
        assert "\n" not in value
    if kind == "json":
        assert set(json.loads(value)) == {"name", "age"}


def test_sampling_with_a_seed_repeats(client):
    served = to_request(Regex("[a-z]{3,8}"))
    kw = dict(temperature=1.0, top_p=0.9, top_k=20, seed=11, **served.kwargs())
    a = client.completion(chat_prompt("Say a word."), **kw)
    b = client.completion(chat_prompt("Say a word."), **kw)
    assert a.text == b.text


def test_chat_endpoint_with_a_choice_and_logprobs(client):
    out = client.chat(
        [{"role": "user", "content": "Is the sun a star? Answer yes or no."}],
        temperature=0.0,
        max_tokens=4,
        structured={"choice": ["yes", "no"]},
        logprobs=2,
    )
    assert out.text in ("yes", "no")
    assert out.logprobs and all(t.logprob <= 0 for t in out.logprobs)
    assert all(len(top) <= 2 for top in out.top_logprobs or [])


# ---------------------------------------------------------------------------- equality with local decoding
def _local_greedy(local, prompt: str, n: int) -> tuple[list[int], list[int]]:
    import torch

    tok, model = local.tokenizer, local.model
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    return ids, out[0, len(ids) :].tolist()


GREEDY_PROMPTS = [
    "The capital of France is",
    chat_prompt("What is the capital of France?"),
    chat_prompt("Write a haiku about the sea."),
]


@pytest.mark.parametrize("prompt", GREEDY_PROMPTS, ids=["raw", "chat", "chat-long"])
def test_greedy_completion_equals_local_greedy(client, local, prompt):
    """Same raw prompt, same tokens in, same greedy tokens out (fp32 on both sides).
    Recorded: on this CPU the first 16 tokens agree for these prompts."""
    n = 16
    ids, want = _local_greedy(local, prompt, n)
    out = client.completion(prompt, max_tokens=n, temperature=0.0, return_token_ids=True)
    assert out.prompt_token_ids == ids
    eos = local.tokenizer.eos_token_id
    want = want[: want.index(eos) + 1] if eos in want else want
    assert out.token_ids == want[: len(out.token_ids)] and len(out.token_ids) >= min(len(want), n) - 1


def test_the_lmlang_runtime_and_the_server_agree(client):
    """lmlang's own decoding loop (a compiled query) against the server, same raw prompt."""
    import lmlang

    prog = lmlang.compile(
        'model base = default\nquery q(t: str) using base {\n    "{t}[x]"\n    where tokens(x) <= 10\n}\n'
    )
    local_value = prog.queries["q"]("The three primary colors are")["x"]
    prompt = prog.trace.records[-1].prompt.split("[x]")[0]
    out = client.completion(prompt, max_tokens=10, temperature=0.0)
    assert out.text == local_value


def test_prompt_logprobs_match_local_scores(client, local):
    """The per-token log-probabilities `distribution` will sum, against lmlang's model."""
    import torch

    prompt = chat_prompt("Is the sun a star? Answer yes or no.", "yes")
    out = client.completion(prompt, max_tokens=1, temperature=0.0, prompt_logprobs=0, return_token_ids=True)
    ids = out.prompt_token_ids
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(ids)
    with torch.no_grad():
        logits = local.model(torch.tensor([ids])).logits[0].float()
    local_lp = torch.log_softmax(logits, dim=-1)
    worst = 0.0
    for pos in range(1, len(ids)):
        row = {t.token_id: t.logprob for t in out.prompt_logprobs[pos]}
        assert ids[pos] in row  # the prompt's own token is always reported
        worst = max(worst, abs(row[ids[pos]] - local_lp[pos - 1, ids[pos]].item()))
    assert worst < 1e-3, worst  # measured: 3.8e-5 over 139 positions
    assert math.isfinite(worst)
    # the sum `distribution` needs: the option's tokens after the prefix, sent as ids
    prefix = client.tokenize(chat_prompt("Is the sun a star? Answer yes or no."))
    assert (
        prefix
        == local.tokenizer(chat_prompt("Is the sun a star? Answer yes or no."), add_special_tokens=False)["input_ids"]
    )
    option = local.tokenizer("yes", add_special_tokens=False)["input_ids"]
    want = sum(local_lp[len(prefix) + i - 1, t].item() for i, t in enumerate(option))
    assert ids == prefix + option
    assert abs(client.score(prefix + option, len(prefix)) - want) < 1e-3


def test_top_logprobs_of_generated_tokens(client):
    out = client.completion(chat_prompt("Say hi."), max_tokens=3, temperature=0.0, logprobs=3)
    assert len(out.logprobs) == len(out.top_logprobs) == out.completion_tokens
    for sampled, top in zip(out.logprobs, out.top_logprobs):
        assert 1 <= len(top) <= 4  # vLLM adds the sampled token when it is not in the top 3
        assert abs(max(t.logprob for t in top) - sampled.logprob) < 1e-4  # greedy took the best one


# ---------------------------------------------------------------------------- LoRA
def test_a_lora_module_is_served_and_matches_lmlang(client, lora_dir):
    import lmlang

    prompt_text = "The capital of France is"
    base = client.completion(prompt_text, max_tokens=8, temperature=0.0)
    tuned = client.completion(prompt_text, model=LORA, max_tokens=8, temperature=0.0)
    assert tuned.text != base.text
    src = (
        f'model base = default\nadapter rnd = lora "{lora_dir}"\nmodel tuned = base + rnd\n'
        'query q(t: str) using tuned {\n    "{t}[x]"\n    where tokens(x) <= 8\n}\n'
    )
    local_value = lmlang.compile(src).queries["q"](prompt_text)["x"]
    assert tuned.text == local_value
