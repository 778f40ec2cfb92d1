"""Start-up: what `lmlang run examples/hello.lm` costs beyond the work itself.

    python bench/startup.py [--json] [--reps 5]

`run_wall_s`: the median wall time of `lmlang run examples/hello.lm` as a
fresh process, warm (the converted model, the constraint caches and the
bytecode already on disk; one unmeasured run first makes sure of it).

`floor_s`: the median wall time of a fresh Python process that does only what
the answer needs: import torch and transformers, load the same converted model
folder, and decode the same number of tokens greedily with `generate` from the
same prompt (the chat template applied, as lmlang does). Nothing lmlang adds
(parsing, checking, the graph, constraint compilation) is in it.

`startup_ratio` = run_wall_s / floor_s (goal <= 1.3). Both processes run with
the same thread count (--threads, default 2) and HF offline. Run it on a quiet
machine: both sides are CPU-bound.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FLOOR = r"""
import sys, time, json
t0 = time.perf_counter()
import torch
torch.set_num_threads(int(sys.argv[3]))
from transformers import AutoModelForCausalLM, AutoTokenizer
path, n_new = sys.argv[1], int(sys.argv[2])
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
model.eval()
msgs = [{"role": "system", "content": "You answer geography questions with one city name."},
        {"role": "user", "content": "What is the capital of France?"}]
text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
ids = tok(text, return_tensors="pt").input_ids
with torch.no_grad():
    out = model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False)
print(json.dumps({"text": tok.decode(out[0, ids.shape[1]:]), "seconds": time.perf_counter() - t0}))
"""


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return wall, p.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from lmlang.models.loader import resolve_model

    folder = resolve_model("default")  # converts the bundled GGUF once if needed
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        LMLANG_THREADS=str(args.threads),
        TOKENIZERS_PARALLELISM="false",
    )
    lmlang_exe = str(Path(sys.executable).parent / "lmlang")
    run_cmd = [
        lmlang_exe,
        "run",
        "examples/hello.lm",
        "--json",
        "--trace",
        os.devnull,
        "--no-cache",
    ]  # the work itself, each time
    if not Path(lmlang_exe).exists():
        run_cmd = [sys.executable, "-m", "lmlang.cli", *run_cmd[1:]]

    # Warm-up (and the token count the floor must decode): one traced run.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        timed([str(trace) if a == os.devnull else a for a in run_cmd], env)  # the same run, its trace kept
        records = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
        n_tokens = max(1, sum(r.get("tokens_generated", 0) + r.get("tokens_forced", 0) for r in records))
    floor_cmd = [sys.executable, "-c", FLOOR, str(folder), str(n_tokens), str(args.threads)]
    timed(floor_cmd, env)

    runs, floors = [], []
    for _ in range(args.reps):  # interleaved: drift hits both sides alike
        runs.append(timed(run_cmd, env)[0])
        floors.append(timed(floor_cmd, env)[0])
    run_s, floor_s = statistics.median(runs), statistics.median(floors)
    summary = {
        "run_wall_s": round(run_s, 3),
        "floor_s": round(floor_s, 3),
        "startup_ratio": round(run_s / floor_s, 3),
        "tokens": n_tokens,
        "reps": args.reps,
        "threads": args.threads,
        "run_all_s": [round(x, 3) for x in runs],
        "floor_all_s": [round(x, 3) for x in floors],
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"lmlang run hello.lm {run_s:.2f} s   floor (torch+transformers, load, {n_tokens} tokens) "
            f"{floor_s:.2f} s   ratio x{run_s / floor_s:.2f}"
        )


if __name__ == "__main__":
    main()
