"""Batching: 64 input rows through one query, batched (run_batch: rows share
forward passes, left-padded, finishing independently) vs one by one, on the
bundled model.

    python bench/batch.py [--json] [--rows 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TOPICS = [
    "the sea",
    "a lost key",
    "autumn",
    "a robot",
    "coffee",
    "the moon",
    "a library",
    "trains",
    "snow",
    "a garden",
    "a violin",
    "the desert",
    "a lighthouse",
    "bread",
    "a clock",
    "rain",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    import lmlang

    src = '''model base = default
input topic: str
query line(t: str) using base {
    user "Write one short sentence about {t}."
    assistant "[s]"
    where s stops before "\\n" and tokens(s) <= 16
}
flow { r = line(topic) emit s = r.s }'''
    prog = lmlang.compile(src, cache=False)  # time decoding, not the result cache
    prog.run(topic="warm-up")
    prog._executor().batch_size = args.batch_size
    rows = [{"topic": TOPICS[i % len(TOPICS)] + ("" if i < len(TOPICS) else f" ({i})")} for i in range(args.rows)]
    t0 = time.perf_counter()
    single = [prog.run(**r) for r in rows]
    t_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = prog.run_batch(rows)
    t_batch = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(single, batched))
    speedup = t_single / t_batch
    print(
        f"{args.rows} rows: one by one {t_single:.1f} s, batched (size {args.batch_size}) {t_batch:.1f} s, "
        f"speedup x{speedup:.2f}; identical outputs {same}/{args.rows}"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "speedup": round(speedup, 3),
                    "rows": args.rows,
                    "seconds_single": round(t_single, 2),
                    "seconds_batched": round(t_batch, 2),
                    "identical": same,
                }
            )
        )


if __name__ == "__main__":
    main()
