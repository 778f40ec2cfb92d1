"""The served engine against a bare client: the same 64-row data run of a
constrained script (a choice, a regex and a JSON hole per row) through lmlang
on a vLLM server, and through the plain `openai` client sending the very same
requests (recorded from lmlang's run: same token ids, same structured outputs,
same stops) with the same concurrency, one row's holes one after another as
lmlang sends them. Also the local engine on the same rows, for scale.

    python bench/engine.py [--json] [--rows 64] [--concurrency 16] [--local-rows 64] [--url URL]

Without --url, lmlang starts its own vLLM for `vllm default` (and reports how
long that took). The server runs without prefix caching so that neither side
profits from the other's earlier run; each side runs twice, the faster run
counts. Keys of --json: rows_per_s_ratio (lmlang / plain client, goal >= 0.9),
violations (lmlang's values that break their constraint, or rows that failed,
goal 0), kinds_ok, server_start_s, and the rows/s of each side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SCRIPT = '''input text: str
model base = {model}
query extract(text: str) using base {{
    system "You read customer messages and fill in a form."
    user "Message: {{text}}"
    assistant "Sentiment: [sentiment]\\nOrder code: [code]\\nDetails: [details]"
    where sentiment in ["positive", "negative", "neutral"]
    where code matches r"[A-Z]{{3}}-[0-9]{{3}}"
    where details is json {{ item: str(1..20), quantity: int(1..100) }}
}}
flow {{ e = extract(text) emit sentiment = e.sentiment, code = e.code, details = e.details }}
'''
ITEMS = ["notebooks", "pens", "a lamp", "coffee beans", "two chairs", "a kettle", "batteries", "a rug"]
MOODS = [
    "I love your shop!",
    "This is the third time the parcel is late.",
    "Please process this.",
    "Your service is terrible.",
    "Thanks a lot for the quick help.",
]
CODE = re.compile(r"[A-Z]{3}-[0-9]{3}")


def rows(n: int) -> list[dict]:
    return [
        {
            "text": f"{MOODS[i % len(MOODS)]} Order {chr(65 + i % 26)}{chr(66 + i % 24)}{chr(67 + i % 22)}-"
            f"{100 + i:03d}: {1 + i % 9} x {ITEMS[i % len(ITEMS)]}."
        }
        for i in range(n)
    ]


def violations(outputs: list) -> tuple[int, dict]:
    """Values that break their constraint (checked here independently), and rows that failed."""
    import jsonschema

    schema = {
        "type": "object",
        "required": ["item", "quantity"],
        "additionalProperties": False,
        "properties": {
            "item": {"type": "string", "minLength": 1, "maxLength": 20},
            "quantity": {"type": "integer", "minimum": 1, "maximum": 100},
        },
    }
    bad, ok = 0, {"choice": 0, "regex": 0, "json": 0}
    for out in outputs:
        if not isinstance(out, dict):
            bad += 1
            continue
        checks = {
            "choice": out["sentiment"] in ("positive", "negative", "neutral"),
            "regex": bool(CODE.fullmatch(out["code"])),
            "json": jsonschema.Draft202012Validator(schema).is_valid(out["details"]),
        }
        bad += sum(not v for v in checks.values())
        for k, v in checks.items():
            ok[k] += v
    return bad, ok


def run_lmlang(prog, data: list[dict], engine) -> tuple[float, list, dict]:
    """One timed run; returns (seconds, outputs, requests by row in order)."""
    sent: dict = {}
    engine.on_request = lambda i, hole, kw: sent.setdefault(i, []).append(kw)
    t0 = time.perf_counter()
    outputs = prog.run_batch(data, errors="return")
    return time.perf_counter() - t0, outputs, sent


async def replay(url: str, model: str, requests: dict, concurrency: int) -> tuple[float, dict]:
    """The same requests through the plain openai client: each row's in order, rows concurrently."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="none", max_retries=4, timeout=600)
    sem = asyncio.Semaphore(concurrency)
    texts: dict = {}

    async def one(kw: dict):
        body = dict(kw)
        extra = dict(body.pop("extra", {}))
        if "structured" in body:
            extra["structured_outputs"] = body.pop("structured")
        if "include_stop" in body:
            extra["include_stop_str_in_output"] = body.pop("include_stop")
        body["model"] = body.get("model") or model
        async with sem:
            out = await client.completions.create(extra_body=extra, **body)
        return out.choices[0].text

    async def row(i: int, reqs: list):
        texts[i] = [await one(kw) for kw in reqs]

    t0 = time.perf_counter()
    await asyncio.gather(*(row(i, reqs) for i, reqs in requests.items()))
    seconds = time.perf_counter() - t0
    await client.close()
    return seconds, texts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--local-rows", type=int, default=64, help="rows for the local engine (0: skip it)")
    ap.add_argument("--url", help="a vLLM already serving the bundled model with the guidance backend")
    args = ap.parse_args()
    import torch

    import lmlang

    torch.set_num_threads(1)
    data = rows(args.rows)
    if args.url:
        served = f'server "{args.url}" {{ backend: guidance, concurrency: {args.concurrency}, timeout: 900 }}'
    else:
        served = (
            f'vllm default {{ concurrency: {args.concurrency}, timeout: 900, args: ["--no-enable-prefix-caching"] }}'
        )
    prog = lmlang.compile(SCRIPT.format(model=served))
    prog.batch_size = max(args.rows, 1)
    execu = prog._executor()
    engine = execu.engine_for(execu.c.spec(execu.query_ids["extract"]).model)
    t0 = time.perf_counter()
    dep, model = engine.target()
    start = getattr(dep.server, "start_seconds", None)
    server_start_s = round(start if start is not None else time.perf_counter() - t0, 1) if not args.url else None
    prog.run_batch(data[:4])  # warm-up: grammars compiled, connections open

    best_l, outputs, sent = None, None, None
    best_p = None
    for _ in range(2):
        s, o, r = run_lmlang(prog, data, engine)
        if best_l is None or s < best_l:
            best_l, outputs, sent = s, o, r
        s2, _texts = asyncio.run(replay(dep.url, model, sent, args.concurrency))
        best_p = s2 if best_p is None else min(best_p, s2)
    bad, ok = violations(outputs)

    local_rps = None
    if args.local_rows:
        local = lmlang.compile(SCRIPT.format(model="default"))
        local.batch_size = 16
        local.run_batch(data[:2])
        t0 = time.perf_counter()
        local.run_batch(data[: args.local_rows], errors="return")
        local_rps = args.local_rows / (time.perf_counter() - t0)

    n = len(data)
    result = {
        "rows": n,
        "concurrency": args.concurrency,
        "requests": sum(len(r) for r in sent.values()),
        "lmlang_rows_per_s": round(n / best_l, 3),
        "openai_rows_per_s": round(n / best_p, 3),
        "rows_per_s_ratio": round(best_p / best_l, 3),
        "violations": bad,
        "kinds_ok": [k for k, v in ok.items() if v == n],
        "server_start_s": server_start_s,
        "local_rows_per_s": round(local_rps, 3) if local_rps else None,
        "served_vs_local": round((n / best_l) / local_rps, 2) if local_rps else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(
        f"{n} rows, {result['requests']} requests, concurrency {args.concurrency}: lmlang "
        f"{result['lmlang_rows_per_s']} rows/s, plain openai client {result['openai_rows_per_s']} rows/s "
        f"(ratio {result['rows_per_s_ratio']}); violations {bad}; kinds ok {result['kinds_ok']}; "
        f"server start {server_start_s} s; local engine {result['local_rows_per_s']} rows/s"
    )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
