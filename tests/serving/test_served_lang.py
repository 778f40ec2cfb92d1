"""Served models in the language: `server "URL" {...}` and `vllm "SPEC" {...}`
parse, check (options from the registry's table, secrets refused, features a
server lacks refused naming the model), compile to graph nodes and list in
`lmlang models FILE`. No server and no weights: front end only."""

from __future__ import annotations

import json

import pytest

import lmlang
from lmlang import ast as A
from lmlang.errors import CheckError, LmlangSyntaxError
from lmlang.graph import graph_from_json, graph_to_dot, graph_to_json, graph_to_mermaid
from lmlang.graph.specs import ServerSpec, VllmSpec
from lmlang.models import sources
from lmlang.parser import parse

URL = "http://127.0.0.1:8000/v1"
CHOICE_Q = 'query q(t: str) using m {{ user "{{t}}" assistant "[y]" where y in ["a", "b"] }}'


def compile_(src: str, tmp_path=None):
    return lmlang.compile(src, "s.lm", base_dir=str(tmp_path) if tmp_path else ".")


def errors(src: str, tmp_path=None) -> list[str]:
    with pytest.raises(CheckError) as e:
        compile_(src, tmp_path)
    return [d.message for d in e.value.diagnostics]


# ---------------------------------------------------------------- syntax


def test_the_served_sources_parse_as_written_in_the_language_sketch():
    prog = parse(f'''
model served = server "{URL}" {{
    model: "SmolLM2-135M-Instruct", api_key_env: "LMLANG_API_KEY", concurrency: 16, timeout: 60
}}
model big = vllm "HuggingFaceTB/SmolLM2-360M-Instruct" {{
    tensor_parallel: 2, dtype: bfloat16, max_model_len: 4096, gpu_memory: 0.9, args: ["--enforce-eager"]
}}
model local = vllm default
model tuned = served + polite
''')
    served, big, local, tuned = prog.decls
    assert isinstance(served.expr, A.ServerModel) and served.expr.url == URL
    assert [e.key.name for e in served.expr.options.entries] == ["model", "api_key_env", "concurrency", "timeout"]
    assert isinstance(big.expr, A.VllmModel) and big.expr.source == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert isinstance(local.expr, A.VllmModel) and local.expr.source == "default" and not local.expr.options.entries
    assert isinstance(tuned.expr, A.Adapted) and tuned.expr.base == A.ModelRef("served", span=tuned.expr.span)


def test_server_and_vllm_stay_usable_as_names_elsewhere():
    src = (
        'input server: str = "x"\nmodel vllm = default\nquery q(server: str) using vllm { "{server} [a]" where a in ["y"] }\n'
        'flow { server2 = q(server) emit a = server2.a }'
    )
    compile_(src)


def test_a_served_source_only_starts_a_declaration():
    with pytest.raises(LmlangSyntaxError):
        parse(f'query q(t: str) using server "{URL}" {{ "{{t}} [y]" }}')


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(
    "options,message",
    [
        ('api_key: "sk-123"', "an API key is never written in a script (option 'api_key')"),
        ('token: "abc"', "an API key is never written in a script"),
        ('password: "hunter2"', "an API key is never written in a script"),
        ('api_key_env: "sk-abc123"', "api_key_env takes the NAME of an environment variable"),
        ('modle: "m"', "unknown option 'modle' for a server model"),
        ('concurrency: 0', "server option 'concurrency' is out of range: 0"),
        ('concurrency: 1.5', "server option 'concurrency' must be an integer"),
        ('timeout: "soon"', "server option 'timeout' must be a number"),
        ('api: completion', "server option 'api' must be one of completions, chat"),
        ('backend: llguidance', "server option 'backend' must be one of guidance"),
        ('model: "a", model: "b"', "option 'model' given twice"),
    ],
)
def test_server_options_are_judged_by_the_registry(options, message):
    got = errors(f'model m = server "{URL}" {{ {options} }}\n' + CHOICE_Q.format())
    assert any(g.startswith(message) for g in got), got


def test_unknown_options_get_did_you_mean():
    with pytest.raises(CheckError) as e:
        compile_('model m = vllm default { tensor_paralel: 2 }\n' + CHOICE_Q.format())
    d = e.value.diagnostics[0]
    assert (
        d.message == "unknown option 'tensor_paralel' for a vllm model" and d.hint == "did you mean 'tensor_parallel'?"
    )


@pytest.mark.parametrize(
    "url,message",
    [
        ("http://127.0.0.1:8000", "has no API path"),
        ("ftp://host/v1", "invalid server URL"),
        ("http://user:secret@host:8000/v1", "an API key or password is never written in a script"),
        ("http://host:99999/v1", "invalid server URL"),
    ],
)
def test_bad_urls(url, message):
    got = errors(f'model m = server "{url}"\n' + CHOICE_Q.format())
    assert any(message in g for g in got), got


@pytest.mark.parametrize(
    "options,message",
    [
        ('dtype: bf16', "vllm option 'dtype' must be one of auto, float32, float16, bfloat16"),
        ('args: ["--trust-remote-code"]', "vllm argument --trust-remote-code is set by lmlang"),
        ('args: ["--port", "9000"]', "vllm argument --port is set by lmlang"),
        ('args: "--seed 1"', "vllm option 'args' takes a list of strings"),
        ('gpu_memory: 1.5', "vllm option 'gpu_memory' is out of range: 1.5"),
        ('max_lora_rank: 12', "vllm option 'max_lora_rank' must be one of 1, 8, 16"),
        ('api_key_env: "K"', "unknown option 'api_key_env' for a vllm model"),
    ],
)
def test_vllm_options_are_judged_by_the_registry(options, message):
    got = errors(f'model m = vllm default {{ {options} }}\n' + CHOICE_Q.format())
    assert any(g.startswith(message) for g in got), got


def test_a_vllm_source_must_exist_like_any_model_source(tmp_path):
    got = errors('model m = vllm "./no/such/folder"\n' + CHOICE_Q.format(), tmp_path)
    assert got == ["model not found: ./no/such/folder"]


def test_a_vllm_hub_id_not_in_the_local_cache_is_a_warning_not_a_crash(tmp_path, monkeypatch):
    # The check once read `.path` off the vllm node here (AttributeError).
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    from lmlang.frontend import build

    fe = build('model m = vllm "some-org/not-cached-model"\n', "t.lm")
    w = [w for w in fe.warnings if w.code == "hub-not-cached"]
    assert w and "not in the local Hugging Face cache" in w[0].message and w[0].span.line == 1


def test_good_options_check_clean():
    compile_(f'''
model a = server "{URL}" {{ model: "smollm2", api_key_env: "LMLANG_API_KEY", concurrency: 8, timeout: 30.5,
                             retries: 2, api: completions, backend: guidance, tokenizer: default }}
model b = vllm default {{ tensor_parallel: 1, dtype: float32, max_model_len: 2048, gpu_memory: 0.5,
                          max_lora_rank: 16, args: ["--seed", "1"], concurrency: 4, timeout: 120, retries: 1 }}
query q(t: str) using a {{ user "{{t}}" assistant "[y]" where y in ["a", "b"] }}
query r(t: str) using b {{ user "{{t}}" assistant "[y]" where y in ["a", "b"] }}
''')


# ---------------------------------------------------------------- features a server lacks

FEATURES = [
    # (declarations and query, expected message start)
    ('model m = vllm default\nmodel mix = fuse { m: 1.0, default: -0.5 }', "served model 'm' (vllm) cannot fuse"),
    (
        'model m = vllm default\nmodel avg = merge linear { models: { m: 0.5, default: 0.5 } }',
        "served model 'm' (vllm) cannot be merged",
    ),
    (
        f'model m = server "{URL}"\nadapter p = train lora on "examples/data/polite.jsonl" {{ base: m }}',
        "served model 'm' (server) cannot be trained on",
    ),
    (
        f'model m = server "{URL}"\nadapter p = lora "tests/fixtures"\nmodel t = m + p',
        "served model 'm' (server) cannot take adapters",
    ),
    (
        'model m = vllm default\nquery q(t: str) using m decode beam(width: 2) { "{t} [y]" where y in ["a"] }',
        "served model 'm' (vllm) cannot run `decode beam`",
    ),
    (
        'model m = vllm default\nquery q(t: str) using m { "{t} [y]" where y is grammar "examples/grammars/arith.lark" '
        'and len(y) <= 20 }',
        "served model 'm' cannot enforce len(y) <= 20 on a grammar",
    ),
    (
        f'model m = server "{URL}"\nquery q(t: str) using m {{ "{{t}} [y]" where y matches r"[a-z]+" and len(y) <= 4 }}',
        "served model 'm' cannot enforce a regex together with len(y) <= 4",
    ),
    (
        f'model m = server "{URL}" {{ backend: none }}\nquery q(t: str) using m {{ "{{t}} [y]" where y in ["a"] }}',
        "served model 'm' cannot enforce a choice: the server does not honour structured outputs",
    ),
    (
        f'model m = server "{URL}" {{ api: chat }}\nquery q(t: str) using m {{ user "{{t}}" assistant "So [y]" '
        'where y in ["a"] }',
        "served model 'm' (server) has no raw-prompt endpoint (api: chat)",
    ),
    (
        f'model m = server "{URL}" {{ api: chat }}\nquery q(t: str) using m {{ "{{t}} [y]" where y in ["a"] }}',
        "served model 'm' (server) has no raw-prompt endpoint (api: chat), so it cannot continue a plain prompt",
    ),
    (
        f'model m = server "{URL}" {{ api: chat }}\nquery q(t: str) using m {{ user "{{t}}" assistant "[y]" '
        'distribution y in ["a", "b"] }',
        "served model 'm' (server) cannot score a distribution",
    ),
    (
        'model m = vllm default\nrouter r = route classify using m { default: "anything", m: "other" }\n'
        'query q(t: str) using r(t) { "{t} [y]" where y in ["a"] }',
        "route classify cannot ask served model 'm'",
    ),
    (
        'model m = vllm default\nrouter r = route embedding(encoder: base) { m: ["x"], default: ["y"] }\n'
        'query q(t: str) using r(t) { "{t} [y]" where y in ["a"] }',
        "encoder: base reads hidden states of expert 'm'",
    ),
    (
        'model m = vllm default\nrouter r = route rules { m: contains ["x"], default: default }\n'
        'query q(t: str) using r(t) decode beam(width: 2) { "{t} [y]" where y in ["a"] }',
        "served model 'm' (vllm) cannot run `decode beam`",
    ),
]


@pytest.mark.parametrize("src,message", FEATURES, ids=[f"f{i}" for i in range(len(FEATURES))])
def test_what_a_server_cannot_do_is_a_check_error_naming_model_and_feature(src, message):
    if "query" not in src:
        src += "\nquery q(t: str) using default { \"{t} [y]\" where y in [\"a\"] }"
    with pytest.raises(CheckError) as e:
        compile_(src)
    got = [d for d in e.value.diagnostics if d.message.startswith(message)]
    assert got, [d.message for d in e.value.diagnostics]
    assert got[0].code == "served-unsupported" and got[0].hint


def test_what_a_server_can_do_checks_clean():
    compile_('''
model m = vllm default
adapter p = train lora on "examples/data/polite.jsonl" { base: m, rank: 4 }   # a vllm source's weights are local
model t = m + p * 0.5
router r = route rules { t: contains ["please"], default: m }
query a(x: str) using t decode best_of(n: 2, temperature: 0.7) { user "{x}" assistant "[y]" where y stops before "\\n" and tokens(y) <= 8 }
query b(x: str) using r(x) decode vote(n: 3) { "{x} [n]." where n is int }
query c(x: str) using m { user "{x}" assistant "[y]" distribution y in ["yes", "no"] }
query d(x: str) using m { "{x} [y]" where y matches r"[a-z]+" and len(y) <= 4 }
query e(x: str) using m { user "{x}" assistant "[j]" where j is json { name: str, age: int(0..150) } }
''')


# ---------------------------------------------------------------- graph


def test_served_sources_are_graph_nodes_with_labels_and_json_round_trip():
    prog = compile_(f'''
model a = server "{URL}" {{ model: "smollm2", api_key_env: "KEY", concurrency: 4 }}
model b = vllm default {{ dtype: bfloat16, args: ["--seed", "1"] }}
query q(t: str) using a {{ "{{t}} [y]" where y in ["x"] }}
query r(t: str) using b {{ "{{t}} [y]" where y in ["x"] }}
''')
    c = prog.frontend.compiled
    a, b = c.spec(c.names["a"]), c.spec(c.names["b"])
    assert isinstance(a, ServerSpec) and a.url == URL
    assert dict(a.options) == {"model": "smollm2", "api_key_env": "KEY", "concurrency": 4}
    assert isinstance(b, VllmSpec) and b.source == "default" and dict(b.options)["args"] == ("--seed", "1")
    assert c.names["a"].startswith("server:smollm2:") and c.names["b"].startswith("vllm:default:")
    assert graph_from_json(json.loads(json.dumps(graph_to_json(c)))) == c
    dot, mermaid = graph_to_dot(c), graph_to_mermaid(c)
    assert f'a = server {URL} (smollm2)' in dot and "b = vllm default" in mermaid
    assert "query q(t) -> [y] using a" in dot


def test_equal_served_declarations_are_one_node_and_ids_do_not_depend_on_spans():
    one = compile_(
        f'model a = server "{URL}" {{ model: "m" }}\nmodel b = server "{URL}" {{ model: "m" }}\n'
        + CHOICE_Q.format().replace("using m", "using a")
    ).frontend.compiled
    assert one.names["a"] == one.names["b"]
    two = compile_(
        f'\n\nmodel a = server "{URL}" {{ model: "m" }}\n' + CHOICE_Q.format().replace("using m", "using a")
    ).frontend.compiled
    assert two.names["a"] == one.names["a"]


def test_the_registry_knows_the_served_kinds():
    server, vllm = sources.SOURCE_KINDS["server"], sources.SOURCE_KINDS["vllm"]
    assert server.engine == vllm.engine == "served"
    assert not server.logits and not server.beam and server.adapters == "" and not server.weights
    assert vllm.adapters == "modules" and vllm.weights and not vllm.merge
    assert not server.with_options({"api": "chat"}).raw_prompt
    assert sources.SOURCE_KINDS["default"].engine == "local"
    from lmlang.runtime.engines import ENGINES

    assert {k.engine for k in sources.SOURCE_KINDS.values()} <= set(ENGINES)


def test_lmlang_models_lists_a_scripts_models(tmp_path):
    from click.testing import CliRunner

    from lmlang.cli import main

    script = tmp_path / "s.lm"
    script.write_text(
        f'model a = server "{URL}" {{ model: "smollm2", api_key_env: "KEY" }}\n'
        'model b = vllm default { concurrency: 8 }\nmodel c = default\n'
        'query q(t: str) using a { "{t} [y]" where y in ["x"] }\n'
    )
    out = CliRunner().invoke(main, ["models", str(script), "--json"])
    assert out.exit_code == 0, out.output
    rows = {r["name"]: r for r in json.loads(out.output)}
    assert rows["a"]["kind"] == "server" and rows["a"]["engine"] == "served" and rows["a"]["source"] == URL
    assert rows["b"] == {
        "name": "b",
        "kind": "vllm",
        "engine": "served",
        "source": "default",
        "options": {"concurrency": 8},
    }
    assert rows["c"]["engine"] == "local"
    table = CliRunner().invoke(main, ["models", str(script)]).output
    assert "served" in table and "api_key_env" in table


def test_lmlang_models_shows_the_vllm_engine():
    from click.testing import CliRunner

    from lmlang.cli import main

    out = CliRunner().invoke(main, ["models", "--json"])
    assert out.exit_code == 0
    assert any(r["kind"] == "engine" and "vllm" in r["name"] for r in json.loads(out.output))


def test_the_highlighter_knows_the_keywords():
    from pygments.token import Keyword

    from lmlang.highlight import LmlangLexer

    toks = list(LmlangLexer().get_tokens(f'model m = server "{URL}"\nmodel v = vllm default'))
    assert (Keyword, "server") in toks and (Keyword, "vllm") in toks
