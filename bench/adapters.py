"""Per-row adapter stacks: one mixed forward vs one forward per group of rows.

    python bench/adapters.py [--json] [--model default|PATH] [--rows 16] [--adapters 2]
    python bench/adapters.py --train [--json] [--retrain]      # LoRA training on a toy task

The first form times, on the bundled model (CPU, fp32), a batch whose rows use
different LoRA adapters (row i -> adapter i % K, random r=8 q/v adapters):
lmlang's hooks with the "mixed" strategy (one forward, row-indexed deltas) and
the "grouped" one (a forward per adapter), next to PEFT's injected layers with
`adapter_names` (mixed) and `set_adapter` per group, for a prefill forward and
for greedy generation. Ratios are against lmlang mixed.

The second form trains a LoRA (r=8, q/v) on 100 "sentiment: ..." rows and
reports seconds per step, total time and held-out accuracy before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "What is 12 * 7?",
    "Translate 'good morning' to Spanish.",
    "List three colors.",
    "Explain gravity in one sentence.",
    "Who wrote Hamlet?",
    "Give me a synonym for happy.",
    "Name a planet.",
    "How many legs does a spider have?",
    "Say hello.",
    "What is the opposite of cold?",
    "Describe a cat in five words.",
    "Is the sun a star?",
    "Count from one to five.",
    "What color is the sky on a clear day?",
]


def load(spec: str):
    from lmlang.models.loader import load_model, resolve_model

    return load_model(resolve_model(spec), device="cpu", dtype="float32")


def random_loras(model_dir: Path, out: Path, k: int, rank: int = 8) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for i in range(k):
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        torch.manual_seed(i)
        peft_model = get_peft_model(
            base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        )
        for name, p in peft_model.named_parameters():  # keep the model sane: small deltas
            if "lora_B" in name:
                p.data.mul_(0.01)
        paths.append(out / f"lora{i}")
        peft_model.save_pretrained(paths[-1], safe_serialization=True)
    return paths


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def interleaved(fns: dict, repeat: int) -> dict[str, float]:
    """Median seconds per case, cases alternating round by round so that a
    machine whose load drifts (shared CPUs) skews them alike."""
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()  # warm-up
        _log(f"warm-up {name}: {time.perf_counter() - start:.2f} s")
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        _log(f"round {round_ + 1}/{repeat}: " + ", ".join(f"{n} {t[-1]:.2f}" for n, t in times.items()))
    return {name: statistics.median(t) for name, t in times.items()}


def bench_rows(args) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lmlang.models.adapters import AdapterHost

    torch.manual_seed(0)
    loaded = load(args.model)
    tok = loaded.tokenizer
    tok.padding_side = "left"
    work = Path(tempfile.mkdtemp(prefix="lmlang-bench-adapters-"))
    try:
        paths = random_loras(loaded.path, work, args.adapters)
        names = [f"a{i}" for i in range(args.adapters)]
        host = AdapterHost.for_model(loaded)
        for name, path in zip(names, paths):
            host.add(name, path)
        peft_base = AutoModelForCausalLM.from_pretrained(loaded.path, dtype=torch.float32).eval()
        peft_model = PeftModel.from_pretrained(peft_base, paths[0], adapter_name=names[0])
        for name, path in zip(names[1:], paths[1:]):
            peft_model.load_adapter(path, adapter_name=name)
        peft_model.eval()

        texts = [
            tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            for p in (PROMPTS * (args.rows // len(PROMPTS) + 1))[: args.rows]
        ]
        batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        row_names = [names[i % args.adapters] for i in range(args.rows)]
        stacks = [((n, 1.0),) for n in row_names]
        groups = host.group_rows(stacks)
        gen = dict(max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)

        def sub(rows):
            index = torch.tensor(rows)
            return {k: v.index_select(0, index) for k, v in batch.items()}

        def ours_mixed_forward():
            with torch.no_grad():
                return host.forward_rows(stacks, strategy="mixed", **batch)

        def ours_grouped_forward():
            with torch.no_grad():
                return host.forward_rows(stacks, strategy="grouped", **batch)

        def peft_mixed_forward():
            with torch.no_grad():
                return peft_model(**batch, adapter_names=row_names).logits

        def peft_grouped_forward():
            with torch.no_grad():
                for stack, rows in groups:
                    peft_model.set_adapter(stack[0][0])
                    peft_model(**sub(rows))

        def base_forward():
            with torch.no_grad(), host.activate(()):
                loaded.model(**batch)

        def ours_mixed_generate():
            with torch.no_grad(), host.activate_rows(stacks):
                return loaded.model.generate(**batch, **gen)

        def ours_grouped_generate():
            with torch.no_grad():
                for stack, rows in groups:
                    with host.activate(stack):
                        loaded.model.generate(**sub(rows), **gen)

        def peft_mixed_generate():
            with torch.no_grad():
                return peft_model.generate(**batch, adapter_names=row_names, **gen)

        def peft_grouped_generate():
            with torch.no_grad():
                for stack, rows in groups:
                    peft_model.set_adapter(stack[0][0])
                    peft_model.generate(**sub(rows), **gen)

        def base_generate():
            with torch.no_grad(), host.activate(()):
                loaded.model.generate(**batch, **gen)

        # the strategies must agree before their timings mean anything
        a, b, c = ours_mixed_forward(), ours_grouped_forward(), peft_mixed_forward()
        last = batch["attention_mask"].bool()
        agree = {
            "ours_mixed_vs_grouped": float((a - b)[last].abs().max()),
            "ours_mixed_vs_peft": float((a - c)[last].abs().max()),
        }

        cases = {
            "forward": {
                "lmlang mixed": ours_mixed_forward,
                "lmlang grouped": ours_grouped_forward,
                "peft adapter_names": peft_mixed_forward,
                "peft set_adapter groups": peft_grouped_forward,
                "base (no adapter)": base_forward,
            },
            "generate": {
                "lmlang mixed": ours_mixed_generate,
                "lmlang grouped": ours_grouped_generate,
                "peft adapter_names": peft_mixed_generate,
                "peft set_adapter groups": peft_grouped_generate,
                "base (no adapter)": base_generate,
            },
        }
        results = {phase: interleaved(fns, args.repeat) for phase, fns in cases.items()}

        def switch():
            with host.activate(((names[0], 0.8),)):
                pass

        switch_us = interleaved({"switch": lambda: [switch() for _ in range(1000)]}, 3)["switch"] / 1000 * 1e6
        return {
            "model": str(loaded.path),
            "rows": args.rows,
            "adapters": args.adapters,
            "prompt_tokens": int(batch["input_ids"].shape[1]),
            "new_tokens": args.new_tokens,
            "threads": torch.get_num_threads(),
            "max_abs_diff": agree,
            "switch_us": switch_us,
            "seconds": results,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- training

POS = [
    "wonderful",
    "excellent",
    "great",
    "delightful",
    "superb",
    "fantastic",
    "lovely",
    "brilliant",
    "amazing",
    "charming",
]
NEG = ["awful", "terrible", "boring", "dreadful", "horrible", "disappointing", "bad", "dull", "miserable", "painful"]
NOUNS = ["film", "meal", "service", "book", "hotel", "concert", "game", "phone", "trip", "show", "class", "coffee"]
FRAMES = [
    "The {n} was {a}.",
    "What a {a} {n}!",
    "I found the {n} {a}.",
    "Honestly, a {a} {n}.",
    "Our {n} turned out {a}.",
]


def sentiment_rows(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        text = rng.choice(FRAMES).format(n=rng.choice(NOUNS), a=rng.choice(POS if positive else NEG))
        rows.append({"prompt": f"sentiment: {text}", "completion": "positive" if positive else "negative"})
    return rows


def accuracy(loaded, rows, host=None, stack=()) -> float:
    import torch

    tok = loaded.tokenizer
    tok.padding_side = "left"
    texts = [
        tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True, tokenize=False)
        for r in rows
    ]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad(), host.activate(stack) if host else _null():
        out = loaded.model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    answers = tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return sum(a.strip().lower().startswith(r["completion"]) for a, r in zip(answers, rows)) / len(rows)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def bench_train(args) -> dict:
    import torch

    from lmlang.models.adapters import AdapterHost
    from lmlang.models.training import adapter_cache_key, base_content_key, normalize_options, train_lora

    loaded = load(args.model)
    work = Path(tempfile.mkdtemp(prefix="lmlang-bench-train-"))
    try:
        data = work / "sentiment.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(0, 100)), encoding="utf-8")
        held_out = sentiment_rows(1, 40)
        options = {"rank": 8, "target_modules": ["q_proj", "v_proj"], "epochs": args.epochs}
        if args.lr:
            options["lr"] = args.lr
        if args.retrain:
            from lmlang.home import cache_dir

            key = adapter_cache_key(base_content_key(loaded.path), data.read_bytes(), normalize_options(options))
            shutil.rmtree(cache_dir("adapters") / key, ignore_errors=True)
        before = accuracy(loaded, held_out)
        result = train_lora(loaded.path, data, options, progress=not args.json)
        meta = json.loads((result.path / "lmlang_adapter.json").read_text())
        host = AdapterHost.for_model(loaded)
        host.add("sentiment", result.path)
        after = accuracy(loaded, held_out, host, (("sentiment", 1.0),))
        return {
            "model": str(loaded.path),
            "rows": 100,
            "held_out": len(held_out),
            "options": meta["options"],
            "cached": result.cached,
            "steps": meta["steps"],
            "train_seconds": meta["seconds"],
            "seconds_per_step": meta["seconds"] / max(1, meta["steps"]),
            "epoch_losses": meta["epoch_losses"],
            "accuracy_before": before,
            "accuracy_after": after,
            "threads": torch.get_num_threads(),
            "adapter": str(result.path),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--model", default="default")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--train", action="store_true", help="time LoRA training on a toy sentiment task instead")
    parser.add_argument("--retrain", action="store_true", help="with --train: ignore a cached adapter")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = bench_train(args) if args.train else bench_rows(args)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    if args.train:
        print(
            f"LoRA r={report['options']['rank']} {'/'.join(report['options']['target_modules'])} on {report['rows']} rows, "
            f"{report['steps']} steps: {report['seconds_per_step']:.2f} s/step, {report['train_seconds']:.1f} s total"
            f"{' (cached run)' if report['cached'] else ''}"
        )
        print(f"epoch losses: {', '.join(f'{x:.3f}' for x in report['epoch_losses'])}")
        print(
            f"held-out accuracy ({report['held_out']} rows): {report['accuracy_before']:.2f} -> {report['accuracy_after']:.2f}"
        )
        return 0
    print(
        f"{report['rows']} rows, {report['adapters']} adapters, {report['prompt_tokens']} prompt tokens, "
        f"{report['new_tokens']} new tokens, {report['threads']} threads"
    )
    for phase, rows in report["seconds"].items():
        ref = rows["lmlang mixed"]
        print(f"\n{phase}:")
        for name, seconds in rows.items():
            print(f"  {name:26s} {seconds * 1000:9.1f} ms   x{seconds / ref:.2f}")
    print(f"\nactivate() switch: {report['switch_us']:.1f} us; max |logit diff| {report['max_abs_diff']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
