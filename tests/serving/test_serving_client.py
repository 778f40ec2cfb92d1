"""The OpenAI-compatible client's error paths, against a small in-process fake server.

Only failure behaviour is tested here (retries, give-up, timeouts, bad answers, no
server); what a real server answers is tested against vLLM in test_serving_vllm.py.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("httpx")

from lmlang.errors import LmlangRuntimeError
from lmlang.serving.client import (
    BadServerResponse,
    Client,
    Endpoint,
    ServerFailed,
    ServerRejected,
    ServerTimeout,
    ServerUnavailable,
    parse_completion,
)
from lmlang.serving.server import free_port

OK = {
    "model": "m",
    "choices": [{"index": 0, "text": "hi", "finish_reason": "stop", "stop_reason": None}],
    "usage": {"prompt_tokens": 2, "completion_tokens": 1},
}


class FakeServer:
    """Answers POSTs from a script of (status, body, delay, headers) steps; the last step repeats."""

    def __init__(self, script):
        self.script = list(script)
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake.lock:
                    fake.requests.append({"path": self.path, "body": body, "auth": self.headers.get("authorization")})
                    step = fake.script[min(len(fake.requests), len(fake.script)) - 1]
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                status, payload, delay, headers = tuple(step) + (0, {})[len(step) - 2 :]
                try:
                    time.sleep(delay)
                    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def client_for(url, **kw) -> Client:
    opts = dict(retries=3, backoff=0.01, backoff_max=0.05, timeout=5.0)
    opts.update(kw)
    return Client(Endpoint(url, "m", **opts))


def test_429_is_retried_then_succeeds():
    with FakeServer([(429, {"error": {"message": "slow down"}}, 0, {"Retry-After": "0"}), (200, OK)]) as fake:
        with client_for(fake.url) as c:
            out = c.completion("hello", max_tokens=3)
    assert out.text == "hi"
    assert len(fake.requests) == 2
    assert fake.requests[0]["body"] == fake.requests[1]["body"]


def test_500s_give_up_after_the_retry_budget():
    with FakeServer([(500, {"error": {"message": "engine dead"}})]) as fake:
        with client_for(fake.url, retries=2) as c, pytest.raises(ServerFailed) as err:
            c.completion("hello")
    assert len(fake.requests) == 3
    msg = str(err.value)
    assert fake.url in msg and "engine dead" in msg and "after 3 attempts" in msg
    assert "POST /completions" in msg and "'hello'" in msg
    assert isinstance(err.value, LmlangRuntimeError)


def test_400_is_not_retried_and_quotes_the_server():
    with FakeServer([(400, {"object": "error", "message": "bad regex"})]) as fake:
        with client_for(fake.url) as c, pytest.raises(ServerRejected) as err:
            c.completion("x", structured={"regex": "("})
    assert len(fake.requests) == 1
    assert "HTTP 400: bad regex" in str(err.value) and "structured_outputs regex" in str(err.value)


def test_a_slow_answer_times_out_without_retry():
    with FakeServer([(200, OK, 3.0)]) as fake:
        with client_for(fake.url, timeout=0.3) as c, pytest.raises(ServerTimeout) as err:
            c.completion("hello")
    assert len(fake.requests) == 1
    assert "no answer within 0.3 s" in str(err.value) and fake.url in str(err.value)


@pytest.mark.parametrize(
    "payload",
    [b"<html>oops</html>", {"choices": []}, {"choices": [{"text": None}]}],
    ids=["not-json", "no-choices", "null-text"],
)
def test_bad_json_is_an_lmlang_error(payload):
    with FakeServer([(200, payload)]) as fake:
        with client_for(fake.url) as c, pytest.raises(BadServerResponse) as err:
            c.completion("hello")
    assert fake.url in str(err.value)
    assert len(fake.requests) == 1


def test_connection_refused_is_retried_then_reported():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with client_for(url, retries=2) as c, pytest.raises(ServerUnavailable) as err:
        c.completion("hello")
    assert url in str(err.value) and "after 3 attempts" in str(err.value)
    with client_for(url, retries=0) as c:
        assert c.health() is False


def test_api_key_comes_from_the_named_variable(monkeypatch):
    monkeypatch.setenv("LMLANG_TEST_KEY", "sekrit")
    with FakeServer([(200, OK)]) as fake:
        with client_for(fake.url, api_key_env="LMLANG_TEST_KEY") as c:
            c.completion("hello")
    assert fake.requests[0]["auth"] == "Bearer sekrit"
    monkeypatch.delenv("LMLANG_TEST_KEY")
    with pytest.raises(LmlangRuntimeError, match="LMLANG_TEST_KEY is not set"):
        Client(Endpoint("http://127.0.0.1:1/v1", "m", api_key_env="LMLANG_TEST_KEY"))


def test_concurrency_is_bounded_by_the_semaphore():
    with FakeServer([(200, OK, 0.2)]) as fake:
        with client_for(fake.url, concurrency=2) as c:
            outs = c.completions([{"prompt": f"p{i}", "max_tokens": 1} for i in range(6)])
    assert [o.text for o in outs] == ["hi"] * 6
    assert len(fake.requests) == 6
    assert fake.max_in_flight <= 2


def test_parse_completion_normalises_logprobs():
    data = {
        "model": "m",
        "usage": {"prompt_tokens": 2, "completion_tokens": 2},
        "choices": [
            {
                "text": "ab",
                "finish_reason": "length",
                "stop_reason": None,
                "token_ids": [5, 6],
                "logprobs": {
                    "tokens": ["a", "b"],
                    "token_logprobs": [-0.5, -1.0],
                    "top_logprobs": [{"a": -0.5, "c": -2.0}, {"b": -1.0}],
                },
                "prompt_token_ids": [1, 2],
                "prompt_logprobs": [
                    None,
                    {
                        "2": {"logprob": -3.0, "rank": 4, "decoded_token": "x"},
                        "9": {"logprob": -0.1, "rank": 1, "decoded_token": "y"},
                    },
                ],
            }
        ],
    }
    out = parse_completion(data, "POST /completions", chat=False)
    assert [t.logprob for t in out.logprobs] == [-0.5, -1.0]
    assert [t.token for t in out.top_logprobs[0]] == ["a", "c"]
    assert out.prompt_logprobs[0] is None
    assert [(t.token_id, t.rank) for t in out.prompt_logprobs[1]] == [(9, 1), (2, 4)]
    chat = {
        "choices": [
            {
                "message": {"content": "ok"},
                "finish_reason": "stop",
                "logprobs": {
                    "content": [{"token": "ok", "logprob": -0.2, "top_logprobs": [{"token": "ok", "logprob": -0.2}]}]
                },
            }
        ]
    }
    out = parse_completion(chat, "POST /chat/completions", chat=True)
    assert out.text == "ok" and out.logprobs[0].logprob == -0.2 and out.top_logprobs[0][0].token == "ok"
