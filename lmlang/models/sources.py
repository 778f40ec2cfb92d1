"""Model sources: where a model comes from, and what the runtime can do with it.

One registry for every layer: the checker validates a `model NAME = ...`
declaration against it (which strings are hub ids, which are paths, which
options a kind takes, which features a kind supports), the compiler records
the kind in the graph, `lmlang models` and the graph export describe it, and
the runtime picks the engine a kind names (lmlang.runtime.engines). Torch-free
and cheap to import: the checker reads it on every `lmlang check`.

Adding a source kind: one engine module that implements it (see
lmlang/runtime/engines/__init__.py), one entry in `SOURCE_KINDS` (with its
options in `SOURCE_OPTIONS` if it takes a block), and the grammar rule that
writes it.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from ..frozen import frozen
from ..problems import Problem
from ..suggest import did_you_mean

# A hub id: `name` or `org/name`, optionally `@revision`. The loader and the
# checker read the same pattern (they used to disagree on `gpt2` and `@rev`).
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?(@[\w./-]+)?")
PATH_PREFIXES = (".", "/", "~")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@frozen
class SourceKind:
    """A kind of model source and the features its models offer.

    `logits`: next-token logits in this process, token by token (logit
    fusion, routing by hidden states need them). `raw_prompt`: the engine
    continues an arbitrary prompt, so a hole may follow text in its message
    and a seam space can be healed. `adapters`: how `model + adapter` is
    applied ("hooks": LoRA deltas in process; "modules": LoRA modules the
    engine serves, exported from the adapter; "": none). `weights`: lmlang
    reads the model's weights (training on it); `merge`: merges may take it
    as an input. `beam`: lmlang's beam search (masked per step) runs on it.
    `prompt_logprobs`: the engine scores a given continuation (`distribution`,
    route classify). `engine`: the runtime engine that runs queries on models
    of this kind (a name in lmlang.runtime.engines.ENGINES)."""

    name: str
    summary: str
    logits: bool = True
    raw_prompt: bool = True
    adapters: str = "hooks"
    weights: bool = True
    merge: bool = True
    beam: bool = True
    prompt_logprobs: bool = True
    engine: str = "local"
    keyword: str = ""  # the word a script writes it with (`server "URL"`), if any

    def with_options(self, options: dict) -> "SourceKind":
        """The features of one declaration: a `server { api: "chat" }` has no
        raw-prompt endpoint and no prompt log-probabilities."""
        if self.name == "server" and options.get("api") == "chat":
            return SourceKind(
                self.name,
                self.summary,
                logits=False,
                raw_prompt=False,
                adapters="",
                weights=False,
                merge=False,
                beam=False,
                prompt_logprobs=False,
                engine=self.engine,
                keyword=self.keyword,
            )
        return self


_SERVED: dict[str, Any] = dict(logits=False, beam=False, merge=False, engine="served")

SOURCE_KINDS: dict[str, SourceKind] = {
    k.name: k
    for k in (
        SourceKind("default", "the bundled SmolLM2-135M-Instruct (offline)"),
        SourceKind("folder", "a local folder of safetensors weights with its tokenizer"),
        SourceKind("gguf", "a local .gguf file, dequantized once into the lmlang home"),
        SourceKind("hub", "a hub id, resolved from the local Hugging Face cache only"),
        SourceKind(
            "server",
            "a model behind an OpenAI-compatible server (vLLM, SGLang, llama.cpp, TGI, a hosted API)",
            adapters="",
            weights=False,
            keyword="server",
            **_SERVED,
        ),
        SourceKind(
            "vllm",
            "a local model served by a vLLM that lmlang starts, health-checks and stops",
            adapters="modules",
            keyword="vllm",
            **_SERVED,
        ),
    )
}

# Ranks vLLM accepts for --max-lora-rank (vLLM 0.32).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def classify(text: str) -> str | None:
    """The kind of a model source string as written in a script: "gguf" or
    "folder" for what can only be a path, "hub" for a hub id, None for
    neither. (A string that reads as a hub id may still name a folder next
    to the script: the compiler and the loader prefer an existing path.)"""
    if text == "default":
        return "default"
    if not text.strip():
        return None
    if text.lower().endswith(".gguf"):
        return "gguf"
    if text.startswith(PATH_PREFIXES):
        return "folder"
    if HUB_ID.fullmatch(text):
        return "hub"
    return None


def is_hub_id(text: str) -> bool:
    return classify(text) == "hub"


# ---------------------------------------------------------------- options of served sources


@frozen
class SourceOption:
    """One option of a source block: its type, range or choices, and what it does."""

    type: str  # "str" | "int" | "float" | "strings" | "word" (a string or bare word)
    doc: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    choices: tuple = ()
    default: object = None


CLIENT_OPTIONS = {
    "concurrency": SourceOption("int", "requests in flight at once (the rest wait)", 1, 4096, default=16),
    "timeout": SourceOption(
        "float", "seconds one request may take (each retry gets its own)", 0, 86400, lo_open=True, default=60.0
    ),
    "retries": SourceOption("int", "retries of a request after HTTP 429/5xx or a dropped connection", 0, 20, default=4),
}

SOURCE_OPTIONS: dict[str, dict[str, SourceOption]] = {
    "server": {
        "model": SourceOption("str", "the model name the server serves (default: the server's only model)"),
        "api_key_env": SourceOption("str", "the NAME of the environment variable that holds the API key"),
        **CLIENT_OPTIONS,
        "api": SourceOption(
            "word",
            "the endpoint prompts go to: completions (raw prompts) or chat (a chat API "
            "that only writes a whole assistant message)",
            choices=("completions", "chat"),
            default="completions",
        ),
        "backend": SourceOption(
            "word",
            "the structured-outputs backend the server runs: guidance (exact, what "
            "lmlang's managed vLLM runs), xgrammar, outlines, auto (vLLM's default), or none "
            "(a plain OpenAI-compatible server)",
            choices=("guidance", "xgrammar", "outlines", "auto", "none"),
            default="auto",
        ),
        "tokenizer": SourceOption(
            "str",
            "a local model (default, a hub id in the local cache, a folder) whose "
            "tokenizer lmlang renders prompts with, so prompts go as exact token ids",
        ),
    },
    "vllm": {
        "tensor_parallel": SourceOption("int", "GPUs one model is split over", 1, 64, default=1),
        "dtype": SourceOption(
            "word",
            "weights' precision (auto: float32 on a CPU, the model's own on a GPU)",
            choices=("auto", "float32", "float16", "bfloat16"),
            default="auto",
        ),
        "max_model_len": SourceOption("int", "the longest context served, in tokens", 16, 10_000_000),
        "gpu_memory": SourceOption("float", "the fraction of GPU memory vLLM may take", 0, 1, lo_open=True),
        "max_lora_rank": SourceOption(
            "int", "the largest LoRA rank the server accepts (with adapters)", choices=VLLM_LORA_RANKS, default=64
        ),
        "args": SourceOption("strings", "extra command-line arguments for vLLM's server"),
        **CLIENT_OPTIONS,
    },
}

# Never options: a secret written in a script ends up in version control,
# traces and graph exports.
SECRET_OPTIONS = (
    "api_key",
    "apikey",
    "key",
    "token",
    "api_token",
    "secret",
    "password",
    "authorization",
    "bearer",
    "auth",
)

# vLLM arguments lmlang sets itself (its meaning depends on them) or never allows.
VLLM_RESERVED_ARGS = {
    "--model": "write the model as the source: vllm \"...\"",
    "--host": "the managed server listens on 127.0.0.1",
    "--port": "lmlang picks a free port",
    "--served-model-name": "lmlang names the served model",
    "--lora-modules": "apply adapters in the script: model tuned = served + adapter",
    "--enable-lora": "apply adapters in the script: model tuned = served + adapter",
    "--max-lora-rank": "use the max_lora_rank option",
    "--generation-config": "lmlang serves with --generation-config vllm so sampling means what it means locally",
    "--structured-outputs-config": "lmlang's constraints need the guidance backend it sets",
    "--tensor-parallel-size": "use the tensor_parallel option",
    "--dtype": "use the dtype option",
    "--max-model-len": "use the max_model_len option",
    "--gpu-memory-utilization": "use the gpu_memory option",
    "--trust-remote-code": "lmlang never runs a model's own Python code",
    "--api-key": "an API key is never written in a script",
}


def source_option_names(kind: str) -> tuple[str, ...]:
    return tuple(SOURCE_OPTIONS.get(kind, {}))


def check_source_option(kind: str, key: str, value) -> Problem | None:
    """The problem with one option of a `server` / `vllm` block (None: fine).
    `value` is a plain value (str, int, float, bool, list) or None when it is
    not one (a model expression, a block)."""
    table = SOURCE_OPTIONS[kind]
    if key.lower() in SECRET_OPTIONS or "secret" in key.lower() or "password" in key.lower():
        return Problem(
            f"an API key is never written in a script (option '{key}')",
            'export it and name the variable: api_key_env: "LMLANG_API_KEY"',
            "secret-in-script",
            option=key,
        )
    if key not in table:
        return Problem(
            f"unknown option '{key}' for a {kind} model",
            did_you_mean(key, table, known="options"),
            "unknown-option",
            option=key,
        )
    opt = table[key]
    problem = _type_problem(kind, key, opt, value)
    if problem is not None:
        return problem
    if key == "api_key_env":
        return _env_name_problem(value)
    if key == "args":
        return _args_problem(value)
    return None


def _type_problem(kind: str, key: str, opt: SourceOption, value) -> Problem | None:
    what = f"{kind} option '{key}'"
    if opt.type in ("str", "word"):
        if not isinstance(value, str) or not value.strip():
            return Problem(f"{what} takes a string", code="bad-type", option=key)
        if opt.choices and value not in opt.choices:
            return Problem(
                f"{what} must be one of {', '.join(opt.choices)}, got {value!r}",
                did_you_mean(value, opt.choices),
                "bad-value",
                option=key,
            )
        return None
    if opt.type == "strings":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return Problem(
                f"{what} takes a list of strings", 'for example: args: ["--seed", "1"]', "bad-type", option=key
            )
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or (opt.type == "int" and not isinstance(value, int)):
        return Problem(
            f"{what} must be {'an integer' if opt.type == 'int' else 'a number'}", code="bad-type", option=key
        )
    if opt.choices and value not in opt.choices:
        return Problem(
            f"{what} must be one of {', '.join(str(c) for c in opt.choices)}, got {value}", code="bad-value", option=key
        )
    low = opt.lo is not None and (value <= opt.lo if opt.lo_open else value < opt.lo)
    high = opt.hi is not None and value > opt.hi
    if low or high:
        lo = f"> {opt.lo:g}" if opt.lo_open else f">= {opt.lo:g}"
        return Problem(
            f"{what} is out of range: {value}", f"{key} must be {lo} and <= {opt.hi:g}", "bad-value", option=key
        )
    return None


def _env_name_problem(value: str) -> Problem | None:
    if ENV_NAME.fullmatch(value):
        return None
    return Problem(
        "api_key_env takes the NAME of an environment variable, not the key itself",
        'for example: api_key_env: "OPENAI_API_KEY" (then export OPENAI_API_KEY=...)',
        "secret-in-script",
        option="api_key_env",
    )


def _args_problem(args: list) -> Problem | None:
    for a in args:
        flag = a.split("=", 1)[0]
        if flag in VLLM_RESERVED_ARGS:
            return Problem(
                f"vllm argument {flag} is set by lmlang", VLLM_RESERVED_ARGS[flag], "reserved-arg", option="args"
            )
    return None


def url_problem(url: str) -> Problem | None:
    """Why a server URL cannot be used (None: fine)."""
    try:
        parts = urlsplit(url)
        parts.port  # raises on a bad port
    except ValueError as e:
        return Problem(f"invalid server URL {url!r}: {e}", code="bad-url")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return Problem(
            f"invalid server URL {url!r}",
            'write http(s)://HOST[:PORT]/PATH, e.g. "http://127.0.0.1:8000/v1"',
            "bad-url",
        )
    if parts.username or parts.password:
        return Problem(
            "an API key or password is never written in a script (the URL holds credentials)",
            'name an environment variable instead: api_key_env: "LMLANG_API_KEY"',
            "secret-in-script",
        )
    if parts.query or parts.fragment:
        return Problem(f"a server URL takes no query or fragment: {url!r}", code="bad-url")
    if parts.path in ("", "/"):
        return Problem(
            f"the server URL {url!r} has no API path",
            f'OpenAI-compatible servers answer under /v1: "{url.rstrip("/")}/v1"',
            "bad-url",
        )
    return None


def served_features(kind: str, options: dict) -> tuple[str, bool, str]:
    """(engine, structured outputs honoured, structured-outputs backend) that a
    declaration promises, for lmlang.serving.structured.ServerFeatures: what
    the checker judges constraints against before any server runs."""
    if kind == "vllm":
        return "vllm", True, "guidance"
    backend = options.get("backend", "auto")
    if backend == "none":
        return "openai", False, "auto"
    return "vllm", True, backend
