"""Past one process: Ray data runs, the result cache, parallel steps, mixed-adapter batches.

    python bench/scale.py [--json] [--rows 32] [--only parallel,mixed]

`--only` runs some of the parts: cache, ray, parallel (parallel steps and
cross-query batches), mixed (mixed-adapter batches), models (concurrent
models).

On the bundled model (CPU, fp32), it prints:

- `ray_rows_per_s_ratio`: rows/s of `lmlang run --data --ray ADDRESS --threads 1`
  (2 actors of 1 thread each, on a local 2-CPU Ray cluster started once by
  the bench, as a user's running cluster would be) over rows/s of
  `lmlang run --data --threads 2` (one process, 2 threads), the same rows,
  result cache off, each command timed whole (start, model load, rows).
- `cache_hit_speedup`: wall time of a first `lmlang run --data` over a second,
  identical one, whose every call the result cache answers (a fresh
  LMLANG_HOME/results; the converted model is linked in).
- `parallel_steps_speedup`: a flow with 4 independent calls per row (3
  queries on one model), parallel steps on over off, 8 rows in one chunk
  (`parallel_steps_speedup_one_row`: a single row, the same one again, so
  the prefix cache holds every call's prompt; `..._one_new_row`: a single
  row neither program has seen).
- `parallel_steps_generate_speedup` (`..._one_row`): the same shape with
  calls that write about 12 tokens of text each (FOUR_WRITES), where decode
  steps dominate instead of the prompts' prefill; the repeated rows are the
  same in both runs, so the prefix cache helps both alike.
- `cross_query_speedup`: with parallel steps on, calls of different queries
  on one model sharing a batch over one batch per query.
- `mixed_adapter_speedup`: 16 rows routed to 2 experts (trained LoRAs over
  the bundled model), one batch with row-indexed adapter deltas over one
  batch per expert.
- `concurrent_models_speedup`: calls on two different models (the bundled
  one and a merge of it) on two threads over one after the other.

The machine's load average is recorded next to the figures (`load`): on a
shared machine every figure moves with the other jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# The same short restaurant reviews as bench/prefix.py (a sibling script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from prefix import QUESTIONS as TEXTS  # noqa: E402

SUMS = [f"What is {a} + {b}?" for a, b in [(3, 4), (12, 9), (7, 8), (20, 15), (6, 6), (11, 30), (9, 14), (25, 25)]]

ONE_QUERY = '''model base = default
input text: str
query label(t: str) using base {
    user "Review: {t}\\nIs this review positive or negative?"
    assistant "[l]"
    where l in ["positive", "negative"]
}
query gist(t: str) using base {
    user "Summarise in three words: {t}"
    assistant "[g]"
    where g stops before "\\n" and tokens(g) <= 6
}
flow { emit label = label(text).l, gist = gist(text).g }
'''

FOUR_CALLS = '''model base = default
input text: str
query label(t: str) using base {
    user "Review: {t}\\nIs this review positive or negative?"
    assistant "[l]"
    where l in ["positive", "negative"]
}
query topic(t: str) using base {
    user "Review: {t}\\nWhat is it about: food, service or place?"
    assistant "[a]"
    where a in ["food", "service", "place"]
}
query stars(t: str) using base {
    user "Review: {t}\\nHow many stars out of 5?"
    assistant "[n]"
    where n is int and tokens(n) <= 2
}
flow {
    a = label(text)
    b = topic(text)
    c = stars(text)
    d = label(text + " (translated)")
    emit label = a.l, topic = b.a, stars = c.n, again = d.l
}
'''
# The same shape with calls that write text (about 12 tokens each) instead
# of picking one option: decode steps, not prompt prefill, dominate, which
# is where one batch for the row's calls saves the most.
FOUR_WRITES = '''model base = default
input text: str
query gist(t: str) using base {
    user "Review: {t}\\nSum up the review in a few words."
    assistant "[g]"
    where tokens(g) <= 12 and g matches r"[^\\n]+"
}
query reply(t: str) using base {
    user "Review: {t}\\nWrite a short reply from the owner."
    assistant "[r]"
    where tokens(r) <= 12 and r matches r"[^\\n]+"
}
query title(t: str) using base {
    user "Review: {t}\\nGive the review a title."
    assistant "[h]"
    where tokens(h) <= 12 and h matches r"[^\\n]+"
}
flow {
    a = gist(text)
    b = reply(text)
    c = title(text)
    d = gist(text + " (translated)")
    emit gist = a.g, reply = b.r, title = c.h, again = d.g
}
'''


EXPERTS = '''model base = default
adapter sentiment = train lora on "data/sentiment.jsonl" { base: base, rank: 8, alpha: 16, epochs: 3, lr: 0.001, seed: 0 }
adapter adding = train lora on "data/sums.jsonl" { base: base, rank: 8, alpha: 16, epochs: 3, lr: 0.001, seed: 0 }
model sentiment_expert = base + sentiment
model adding_expert = base + adding
model merged = merge ties {
    base: base
    models: { base + sentiment: 1.0, base + adding: 1.0 }
    density: 0.7
}
router r = route rules {
    adding_expert: contains ["What is"]
    default: sentiment_expert
}
query answer(q: str) using r(q) {
    user "{q}"
    assistant "[a]"
    where a stops before "\\n" and tokens(a) <= 6
}
query plain(q: str) using base {
    user "{q}"
    assistant "[a]"
    where a stops before "\\n" and tokens(a) <= 6
}
query merged_q(q: str) using merged {
    user "{q}"
    assistant "[a]"
    where a stops before "\\n" and tokens(a) <= 6
}
input q: str
flow { emit a = answer(q).a }
'''

TWO_MODELS_FLOW = "flow { emit a = plain(q).a, b = merged_q(q).a }\n"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def lmlang_cmd() -> list[str]:
    return [sys.executable, "-m", "lmlang.cli"]


def run_cli(args: list[str], env: dict | None = None) -> float:
    e = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    t0 = time.perf_counter()
    p = subprocess.run(lmlang_cmd() + args, capture_output=True, text=True, env=e, timeout=3600)
    if p.returncode != 0:
        raise SystemExit(f"lmlang {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    return time.perf_counter() - t0


def write_rows(path: Path, n: int, key: str = "text") -> Path:
    path.write_text(
        "".join(
            json.dumps({key: TEXTS[i % len(TEXTS)] + ("" if i < len(TEXTS) else f" ({i})")}) + "\n" for i in range(n)
        )
    )
    return path


# ---------------------------------------------------------------- in-process figures


def parallel_steps(rows: int) -> dict:
    import lmlang

    out = {}
    progs = {par: lmlang.compile(FOUR_CALLS, cache=False, parallel=par, batch_size=32) for par in (False, True)}
    data = [{"text": TEXTS[i % len(TEXTS)]} for i in range(rows)]
    for prog in progs.values():
        prog.run_batch(data[:2])  # load, compile constraints
    seq = min(timed(lambda: progs[False].run_batch(data)) for _ in range(2))
    par = min(timed(lambda: progs[True].run_batch(data)) for _ in range(2))
    out["parallel_steps_speedup"] = seq / par
    out["parallel_steps_seconds"] = {"sequential": round(seq, 2), "parallel": round(par, 2), "rows": rows}
    one_seq = min(timed(lambda: progs[False].run(text=TEXTS[1])) for _ in range(2))
    one_par = min(timed(lambda: progs[True].run(text=TEXTS[1])) for _ in range(2))
    out["parallel_steps_speedup_one_row"] = one_seq / one_par
    # A row neither program has seen (the repeated row above is one the
    # prefix cache holds whole): each timing a text of its own, new from
    # its first token on.
    new_seq = min(timed(lambda k=k: progs[False].run(text=f"({k}) {TEXTS[9]}")) for k in (1, 2))
    new_par = min(timed(lambda k=k: progs[True].run(text=f"({k}) {TEXTS[9]}")) for k in (3, 4))
    out["parallel_steps_speedup_one_new_row"] = new_seq / new_par
    out["parallel_steps_one_row_seconds"] = {
        "repeated": {"sequential": round(one_seq, 2), "parallel": round(one_par, 2)},
        "new": {"sequential": round(new_seq, 2), "parallel": round(new_par, 2)},
    }
    from lmlang.runtime.dispatch import Strategy

    progs[True]._executor().strategy = Strategy(queries="separate")
    separate = min(timed(lambda: progs[True].run_batch(data)) for _ in range(2))
    out["cross_query_speedup"] = separate / par
    out["cross_query_seconds"] = {"separate": round(separate, 2), "shared": round(par, 2)}
    writes = {par: lmlang.compile(FOUR_WRITES, cache=False, parallel=par, batch_size=32) for par in (False, True)}
    for prog in writes.values():
        prog.run_batch(data[:1])
    w = {}
    for n in (1, rows):
        w[n] = {par: min(timed(lambda p=par: writes[p].run_batch(data[:n])) for _ in range(2)) for par in (False, True)}
    out["parallel_steps_generate_speedup"] = w[rows][False] / w[rows][True]
    out["parallel_steps_generate_speedup_one_row"] = w[1][False] / w[1][True]
    out["parallel_steps_generate_seconds"] = {
        str(n): {"sequential": round(t[False], 2), "parallel": round(t[True], 2)} for n, t in w.items()
    }
    log(
        f"parallel steps: {rows} rows x 4 calls: sequential {seq:.2f} s, parallel {par:.2f} s "
        f"(x{seq / par:.2f}); one row x{one_seq / one_par:.2f} (a new row x{new_seq / new_par:.2f}); "
        f"queries in separate batches {separate:.2f} s; writing calls: {rows} rows "
        f"x{out['parallel_steps_generate_speedup']:.2f}, one row x{out['parallel_steps_generate_speedup_one_row']:.2f}"
    )
    return out


def mixed_adapters() -> dict:
    import lmlang
    from lmlang.runtime.dispatch import Strategy

    rows = [{"q": SUMS[i // 2] if i % 2 else TEXTS[i // 2]} for i in range(16)]
    times = {}
    for strategy in ("grouped", "mixed"):
        prog = lmlang.compile(EXPERTS, base_dir=REPO / "examples", cache=False, batch_size=32)
        prog._executor().strategy = Strategy(adapters=strategy)
        prog.run_batch(rows[:4])  # train (cached), load, warm up
        times[strategy] = min(timed(lambda: prog.run_batch(rows)) for _ in range(2))
    log(f"16 routed rows over 2 experts: grouped {times['grouped']:.2f} s, mixed {times['mixed']:.2f} s")
    return {
        "mixed_adapter_speedup": times["grouped"] / times["mixed"],
        "mixed_adapter_seconds": {k: round(v, 2) for k, v in times.items()},
    }


def concurrent_models() -> dict:
    import lmlang
    from lmlang.runtime.dispatch import Strategy

    src = EXPERTS.rsplit("flow", 1)[0] + TWO_MODELS_FLOW
    rows = [{"q": TEXTS[i]} for i in range(8)]
    times = {}
    for mode in ("sequential", "concurrent"):
        prog = lmlang.compile(src, base_dir=REPO / "examples", cache=False, batch_size=32)
        prog._executor().strategy = Strategy(models=mode)
        prog.run_batch(rows[:2])
        times[mode] = min(timed(lambda: prog.run_batch(rows)) for _ in range(2))
    log(
        f"two models, 8 rows: one after the other {times['sequential']:.2f} s, on two threads {times['concurrent']:.2f} s"
    )
    return {
        "concurrent_models_speedup": times["sequential"] / times["concurrent"],
        "concurrent_models_seconds": {k: round(v, 2) for k, v in times.items()},
    }


# ---------------------------------------------------------------- whole commands


def cache_hit(work: Path, rows: int) -> dict:
    from lmlang.home import lmlang_home

    home = work / "home"
    home.mkdir()
    (home / "models").symlink_to(lmlang_home() / "models")  # the converted model, not a second conversion
    script = work / "one.lm"
    script.write_text(ONE_QUERY)
    data = write_rows(work / "cache_rows.jsonl", rows)
    env = {"LMLANG_HOME": str(home), "LMLANG_CACHE": "1"}
    first = run_cli(["run", str(script), "--data", str(data), "--out", str(work / "c1.jsonl"), "--no-progress"], env)
    second = run_cli(["run", str(script), "--data", str(data), "--out", str(work / "c2.jsonl"), "--no-progress"], env)
    same = (work / "c1.jsonl").read_text() == (work / "c2.jsonl").read_text()
    log(
        f"result cache, {rows} rows: first run {first:.2f} s, second {second:.2f} s (x{first / second:.1f}; same output: {same})"
    )
    return {
        "cache_hit_speedup": first / second,
        "cache_hit_seconds": {"first": round(first, 2), "second": round(second, 2)},
        "cache_hit_same_output": same,
    }


def ray_ratio(work: Path, rows: int) -> dict:
    import ray

    script = work / "one.lm"
    script.write_text(ONE_QUERY)
    data = write_rows(work / "ray_rows.jsonl", rows)
    env = {"LMLANG_CACHE": "0"}
    local = run_cli(
        [
            "run",
            str(script),
            "--data",
            str(data),
            "--out",
            str(work / "local.jsonl"),
            "--no-progress",
            "--threads",
            "2",
            "--batch-size",
            "8",
        ],
        env,
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        address = ray.get_runtime_context().gcs_address
        dist = run_cli(
            [
                "run",
                str(script),
                "--data",
                str(data),
                "--out",
                str(work / "ray.jsonl"),
                "--no-progress",
                "--threads",
                "1",
                "--batch-size",
                "8",
                "--ray",
                address,
            ],
            env,
        )
    finally:
        ray.shutdown()
    key = lambda p: sorted(json.loads(x)["row"] for x in p.read_text().splitlines())  # noqa: E731
    same_rows = key(work / "local.jsonl") == key(work / "ray.jsonl") == list(range(rows))
    local_rate, ray_rate = rows / local, rows / dist
    log(
        f"{rows} rows: one process of 2 threads {local_rate:.2f} rows/s ({local:.1f} s), "
        f"Ray 2 actors x 1 thread {ray_rate:.2f} rows/s ({dist:.1f} s); every row once: {same_rows}"
    )
    return {
        "ray_rows_per_s_ratio": ray_rate / local_rate,
        "ray_rows_per_s": {"local_2_threads": round(local_rate, 3), "ray_2_actors": round(ray_rate, 3), "rows": rows},
        "ray_every_row_once": same_rows,
    }


PARTS = ("cache", "ray", "parallel", "mixed", "models")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rows", type=int, default=32, help="rows of the Ray and cache runs")
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: " + ", ".join(PARTS))
    args = ap.parse_args()
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(only) - set(PARTS))
    if unknown:
        ap.error(f"--only: unknown part(s) {', '.join(unknown)}; parts: {', '.join(PARTS)}")
    result = {"load_before": os.getloadavg(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="lmlang-scale-") as tmp:
        work = Path(tmp)
        if "cache" in only:
            result.update(cache_hit(work, args.rows))
        if "ray" in only:
            result.update(ray_ratio(work, args.rows))
    if "parallel" in only:
        result.update(parallel_steps(8))
    if "mixed" in only:
        result.update(mixed_adapters())
    if "models" in only:
        result.update(concurrent_models())
    result["load_after"] = os.getloadavg()
    if args.json:
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()}))


if __name__ == "__main__":
    main()
