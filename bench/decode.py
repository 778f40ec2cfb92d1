"""Constrained decoding, side by side, on the bundled model (SmolLM2-135M-Instruct):
lmlang vs plain transformers greedy `generate` (same prompt, same number of
new tokens) vs outlines' own Generator (same constraint).

    python bench/decode.py [--json] [--reps 3]

Figures are tokens per second of the constrained value (lmlang counts
fast-forwarded tokens too: that is the point of fast-forward). Each figure is
the median of --reps calls after one warm-up call; outlines' first call is
reported separately because it pays its index compilation there.

The memory-bandwidth bound: at batch 1 every token reads every weight once,
so no decoder beats (machine bandwidth) / (weight bytes) tokens per second.
The bandwidth is the best of a few large-array copies with torch (bytes read
plus bytes written, per second: a copy is what the bus sustains); the weight
bytes are the model's tensors as loaded (a tied embedding counted once, as the
output head; int8 layers at one byte a weight). `bound_tok_s` is that bound and
`fraction_of_bound` each decoder's tokens/s over it (lmlang above 1 means
fast-forward fed tokens the model never had to choose).

    python bench/decode.py --dtype int8      # or bfloat16, float32 (default)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SYSTEM = "You are a precise assistant. Answer in the requested format only."
PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "city": {"type": "string", "maxLength": 24},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
ARITH = 'start: expr\nexpr: NUMBER (OP NUMBER)*\nOP: " + " | " - " | " * "\nNUMBER: /[0-9]{1,3}/\n'

KINDS = {
    "choice": (
        "Is this review positive or negative? Review: The film was a delight from start to finish.",
        'where v in ["positive", "negative", "mixed"]',
    ),
    "regex": ("Write a phone number for the office, in the form 555-1234.", 'where v matches r"[0-9]{3}-[0-9]{4}"'),
    "json": ("Extract the person as JSON: Ada Lovelace, 36, lives in London.", "where v is json \"person.json\""),
    "grammar": ("Write an arithmetic expression whose value is 10, like 4 + 6.", "where v is grammar \"arith.lark\""),
}


def median_time(fn, reps: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--no-outlines", action="store_true")
    ap.add_argument("--dtype", default="float32", help="float32, bfloat16 or int8 (both sides run the same weights)")
    args = ap.parse_args()

    import tempfile

    import torch
    from transformers.utils import logging as hf_logging

    import lmlang
    from lmlang.models.loader import load_model, resolve_model

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    work = Path(tempfile.mkdtemp(prefix="lmlang-bench-"))
    (work / "person.json").write_text(json.dumps(PERSON_SCHEMA))
    (work / "arith.lark").write_text(ARITH)
    kinds = args.kinds.split(",")
    source = "model base = default\n" + "\n".join(
        f'query q_{k}(x: str) using base {{\n  system "{SYSTEM}"\n  user "{{x}}"\n  assistant "[v]"\n  {KINDS[k][1]}\n}}'
        for k in kinds
    )
    # time decoding, not the cache
    prog = lmlang.compile(source, str(work / "bench.lm"), base_dir=work, cache=False, dtype=args.dtype)
    loaded = load_model(resolve_model("default"), dtype=args.dtype)
    model, tok = loaded.model, loaded.tokenizer
    bandwidth = copy_bandwidth()
    weights = weight_bytes(model)
    bound = bandwidth / weights
    results = {}
    for kind in kinds:
        prompt_text, _ = KINDS[kind]
        q = prog.queries[f"q_{kind}"]
        q(x=prompt_text)  # warm-up: constraint compile, caches
        trace = prog.trace.records
        wall, out = median_time(lambda: q(x=prompt_text), args.reps)
        rec = trace[-1]
        n_tokens = rec.tokens_generated + rec.tokens_forced
        lm_tps = n_tokens / wall
        # transformers greedy generate on the same rendered prompt, same new-token count.
        chat = tok.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt_text}],
            tokenize=False,
            add_generation_prompt=True,
        )
        ids = tok(chat, return_tensors="pt", add_special_tokens=False).input_ids

        def gen(ids=ids, n_tokens=n_tokens):
            return model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n_tokens,
                min_new_tokens=n_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )

        gen()
        hf_wall, _ = median_time(gen, args.reps)
        hf_tps = n_tokens / hf_wall
        row = {
            "value": out["v"],
            "tokens": n_tokens,
            "forced": rec.tokens_forced,
            "forward_passes": rec.forward_passes,
            "lmlang_s": round(wall, 4),
            "lmlang_tok_s": round(lm_tps, 2),
            "hf_s": round(hf_wall, 4),
            "hf_tok_s": round(hf_tps, 2),
            "ratio_vs_hf": round(lm_tps / hf_tps, 3),
            "fraction_of_bound": round(lm_tps / bound, 3),
            "hf_fraction_of_bound": round(hf_tps / bound, 3),
        }
        if not args.no_outlines:
            row.update(bench_outlines(kind, model, tok, chat, n_tokens, args.reps, lm_tps))
        results[kind] = row
        print(
            f"{kind:8s} value={json.dumps(out['v'])[:60]:60s} tokens={n_tokens:3d} (forced {rec.tokens_forced:2d}) "
            f"lmlang {lm_tps:6.1f} tok/s  hf {hf_tps:6.1f} tok/s  x{row['ratio_vs_hf']:.2f}"
            + (
                f"  outlines {row['outlines_tok_s']:6.1f} tok/s (first call {row['outlines_first_s']:.2f} s)  x{row['ratio_vs_outlines']:.2f}"
                if "outlines_tok_s" in row
                else ""
            ),
            flush=True,
        )
    ratio_min = min(r["ratio_vs_hf"] for r in results.values())
    print(
        f"bound: {bandwidth / 1e9:.1f} GB/s over {weights / 1e6:.0f} MB of weights = {bound:.1f} tok/s; "
        f"lowest ratio vs generate x{ratio_min:.2f}",
        flush=True,
    )
    summary = {
        "dtype": args.dtype,
        "ratio_vs_hf": ratio_min,
        "ratio_vs_hf_min": ratio_min,
        "bandwidth_gb_s": round(bandwidth / 1e9, 2),
        "weight_mb": round(weights / 1e6, 1),
        "bound_tok_s": round(bound, 2),
        "fraction_of_bound": {
            "lmlang": round(statistics.median(r["fraction_of_bound"] for r in results.values()), 3),
            "generate": round(statistics.median(r["hf_fraction_of_bound"] for r in results.values()), 3),
        },
        "ratio_vs_outlines": min(
            (r["ratio_vs_outlines"] for r in results.values() if "ratio_vs_outlines" in r), default=None
        ),
        "kinds": results,
    }
    if args.json:
        print(json.dumps(summary))


def copy_bandwidth(mb: int = 256, reps: int = 5) -> float:
    """Bytes per second a large tensor copy moves (read + write), best of reps:
    arrays far beyond the caches, so this is the memory bus."""
    import torch

    src = torch.ones(mb * (1 << 20) // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best


def weight_bytes(model) -> int:
    """Bytes of weights one token reads: every tensor once (a tied output
    head shares the embedding's storage and counts once), dynamically
    quantized Linear layers by their packed int8 weights. An input embedding
    counts only through a head tied to it: a token reads one of its rows."""
    import torch

    seen: set[int] = set()
    kept = []  # unpacked int8 weights are new tensors: keep them alive so no address is reused
    total = 0

    def add(t) -> None:
        nonlocal total
        if t is None or t.data_ptr() in seen:
            return
        seen.add(t.data_ptr())
        kept.append(t)
        total += t.numel() * t.element_size()

    for m in model.modules():
        if isinstance(m, torch.ao.nn.quantized.dynamic.Linear):
            w, b = m._packed_params._weight_bias()
            add(w)
            add(b)
        if isinstance(m, torch.nn.Embedding):
            continue
        for p in m.parameters(recurse=False):
            add(p)
    return total


def bench_outlines(kind, model, tok, chat, n_tokens, reps, lm_tps) -> dict:
    try:
        import outlines
        from outlines.types import CFG, JsonSchema, Regex
    except Exception as e:  # pragma: no cover - outlines is a dependency
        return {"outlines_error": str(e)}
    from typing import Literal

    types = {
        "choice": Literal["positive", "negative", "mixed"],
        "regex": Regex(r"[0-9]{3}-[0-9]{4}"),
        "json": JsonSchema(json.dumps(PERSON_SCHEMA)),
        "grammar": CFG(ARITH),
    }
    try:
        om = outlines.from_transformers(model, tok)
        t0 = time.perf_counter()
        generator = outlines.Generator(om, types[kind])
        text = generator(chat, max_new_tokens=max(n_tokens * 2, 16))
        first = time.perf_counter() - t0
        wall, text = median_time(lambda: generator(chat, max_new_tokens=max(n_tokens * 2, 16)), reps)
    except Exception as e:
        return {"outlines_error": f"{type(e).__name__}: {e}"[:200]}
    n = len(tok(text, add_special_tokens=False).input_ids)
    tps = n / wall
    return {
        "outlines_value": text[:80],
        "outlines_tokens": n,
        "outlines_s": round(wall, 4),
        "outlines_tok_s": round(tps, 2),
        "outlines_first_s": round(first, 3),
        "ratio_vs_outlines": round(lm_tps / tps, 3),
    }


if __name__ == "__main__":
    main()
