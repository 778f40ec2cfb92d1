"""Which server answers for a served model node, under which model name, with
which tokenizer and which request features.

    deployment_of(compiled, nid) -> Deployment         one per served source, per process
    served_model(compiled, builder, nid) -> (Deployment, model name for requests)

A `server "URL"` source: an OpenAI-compatible endpoint that lmlang probes
once (GET /version and /v1/models, and probes that structured outputs and
prompt log-probabilities really work: vLLM 0.32 silently ignores its old
`guided_*` fields, so nothing is taken on trust). Its tokenizer is the
`tokenizer:` option, else the model's own folder when the server reports a
`root` that exists on this machine (a vLLM serving a local folder).

A `vllm "SPEC"` source: lmlang.serving.server starts (or reuses, within the
process) a vLLM on 127.0.0.1 with the guidance structured-outputs backend, so
every constraint means what it means locally; its tokenizer is the model
folder's. When the program applies adapters to it, the server is started
with LoRA support and each adapter stack is exported as one exact PEFT folder
(lmlang.serving.lora_export) and loaded as a LoRA module on first use.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import LmlangRuntimeError

if TYPE_CHECKING:
    from ...serving.client import Client
    from ...serving.server import ManagedServer
    from ...serving.structured import ServerFeatures
    from .served_prompt import Tokens

_LOCK = threading.Lock()
_DEPLOYMENTS: dict = {}


class ScoreGate:
    """Scoring requests (prompt log-probabilities) alone on a LoRA-enabled vLLM.

    vLLM 0.32 (CPU build, measured here) kills its engine (EngineDeadError,
    every later request fails) when a request with `prompt_logprobs` is batched
    with any other request while LoRA is enabled: LogitsProcessorWithLoRA
    indexes the batch's LoRA slots with the prompt's positions ("einsum():
    subscript b has size 2 for operand 1 which does not broadcast with
    previously seen size 14"). Alone in its batch the one slot broadcasts
    correctly (that request's own adapter on every position). So on such a
    server lmlang sends a scoring request only while none of its other
    requests is in flight, and ordinary requests wait while one scores. Other
    programs' requests to the same server are not seen: a LoRA server shared
    with other clients should not serve `distribution` queries.

    Lives on the client's loop (the Deployment's client runs every request)."""

    def __init__(self):
        self._cond: asyncio.Condition | None = None
        self._shared = 0  # ordinary requests in flight
        self._alone = False  # a scoring request in flight
        self._waiting = 0  # scoring requests waiting (they go first: no starvation)

    def _c(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    @asynccontextmanager
    async def shared(self):
        c = self._c()
        async with c:
            await c.wait_for(lambda: not self._alone and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            async with c:
                self._shared -= 1
                c.notify_all()

    @asynccontextmanager
    async def alone(self):
        c = self._c()
        async with c:
            self._waiting += 1
            try:
                await c.wait_for(lambda: not self._alone and not self._shared)
            finally:
                self._waiting -= 1
            self._alone = True
        try:
            yield
        finally:
            async with c:
                self._alone = False
                c.notify_all()


@dataclass
class Deployment:
    kind: str  # "server" | "vllm"
    label: str  # for messages: the URL, or "vllm <source>"
    client: Client  # its loop runs the requests
    model: str  # the served base model's name
    tokens: Tokens | None  # None: prompts go as text
    features: ServerFeatures
    api: str = "completions"  # "completions" | "chat"
    server: ManagedServer | None = None  # the ManagedServer of a vllm source
    is_vllm: bool = True  # vLLM's extra endpoints (/tokenize, /detokenize) exist
    gate: ScoreGate | None = None  # a vLLM with LoRA enabled: scoring requests go alone (ScoreGate)

    @property
    def url(self) -> str:
        return self.client.endpoint.base_url

    def where(self, model: str | None = None) -> str:
        """How errors name the server: `server http://127.0.0.1:8000/v1 (model 'm')`."""
        return f"server {self.url} (model '{model or self.model}')"


def source_node(compiled, nid: str) -> tuple[str, list]:
    """(the served source node under `nid`, the adapter stack applied on it:
    [(adapter node id, scale), ...], innermost first)."""
    stack: list = []
    spec = compiled.spec(nid)
    while spec.kind == "apply":
        stack = list(spec.adapters) + stack
        nid = spec.base
        spec = compiled.spec(nid)
    return nid, stack


def deployment_of(compiled, nid: str) -> Deployment:
    spec = compiled.spec(nid)
    opts = dict(spec.options)
    key: tuple
    adapted = spec.kind == "vllm" and _adapted(compiled, nid)
    if spec.kind == "vllm":
        key = ("vllm", spec.source, tuple(sorted(opts.items())), adapted)
    else:
        key = ("server", spec.url, tuple(sorted(opts.items())))
    with _LOCK:
        dep = _DEPLOYMENTS.get(key)
        if dep is not None and (dep.server is None or dep.server.alive()):
            return dep
        dep = _start_vllm(spec, opts, adapted) if spec.kind == "vllm" else _connect(spec, opts)
        _DEPLOYMENTS[key] = dep
        return dep


def served_model(compiled, builder, nid: str) -> tuple[Deployment, str]:
    """The deployment and the model name requests for node `nid` carry (a LoRA
    module's name when adapters are applied)."""
    src, stack = source_node(compiled, nid)
    dep = deployment_of(compiled, src)
    if not stack:
        return dep, dep.model
    if dep.server is None:  # the checker refuses adapters on a `server` source
        raise LmlangRuntimeError(f"adapters cannot be applied on {dep.label}")
    from ...serving.lora_export import export_stack, module_name

    folders = [(Path(builder.value(a)), float(s)) for a, s in stack]
    folder = export_stack(folders)
    return dep, dep.server.load_lora(module_name(folder), folder)


def _adapted(compiled, nid: str) -> bool:
    """Does the program apply adapters to this source (the server then needs LoRA)?"""
    return any(spec.kind == "apply" and source_node(compiled, n)[0] == nid for n, spec in compiled.nodes.items())


def _client_options(opts: dict) -> dict:
    from ...models.sources import CLIENT_OPTIONS

    return {k: opts.get(k, o.default) for k, o in CLIENT_OPTIONS.items()}


def _start_vllm(spec, opts: dict, lora: bool) -> Deployment:
    from ...models.sources import SOURCE_OPTIONS
    from ...serving.client import Client
    from ...serving.server import ServerOptions, start_server
    from ...serving.structured import ServerFeatures
    from .served_prompt import load_tokens

    dtype = opts.get("dtype")
    options = ServerOptions(
        model=spec.source,
        tensor_parallel=int(opts.get("tensor_parallel", 1)),
        dtype=None if dtype in (None, "auto") else dtype,
        max_model_len=opts.get("max_model_len"),
        gpu_memory=opts.get("gpu_memory"),
        args=tuple(opts.get("args", ())),
        enable_lora=lora,
        max_lora_rank=opts.get("max_lora_rank", SOURCE_OPTIONS["vllm"]["max_lora_rank"].default) if lora else None,
    )
    server = start_server(options)
    client = Client(server.endpoint(**_client_options(opts)))
    return Deployment(
        "vllm",
        f"vllm {spec.source}",
        client,
        server.name,
        load_tokens(str(server.folder)),
        ServerFeatures("vllm", True, server.structured_backend),
        server=server,
        gate=ScoreGate() if server.options.lora else None,
    )


def _connect(spec, opts: dict) -> Deployment:
    from ...models.sources import served_features
    from ...serving.client import Client, Endpoint
    from ...serving.structured import ServerFeatures

    client = Client(
        Endpoint(spec.url, opts.get("model") or "", api_key_env=opts.get("api_key_env"), **_client_options(opts))
    )
    try:
        caps = client.capabilities(probe=False)
        model = opts.get("model") or _only_model(spec.url, caps)
        if model not in {m.id for m in caps.models}:
            known = ", ".join(m.id for m in caps.models) or "none"
            raise LmlangRuntimeError(f"server {spec.url} does not serve model '{model}'", hint=f"it serves: {known}")
        if client.endpoint.model != model:
            client.close()
            client = Client(Endpoint(spec.url, model, api_key_env=opts.get("api_key_env"), **_client_options(opts)))
        caps = client.capabilities(probe=opts.get("api", "completions") == "completions")
    except BaseException:
        client.close()
        raise
    engine, structured, backend = served_features("server", opts)
    if engine == "vllm" and not (caps.version and caps.structured_outputs is not False):
        engine, structured = "openai", False  # not vLLM, or it ignores structured outputs: never trust it
    features = ServerFeatures(engine, structured, backend)
    return Deployment(
        "server",
        spec.url,
        client,
        model,
        _server_tokens(opts, caps, model),
        features,
        api=opts.get("api", "completions"),
        is_vllm=bool(caps.version),
        gate=ScoreGate() if caps.version and any(m.is_lora for m in caps.models) else None,
    )


def _only_model(url: str, caps) -> str:
    bases = caps.base_models
    if len(bases) == 1:
        return bases[0]
    raise LmlangRuntimeError(
        f"server {url} serves {len(bases)} models; name one with model: \"...\"",
        hint="it serves: " + (", ".join(bases) or "none"),
    )


def _server_tokens(opts: dict, caps, model: str):
    """The served model's tokenizer where lmlang has it: the `tokenizer` option,
    else the `root` folder the server reports, when it exists here."""
    from .served_prompt import load_tokens

    if opts.get("tokenizer"):
        from ...models.loader import resolve_model

        return load_tokens(str(resolve_model(opts["tokenizer"])))
    info = next((m for m in caps.models if m.id == model), None)
    root = Path(info.root) if info is not None and info.root else None
    try:
        if root is not None and root.is_absolute() and (root / "tokenizer_config.json").is_file():
            return load_tokens(str(root))
    except OSError:
        pass
    return None


def forget_all() -> None:
    """Close every client (tests; servers stop at exit on their own)."""
    with _LOCK:
        for dep in _DEPLOYMENTS.values():
            dep.client.close()
        _DEPLOYMENTS.clear()
