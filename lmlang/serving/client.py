"""An OpenAI-compatible HTTP client for served models (vLLM, SGLang, llama.cpp, TGI, hosted APIs).

Contract (what the runtime's server backend calls)
---------------------------------------------------

    Endpoint(base_url, model, api_key_env=None, concurrency=16, timeout=60.0, retries=4,
             backoff=0.5, backoff_max=8.0)
    AsyncClient(endpoint, transport=None)          one per endpoint; safe for many concurrent calls
        await .completion(prompt, **sampling) -> Completion       POST /completions (raw prompt: text or token ids)
        await .chat(messages, **sampling) -> Completion           POST /chat/completions
        await .version() -> str | None             GET <root>/version (vLLM); None when the server has none
        await .models() -> list[ModelInfo]         GET /models; LoRA modules have a `parent`
        await .health() -> bool                    GET <root>/health
        await .capabilities(probe=True) -> Capabilities           the above plus probes (below)
        await .tokenize(text) -> list[int]         vLLM's POST <root>/tokenize
        await .tokenize_chat(messages, add_generation_prompt) -> list[int]   the server's chat template
        await .detokenize(ids) -> str              vLLM's POST <root>/detokenize
        await .score(prompt_ids, start) -> float   log p(ids[start:] | ids[:start]) from prompt logprobs
        await .aclose()
    Client(endpoint)                               the same methods, synchronous (a private event loop
                                                   thread), plus .completions([kwargs, ...]) for many requests
                                                   and .run(coroutine) for a caller's own gather over .aclient
    sampling keywords: max_tokens, temperature, top_p, top_k, seed, stop, include_stop, logprobs
        (top-k per generated token), prompt_logprobs (vLLM: top-k per prompt token, the prompt's own
        token included), structured (vLLM `structured_outputs` dict, from structured.py),
        return_token_ids, model (a LoRA module name), extra (any other body fields)

Why these choices:
- The API key is read from the environment variable the script names, once, when the
  client is made: scripts never hold secrets.
- A semaphore bounds requests in flight (the server batches them; more would only
  queue in its scheduler and time out there). It is released while a retry waits.
- 429, 5xx and connection failures are retried with exponential backoff and jitter
  (Retry-After honoured up to backoff_max), at most `retries` times; a request that
  outlives `timeout` is not retried (it would likely time out again, doubling load).
- Every failure is a ServerError (an LmlangRuntimeError) that names the server URL and
  summarises the request; raw httpx exceptions never escape.
- The old vLLM `guided_*` fields are never sent: vLLM 0.32 ignores them silently.
  `capabilities()` checks that `structured_outputs` is honoured by asking for a choice
  no free-running model would write and checking the answer is one of the options.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import LmlangRuntimeError

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# A choice no model writes unprompted: a server that ignores structured outputs fails the probe.
PROBE_CHOICES = ("lmlang-probe-7q", "lmlang-probe-3x")


# ---------------------------------------------------------------------------- errors
class ServerError(LmlangRuntimeError):
    """A served model failed a request. `url` is the server, `request` a short summary."""

    def __init__(self, message: str, *, url: str, request: str = "", status: int | None = None, hint: str = ""):
        where = f"server {url}" + (f", {request}" if request else "")
        super().__init__(f"{where}: {message}", hint=hint)
        self.url = url
        self.request = request
        self.status = status


class ServerUnavailable(ServerError):
    """No connection (refused, reset) after every retry."""


class ServerTimeout(ServerError):
    """The request outlived its timeout."""


class ServerRejected(ServerError):
    """The server refused the request (HTTP 4xx other than 429): retrying cannot help."""


class ServerFailed(ServerError):
    """HTTP 429 or 5xx after every retry."""


class BadServerResponse(ServerError):
    """The answer was not the JSON an OpenAI-compatible server sends."""


# ---------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Endpoint:
    base_url: str  # e.g. "http://127.0.0.1:8000/v1"
    model: str  # the served model name (or a LoRA module name)
    api_key_env: str | None = None  # the NAME of the environment variable holding the key
    concurrency: int = 16
    timeout: float = 60.0  # seconds per request (each retry gets its own)
    retries: int = 4
    backoff: float = 0.5  # first retry waits about this long, then doubles
    backoff_max: float = 8.0

    @property
    def root_url(self) -> str:
        """The server root (where vLLM serves /health and /version)."""
        url = self.base_url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise LmlangRuntimeError(
                f"environment variable {self.api_key_env} is not set (the API key for {self.base_url})",
                hint=f"export {self.api_key_env}=... before running",
            )
        return key


@dataclass(frozen=True)
class TokenLogprob:
    token: str  # the token's text (or "token_id:N" with return_tokens_as_token_ids)
    logprob: float
    token_id: int | None = None
    rank: int | None = None


@dataclass
class Completion:
    """One choice of a completion or chat answer, normalised across both endpoints."""

    text: str
    finish_reason: str | None  # "stop" (EOS or a stop string) | "length" | ...
    stop_reason: str | int | None  # vLLM: the stop string or token id that ended it
    model: str = ""
    request: str = ""  # summary, for error messages
    token_ids: list[int] | None = None
    logprobs: list[TokenLogprob] | None = None  # the generated tokens
    top_logprobs: list[list[TokenLogprob]] | None = None  # per generated position
    prompt_token_ids: list[int] | None = None
    prompt_logprobs: list[list[TokenLogprob] | None] | None = None  # per prompt position; [0] is None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    raw: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class ModelInfo:
    id: str
    root: str | None = None
    parent: str | None = None  # set for a LoRA module: the base model's id
    max_model_len: int | None = None

    @property
    def is_lora(self) -> bool:
        return self.parent is not None


@dataclass(frozen=True)
class Capabilities:
    base_url: str
    version: str | None  # vLLM's version (GET /version); None for other servers
    models: tuple[ModelInfo, ...]
    structured_outputs: bool | None  # `structured_outputs` honoured (None: not probed)
    prompt_logprobs: bool | None  # `prompt_logprobs` answered (None: not probed)

    @property
    def engine(self) -> str:
        return "vllm" if self.version else "unknown"

    @property
    def lora_modules(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.models if m.is_lora)

    @property
    def base_models(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.models if not m.is_lora)


# ---------------------------------------------------------------------------- helpers
def _short(value: Any, n: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return repr(text if len(text) <= n else text[: n - 1] + "…")


def _summary(path: str, body: dict) -> str:
    what = f"prompt {_short(body['prompt'])}" if "prompt" in body else f"{len(body.get('messages', []))} messages"
    extras = [f"model {body.get('model')!r}", what]
    if body.get("structured_outputs"):
        extras.append("structured_outputs " + ",".join(body["structured_outputs"]))
    return f"POST {path} (" + ", ".join(extras) + ")"


def _server_message(resp) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:300].strip()
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        return str(err.get("message") or err)[:500]
    return str(err)[:500]


def _retry_after(resp) -> float | None:
    value = resp.headers.get("retry-after") if resp is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _tlp(token: str, logprob: Any, token_id: int | None = None, rank: int | None = None) -> TokenLogprob:
    return TokenLogprob(token, float(logprob) if logprob is not None else float("-inf"), token_id, rank)


def _completion_logprobs(lp: dict | None) -> tuple[list | None, list | None]:
    """/completions logprobs: {tokens, token_logprobs, top_logprobs: [{text: logprob}]}."""
    if not lp:
        return None, None
    sampled = [_tlp(t, p) for t, p in zip(lp.get("tokens") or [], lp.get("token_logprobs") or [])]
    top = [[_tlp(t, p) for t, p in (d or {}).items()] for d in (lp.get("top_logprobs") or [])]
    return sampled, top or None


def _chat_logprobs(lp: dict | None) -> tuple[list | None, list | None]:
    """/chat/completions logprobs: {content: [{token, logprob, top_logprobs: [{token, logprob}]}]}."""
    content = (lp or {}).get("content")
    if not content:
        return None, None
    sampled = [_tlp(c["token"], c.get("logprob")) for c in content]
    top = [[_tlp(t["token"], t.get("logprob")) for t in c.get("top_logprobs") or []] for c in content]
    return sampled, top if any(top) else None


def _prompt_logprobs(items: list | None) -> list | None:
    """vLLM: [None, {"<token id>": {logprob, rank, decoded_token}}, ...]."""
    if items is None:
        return None
    out: list[list[TokenLogprob] | None] = []
    for d in items:
        if d is None:
            out.append(None)
            continue
        row = [_tlp(v.get("decoded_token") or "", v.get("logprob"), int(k), v.get("rank")) for k, v in d.items()]
        out.append(sorted(row, key=lambda t: -t.logprob))
    return out


def parse_completion(data: Any, request: str, chat: bool) -> Completion:
    """The first choice of a /completions or /chat/completions answer (KeyError/TypeError: malformed)."""
    choice = data["choices"][0]
    if chat:
        text = choice["message"]["content"] or ""
        sampled, top = _chat_logprobs(choice.get("logprobs"))
    else:
        text = choice["text"]
        sampled, top = _completion_logprobs(choice.get("logprobs"))
    if not isinstance(text, str):
        raise TypeError("text is not a string")
    usage = data.get("usage") or {}
    return Completion(
        text=text,
        finish_reason=choice.get("finish_reason"),
        stop_reason=choice.get("stop_reason"),
        model=data.get("model", ""),
        request=request,
        token_ids=choice.get("token_ids"),
        logprobs=sampled,
        top_logprobs=top,
        prompt_token_ids=choice.get("prompt_token_ids"),
        prompt_logprobs=_prompt_logprobs(choice.get("prompt_logprobs")),
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        raw=data,
    )


def sampling_body(
    *,
    max_tokens: int | None = 16,
    temperature: float | None = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    stop: Sequence[str] | None = None,
    include_stop: bool | None = None,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
    structured: dict | None = None,
    return_token_ids: bool = False,
    extra: dict | None = None,
) -> dict:
    """Request body fields shared by both endpoints; None means 'server default' (left out)."""
    body: dict[str, Any] = {}
    for key, value in (
        ("max_tokens", max_tokens),
        ("temperature", temperature),
        ("top_p", top_p),
        ("top_k", top_k),
        ("seed", seed),
        ("include_stop_str_in_output", include_stop),
        ("prompt_logprobs", prompt_logprobs),
        ("structured_outputs", structured),
    ):
        if value is not None:
            body[key] = value
    if stop:
        body["stop"] = list(stop)
    if return_token_ids:
        body["return_token_ids"] = True
    if extra:
        body.update(extra)
    return body  # `logprobs` differs by endpoint: the callers set it


# ---------------------------------------------------------------------------- async client
class AsyncClient:
    def __init__(self, endpoint: Endpoint, transport=None):
        try:
            import httpx
        except ImportError:
            raise LmlangRuntimeError(
                "served models need the httpx package, which is not installed",
                hint="bash scripts/setup.sh (or pip install 'httpx>=0.27,<0.29')",
            ) from None
        self.endpoint = endpoint
        headers = {"Content-Type": "application/json"}
        key = endpoint.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        limits = httpx.Limits(max_connections=endpoint.concurrency, max_keepalive_connections=endpoint.concurrency)
        self._http = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(endpoint.timeout), limits=limits, transport=transport
        )
        self._sem: asyncio.Semaphore | None = None

    async def aclose(self) -> None:
        await self._http.aclose()

    # -------------------------------------------------------------- requests
    async def completion(self, prompt: str | list[int], *, model: str | None = None, **sampling) -> Completion:
        body = {"model": model or self.endpoint.model, "prompt": prompt, **sampling_body(**sampling)}
        if sampling.get("logprobs") is not None:
            body["logprobs"] = sampling["logprobs"]  # /completions: an int (top-k)
        data, summary = await self._post("/completions", body)
        return self._parse(data, summary, chat=False)

    async def chat(self, messages: list[dict], *, model: str | None = None, **sampling) -> Completion:
        body = {"model": model or self.endpoint.model, "messages": messages, **sampling_body(**sampling)}
        if sampling.get("logprobs") is not None:  # /chat/completions: a flag plus top_logprobs
            body["logprobs"] = True
            body["top_logprobs"] = sampling["logprobs"]
        data, summary = await self._post("/chat/completions", body)
        return self._parse(data, summary, chat=True)

    def _parse(self, data: Any, summary: str, chat: bool) -> Completion:
        try:
            return parse_completion(data, summary, chat)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
            raise BadServerResponse(
                f"answer is not an OpenAI-compatible completion ({type(e).__name__}: {e}): {_short(data, 200)}",
                url=self.endpoint.base_url,
                request=summary,
            ) from None

    async def tokenize(self, text: str, *, add_special_tokens: bool = False, model: str | None = None) -> list[int]:
        """The server's token ids for `text` (vLLM's POST /tokenize), so prompts can be sent as ids."""
        body = {"model": model or self.endpoint.model, "prompt": text, "add_special_tokens": add_special_tokens}
        data, summary = await self._post("/tokenize", body, root=True)
        try:
            return [int(t) for t in data["tokens"]]
        except (KeyError, TypeError, ValueError) as e:
            raise BadServerResponse(
                f"answer has no token list ({e}): {_short(data, 200)}", url=self.endpoint.base_url, request=summary
            ) from None

    async def tokenize_chat(
        self, messages: list[dict], *, add_generation_prompt: bool = True, model: str | None = None
    ) -> list[int]:
        """Token ids of `messages` rendered by the server's own chat template (vLLM)."""
        body = {
            "model": model or self.endpoint.model,
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
        }
        data, summary = await self._post("/tokenize", body, root=True)
        try:
            return [int(t) for t in data["tokens"]]
        except (KeyError, TypeError, ValueError) as e:
            raise BadServerResponse(
                f"answer has no token list ({e}): {_short(data, 200)}", url=self.endpoint.base_url, request=summary
            ) from None

    async def detokenize(self, ids: list[int], *, model: str | None = None) -> str:
        """The text of token ids (vLLM's POST <root>/detokenize)."""
        body = {"model": model or self.endpoint.model, "tokens": list(ids)}
        data, summary = await self._post("/detokenize", body, root=True)
        try:
            text = data["prompt"]
        except (KeyError, TypeError) as e:
            raise BadServerResponse(
                f"answer has no text ({e}): {_short(data, 200)}", url=self.endpoint.base_url, request=summary
            ) from None
        if not isinstance(text, str):
            raise BadServerResponse("answer's text is not a string", url=self.endpoint.base_url, request=summary)
        return text

    async def score(self, prompt_ids: list[int], start: int, *, model: str | None = None) -> float:
        """log p(prompt_ids[start:] | prompt_ids[:start]) from prompt logprobs: what `distribution`
        sums per option (send the same ids lmlang's tokenizer gives the prefix and the option)."""
        if not 1 <= start <= len(prompt_ids):
            raise ValueError(f"start must be in 1..{len(prompt_ids)}")
        out = await self.completion(list(prompt_ids), model=model, max_tokens=1, temperature=0.0, prompt_logprobs=0)
        rows = out.prompt_logprobs or []
        total = 0.0
        for pos in range(start, len(prompt_ids)):
            row = {t.token_id: t.logprob for t in ((rows[pos] if pos < len(rows) else None) or [])}
            if prompt_ids[pos] not in row:
                raise BadServerResponse(
                    f"no prompt logprob for token {prompt_ids[pos]} at position {pos}",
                    url=self.endpoint.base_url,
                    request=out.request,
                )
            total += row[prompt_ids[pos]]
        return total

    async def version(self) -> str | None:
        data = await self._get("/version", root=True, missing_ok=True)
        return str(data["version"]) if isinstance(data, dict) and data.get("version") else None

    async def health(self) -> bool:
        try:
            await self._get("/health", root=True, raw=True, retry=False)
            return True
        except ServerError:
            return False

    async def models(self) -> list[ModelInfo]:
        data = await self._get("/models")
        try:
            return [ModelInfo(m["id"], m.get("root"), m.get("parent"), m.get("max_model_len")) for m in data["data"]]
        except (KeyError, TypeError) as e:
            raise BadServerResponse(
                f"GET /models answered without a model list ({e}): {_short(data, 200)}",
                url=self.endpoint.base_url,
                request="GET /models",
            ) from None

    async def capabilities(self, probe: bool = True) -> Capabilities:
        version = await self.version()
        models = tuple(await self.models())
        so = pl = None
        if probe:
            so = await self._probe_structured()
            pl = await self._probe_prompt_logprobs()
        return Capabilities(self.endpoint.base_url, version, models, so, pl)

    async def _probe_structured(self) -> bool:
        try:
            out = await self.completion(
                "Say one word:", max_tokens=16, temperature=0.0, structured={"choice": list(PROBE_CHOICES)}
            )
        except ServerRejected:
            return False
        return out.text in PROBE_CHOICES

    async def _probe_prompt_logprobs(self) -> bool:
        try:
            out = await self.completion("Hello there", max_tokens=1, temperature=0.0, prompt_logprobs=0)
        except ServerRejected:
            return False
        return any(out.prompt_logprobs or [])

    # -------------------------------------------------------------- transport
    def _semaphore(self) -> asyncio.Semaphore:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.endpoint.concurrency)
        return self._sem

    async def _post(self, path: str, body: dict, root: bool = False) -> tuple[Any, str]:
        summary = _summary(path, body)
        base = self.endpoint.root_url if root else self.endpoint.base_url.rstrip("/")
        resp = await self._send("POST", base + path, summary, json_body=body)
        return self._json(resp, summary), summary

    async def _get(
        self, path: str, *, root: bool = False, missing_ok: bool = False, raw: bool = False, retry: bool = True
    ) -> Any:
        base = self.endpoint.root_url if root else self.endpoint.base_url.rstrip("/")
        summary = f"GET {path}"
        try:
            resp = await self._send("GET", base + path, summary, retry=retry)
        except ServerRejected as e:
            if missing_ok and e.status == 404:
                return None
            raise
        return resp if raw else self._json(resp, summary)

    def _json(self, resp, summary: str) -> Any:
        try:
            return resp.json()
        except ValueError:
            raise BadServerResponse(
                f"answered HTTP {resp.status_code} with invalid JSON: {_short(resp.text, 200)}",
                url=self.endpoint.base_url,
                request=summary,
                status=resp.status_code,
            ) from None

    async def _send(self, method: str, url: str, summary: str, json_body: dict | None = None, retry: bool = True):
        """One request with bounded retries; returns a 2xx httpx.Response or raises a ServerError."""
        import httpx

        ep = self.endpoint
        attempts = 1 + (ep.retries if retry else 0)
        for attempt in range(attempts):
            resp = None
            async with self._semaphore():
                try:
                    resp = await asyncio.wait_for(self._http.request(method, url, json=json_body), ep.timeout)
                except (TimeoutError, asyncio.TimeoutError, httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout):
                    raise ServerTimeout(
                        f"no answer within {ep.timeout:g} s",
                        url=ep.base_url,
                        request=summary,
                        hint="raise the model's `timeout`, or lower its `concurrency`",
                    ) from None
                except (
                    httpx.ConnectError,
                    httpx.ConnectTimeout,
                    httpx.ReadError,
                    httpx.WriteError,
                    httpx.RemoteProtocolError,
                ) as e:
                    failure: ServerError = ServerUnavailable(
                        f"cannot connect ({type(e).__name__}: {e or 'connection failed'})",
                        url=ep.base_url,
                        request=summary,
                        hint="is the server running? check the URL and port",
                    )
                except httpx.HTTPError as e:
                    raise ServerUnavailable(
                        f"request failed ({type(e).__name__}: {e})", url=ep.base_url, request=summary
                    ) from None
                else:
                    if resp.status_code < 400:
                        return resp
                    failure = self._status_error(resp, summary)
                    if resp.status_code not in RETRY_STATUSES:
                        raise failure
            if attempt + 1 < attempts:
                await asyncio.sleep(self._delay(attempt, _retry_after(resp)))
        if attempts > 1:
            failure.message += f" (after {attempts} attempts)"
            failure.args = (failure.message,)
        raise failure

    def _status_error(self, resp, summary: str) -> ServerError:
        cls = ServerFailed if resp.status_code in RETRY_STATUSES else ServerRejected
        return cls(
            f"HTTP {resp.status_code}: {_server_message(resp)}",
            url=self.endpoint.base_url,
            request=summary,
            status=resp.status_code,
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with equal jitter; Retry-After wins when longer (capped)."""
        ep = self.endpoint
        cap = min(ep.backoff_max, ep.backoff * (2**attempt))
        delay = cap / 2 + random.uniform(0, cap / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, ep.backoff_max))
        return delay


# ---------------------------------------------------------------------------- sync wrapper
class Client:
    """Synchronous facade: one private event loop thread runs the AsyncClient, so the
    client also works where the caller already runs an event loop (a notebook)."""

    def __init__(self, endpoint: Endpoint, transport=None):
        self.endpoint = endpoint
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lmlang-serving", daemon=True)
        self._thread.start()
        try:
            self.aclient = self._run(self._make(endpoint, transport))
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()
            raise

    @staticmethod
    async def _make(endpoint: Endpoint, transport) -> AsyncClient:
        return AsyncClient(endpoint, transport)

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def run(self, coro):
        """Run a coroutine (one that awaits self.aclient's methods) on the client's
        loop and return its result: many requests in flight from synchronous code."""
        return self._run(coro)

    def completion(self, prompt: str | list[int], **kw) -> Completion:
        return self._run(self.aclient.completion(prompt, **kw))

    def chat(self, messages: list[dict], **kw) -> Completion:
        return self._run(self.aclient.chat(messages, **kw))

    def completions(self, requests: Sequence[dict], return_exceptions: bool = False) -> list:
        """Many /completions requests at once (each a dict of completion() keywords, `prompt`
        included), in flight together up to the endpoint's concurrency; results in order."""

        async def many():
            coros = [self.aclient.completion(**r) for r in requests]
            return await asyncio.gather(*coros, return_exceptions=return_exceptions)

        return self._run(many())

    def tokenize(self, text: str, **kw) -> list[int]:
        return self._run(self.aclient.tokenize(text, **kw))

    def score(self, prompt_ids: list[int], start: int, **kw) -> float:
        return self._run(self.aclient.score(prompt_ids, start, **kw))

    def version(self) -> str | None:
        return self._run(self.aclient.version())

    def models(self) -> list[ModelInfo]:
        return self._run(self.aclient.models())

    def health(self) -> bool:
        return self._run(self.aclient.health())

    def capabilities(self, probe: bool = True) -> Capabilities:
        return self._run(self.aclient.capabilities(probe))

    def close(self) -> None:
        if self._loop.is_closed():  # closed already (idempotent)
            return
        self._run(self.aclient.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
