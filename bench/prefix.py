"""KV prefix reuse: 16 queries that share a ~300-token prefix (a system prompt
with a few-shot block; the figure printed is the exact shared length), run one after another with and without reuse, on the
bundled model.

    python bench/prefix.py [--json] [--queries 16]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHOTS = [
    ("The food was cold and the waiter ignored us.", "negative"),
    ("A wonderful evening, great wine!", "positive"),
    ("Service was slow but the dessert was superb.", "positive"),
    ("Overpriced and bland.", "negative"),
    ("I would come back tomorrow.", "positive"),
    ("The room smelled of smoke.", "negative"),
    ("Friendly staff and a cosy terrace.", "positive"),
    ("We waited an hour for a salad.", "negative"),
    ("Best pizza in town, hands down.", "positive"),
    ("The music was far too loud to talk.", "negative"),
    ("Fresh bread, lovely soup, kind owners.", "positive"),
    ("They forgot half of our order.", "negative"),
    ("The terrace had a beautiful view of the harbour at sunset.", "positive"),
    ("Our waiter was patient and explained every dish on the menu.", "positive"),
    ("The steak arrived grey and chewy, and nobody apologised.", "negative"),
    ("Prices were fair and the portions were more than generous.", "positive"),
    ("We found a hair in the salad and the manager just shrugged.", "negative"),
    ("The chocolate cake was rich, warm and worth the trip alone.", "positive"),
    ("Tables were sticky and the toilets had not been cleaned.", "negative"),
]
QUESTIONS = [
    "The pasta was perfect.",
    "Rude staff, never again.",
    "Nice view, average food.",
    "Cold coffee.",
    "Delicious and cheap!",
    "The table was dirty.",
    "Lovely garden seating.",
    "Way too salty.",
    "Quick and friendly service.",
    "Burnt toast and weak tea.",
    "A hidden gem.",
    "Noisy and cramped.",
    "Great cocktails.",
    "Slow kitchen.",
    "Generous portions.",
    "Stale croissants.",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--queries", type=int, default=16)
    args = ap.parse_args()
    import lmlang

    shots = "\\n".join(f"Review: {t}\\nLabel: {lab}" for t, lab in SHOTS)
    src = f'''model base = default
query label(text: str) using base {{
    system "You label restaurant reviews as positive or negative. Examples:\\n{shots}"
    user "Review: {{text}}"
    assistant "[l]"
    where l in ["positive", "negative"]
}}'''
    prog = lmlang.compile(src, cache=False)  # time decoding, not the result cache
    q = prog.queries["label"]
    q(text="warm-up")  # load, compile, first forward
    exe = prog._executor()
    lm = exe.lm(exe.c.spec(exe.query_ids["label"]).model)
    qs = (QUESTIONS * 4)[: args.queries]
    prefix_tokens = len(
        lm.encode(lm.tokenizer.apply_chat_template([{"role": "system", "content": "x"}], tokenize=False))
    )  # rough header size (reported below precisely)

    def run(reuse: bool) -> tuple[float, list]:
        lm.prefix_reuse = reuse
        lm.prefix_cache.clear()
        t0 = time.perf_counter()
        out = [q(text=t)["l"] for t in qs]
        return time.perf_counter() - t0, out

    t_off, out_off = run(False)
    t_on, out_on = run(True)
    rec = prog.trace.records[-1]
    shared = len(lm.encode(rec.prompt.split("Review: " + qs[-1])[0]))
    speedup = t_off / t_on
    print(
        f"{args.queries} queries, shared prefix ~{shared} tokens: without reuse {t_off:.2f} s, with reuse {t_on:.2f} s, "
        f"speedup x{speedup:.2f}; same answers: {out_off == out_on}"
    )
    del prefix_tokens
    if args.json:
        print(
            json.dumps(
                {
                    "speedup": round(speedup, 3),
                    "queries": args.queries,
                    "prefix_tokens": shared,
                    "seconds_without": round(t_off, 3),
                    "seconds_with": round(t_on, 3),
                    "same_answers": out_off == out_on,
                }
            )
        )


if __name__ == "__main__":
    main()
