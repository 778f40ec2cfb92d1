"""The specialization lifecycle (#16) on the specialization tasks, all through lmlang scripts.

    python bench/lifecycle.py [--json] [--reduced] [--out TABLE.md|TABLE.json]
                              [--only KEY,...] [--workdir DIR] [--threads N] [--vllm auto|off]

The three seeded toy tasks of bench/specialize/spec_tasks.py (sentiment,
arithmetic, dates) on the bundled SmolLM2-135M-Instruct. Every measurement is
one generated .lm script (kept in the work folder, so a number can be
rerun by hand with `lmlang eval FILE.lm`); adapters are trained by the
scripts' `train` statements and cached by content under LMLANG_HOME/adapters,
so a rerun skips training. Keys of the JSON report:

- synthetic_gain: per task, the accuracy of an adapter trained ONLY on rows
  that `data synth = generate using base from unlabeled { ... where output ... }`
  made from the task's unlabeled inputs, minus the base's accuracy; both are
  prompted exactly as the generation prompted the base (its instruction, a
  blank line, the input), under the task's constraint.
- select_gain: an adapter on the K rows `select K from pool like target by gzip`
  picks (pool: the training rows of all three tasks mixed; target: a few
  rows of one task) minus an adapter on K random pool rows (same K, seed and
  options), accuracy on that task; `select_precision` is the share of the
  picked rows that belong to the task.
- dora_vs_lora: accuracy and training seconds of `train dora` and `train
  lora` with the same options on one task.
- flip_rate_ratio: the negative flip rate (rows the OLD adapter gets right
  and the update gets wrong, over the rows; lmlang.compare, as `lmlang
  compare --swap` runs it) of an update trained with `compatible_with: OLD,
  flip_weight: w` over the same update trained without; both accuracies are
  reported (the goal is <= 0.7 at accuracies within 0.02).
- export_parity: the `export`ed PEFT folder, loaded with transformers+PEFT,
  decodes greedily what lmlang decodes with the adapter; and, when the vLLM
  venv is in LMLANG_HOME/venvs (and --vllm is not off), the same folder served
  by vLLM as a LoRA module (`model base = vllm default` + `lora "folder"`).

--reduced runs a tiny version for CI (a dozen training rows, 1 epoch, a few
held-out rows). --threads 1 helps a lot on a machine shared with other jobs.
Data and scripts live under LMLANG_HOME/bench/lifecycle/<full|reduced>.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE / "specialize"))

import spec_tasks as T  # noqa: E402

# Sized for a 2-core CPU shared with other jobs (there one training row pass
# took ~6 s under load: an adapter on 16 rows x 2 epochs ~3 min); the
# adapters are cached by content, so a rerun only evaluates. dora_vs_lora's
# LoRA and the flip bench's update without compatible_with are one adapter
# (same task, rows and options), trained once.
FULL = dict(
    n_train=16,  # training rows per task (select: the pool holds this many per task, K is this)
    n_test=20,  # held-out rows per task
    n_unlabeled=24,  # unlabeled inputs the generation labels, per task
    vote_tasks=("dates", "arithmetic"),  # synthetic_gain again with the generation's vote filter, on these tasks
    vote=5,  # samples per unlabeled input
    agree=3,  # of them give the kept answer
    agree_by_task={"arithmetic": 5},  # the model is often unanimous on a wrong sum: only 5 of 5 filters there
    vote_unlabeled=72,  # the vote's unlabeled inputs (the first n_unlabeled are the plain generation's)
    # SELF-GUIDE's seed examples: on these tasks the generation shows `shots`
    # labelled rows (demos_TASK.jsonl: none of them a held-out or unlabeled
    # input) as worked examples, `generate { demos, shots }`; the base is
    # then scored with that few-shot prompt too (base_demos), the stronger base.
    demo_tasks=("arithmetic",),
    shots=4,
    n_target=5,  # target rows of the selection
    epochs=2,
    lr=2e-3,
    rank=8,
    select_task="dates",
    dora_task="dates",
    # The flip bench (MUSCLE): OLD is a specialist (flip_old rows of flip_task,
    # flip_old_epochs); the update trains from the base on other data, flip_new
    # other rows of the task (another seed) mixed with flip_mix rows of
    # flip_mix_task, so it can break rows OLD gets right; once plain and once
    # per flip weight with compatible_with: base + old_a.
    flip_task="dates",
    flip_old=64,
    flip_old_epochs=3,
    flip_new=16,
    flip_mix_task="arithmetic",
    flip_mix=16,
    flip_test=48,  # held-out rows the flips are counted on
    flip_weights=(0.3, 1.0, 3.0),
    parity_rows=8,
    parity_tokens=12,
)
REDUCED = dict(
    FULL,
    n_train=12,
    n_test=4,
    n_unlabeled=8,
    n_target=2,
    epochs=1,
    flip_task="arithmetic",
    flip_old=6,
    flip_old_epochs=1,
    flip_new=4,
    flip_mix_task="sentiment",
    flip_mix=2,
    flip_test=6,
    flip_weights=(1.0,),
    vote_tasks=("dates",),
    agree_by_task={},
    vote=3,
    agree=2,
    vote_unlabeled=8,
    parity_rows=2,
    parity_tokens=6,
)
INSTRUCTION = "Answer with the answer only."  # the generation's instruction (and its evaluation prompt)
KEYS = ("synthetic_gain", "select_gain", "dora_vs_lora", "flip_rate_ratio", "export_parity")


def lm_str(s: str) -> str:
    """A double-quoted lmlang string literal (JSON escapes are a subset)."""
    return json.dumps(s, ensure_ascii=False)


def constraint(task: str, hole: str) -> str:
    """The task's where clause (spec_tasks writes it on `y`) on another hole."""
    return re.sub(r"\by\b", hole, T.CONSTRAINTS[task])


def train_opts(cfg: dict, extra: str = "", epochs: int | None = None) -> str:
    body = f"base: base, rank: {cfg['rank']}, epochs: {epochs or cfg['epochs']}, lr: {cfg['lr']}, seed: 0"
    return "{ " + body + (", " + extra if extra else "") + " }"


def query(name: str, model: str, task: str, prompt: str = "{x}") -> str:
    return (
        f"query {name}(x: str) using {model} {{\n    user {lm_str(prompt)}\n"
        f'    assistant "[y]"\n    where {constraint(task, "y")}\n}}\n'
    )


def evals(names: list[str]) -> str:
    return "".join(f"eval {n}_acc = exact_match(q_{n}, tests, expected: y)\n" for n in names)


# ---------------------------------------------------------------- scripts


def demo_query(cfg: dict, task: str) -> str:
    """The base prompted exactly as the generation with demos prompts it:
    plain text, the instruction, the worked examples, the input, `Answer: `."""
    from lmlang.lifecycle.generate import pick_rows
    from lmlang.lifecycle.tables import demo_text

    rows = [json.loads(x) for x in demo_rows(task, cfg)]
    shown = demo_text(pick_rows(rows, cfg["shots"], 0))
    # (the demonstrations hold no `{` or `[`, which a prompt string would read as a value or a hole)
    prompt = lm_str(f"{INSTRUCTION}\n\n{shown}{{x}}\nAnswer: [y]\n")
    return f"query q_base_demos(x: str) using base {{\n    {prompt}\n    where {constraint(task, 'y')}\n}}\n"


def unlabeled_rows(task: str, cfg: dict, n: int) -> list[dict]:
    """The first n rows of the task's seed-2 draw whose input is not a
    held-out input: the generation never labels a question the bench scores
    (one-digit arithmetic has only 155 distinct questions, so draws of
    different seeds overlap). Prefix-stable: the n_unlabeled rows are the
    first of the vote_unlabeled ones."""
    held_out = {r["x"] for r in T.make_split(task, cfg["n_train"], cfg["n_test"], seed=0)[1]}
    draw = T.make_split(task, n + len(held_out), 0, seed=2)[0]
    return [r for r in draw if r["x"] not in held_out][:n]


def demo_rows(task: str, cfg: dict) -> list[str]:
    """The demonstrations of a task as JSONL lines: `shots` labelled rows of
    another seed, none of them a held-out or an unlabeled input."""
    train, test = T.make_split(task, cfg["n_train"], cfg["n_test"], seed=0)  # write_task_files' split
    taken = {r["x"] for r in train + test}
    taken |= {r["x"] for r in unlabeled_rows(task, cfg, cfg["vote_unlabeled"])}
    cands = [r for r in T.make_split(task, 120, 0, seed=3)[0] if r["x"] not in taken]
    return [json.dumps({"prompt": r["x"], "completion": r["y"]}) for r in cands[: cfg["shots"]]]


def agree_of(cfg: dict, task: str) -> int:
    return cfg.get("agree_by_task", {}).get(task, cfg["agree"])


def synthetic_script(cfg: dict, task: str, vote: bool = False, more: bool = False) -> str:
    """With `vote`, the generation keeps only the rows `agree` of its `vote`
    samples agree on (SELF-GUIDE's filter of the generated rows), from the
    `vote_unlabeled` inputs; `more` labels those inputs without the filter
    (the control: the same inputs, every row kept). On a demo task the
    generation shows the task's demonstrations and the base is scored with
    that prompt too (q_base_demos)."""
    prompt = INSTRUCTION + "\n\n{x}"
    filt = f", vote: {cfg['vote']}, agree: {agree_of(cfg, task)}" if vote else ""
    demos = task in cfg["demo_tasks"]
    if demos:
        filt += f', demos: "demos_{task}.jsonl", shots: {cfg["shots"]}'
    more = more or vote
    return (
        "# generated by bench/lifecycle.py: do not edit\nmodel base = default\n"
        f'data unlabeled = "unlabeled_{task}{"_more" if more else ""}.jsonl"\ndata tests = "test_{task}.jsonl"\n'
        f"data synth = generate using base from unlabeled {{\n"
        f"    instruction: {lm_str(INSTRUCTION)}, n: {cfg['vote_unlabeled' if more else 'n_unlabeled']}, seed: 0{filt}\n"
        f"    where {constraint(task, 'output')}\n}}\n"
        f"adapter synth_a = train lora on synth {train_opts(cfg)}\nmodel tuned = base + synth_a\n\n"
        + query("q_base", "base", task, prompt)
        + query("q_tuned", "tuned", task, prompt)
        + (demo_query(cfg, task) if demos else "")
        + evals(["base", "tuned"] + (["base_demos"] if demos else []))
    )


def select_script(cfg: dict, task: str) -> str:
    k = cfg["n_train"]
    return (
        "# generated by bench/lifecycle.py: do not edit\nmodel base = default\n"
        f'data pool = "pool.jsonl"\ndata target = "target_{task}.jsonl"\ndata tests = "test_{task}.jsonl"\n'
        f"data picked = select {k} from pool like target by gzip\n"
        f"adapter sel_a = train lora on picked {train_opts(cfg)}\n"
        f'adapter rnd_a = train lora on "random_{k}.jsonl" {train_opts(cfg)}\n'
        "model sel = base + sel_a\nmodel rnd = base + rnd_a\n\n"
        + query("q_base", "base", task)
        + query("q_sel", "sel", task)
        + query("q_rnd", "rnd", task)
        + evals(["base", "sel", "rnd"])
    )


def dora_script(cfg: dict, task: str) -> str:
    data = f'"train_{task}.jsonl"'
    return (
        "# generated by bench/lifecycle.py: do not edit\ninput x: str\nmodel base = default\n"
        f'data tests = "test_{task}.jsonl"\n'
        f"adapter lora_a = train lora on {data} {train_opts(cfg)}\n"
        f"adapter dora_a = train dora on {data} {train_opts(cfg)}\n"
        "model lora = base + lora_a\nmodel dora = base + dora_a\n"
        'export lora_a to "export/lora"\n\n'
        + query("q_lora", "lora", task)
        + query("q_dora", "dora", task)
        + evals(["lora", "dora"])
        + parity_query(cfg, "lora")
    )


def parity_query(cfg: dict, model: str) -> str:
    """An unconstrained greedy query (but its length) and a flow that emits it."""
    return (
        f'query free(x: str) using {model} {{\n    user "{{x}}"\n    assistant "[y]"\n'
        f"    where tokens(y) <= {cfg['parity_tokens']}\n}}\nflow {{\n    emit y = free(x).y\n}}\n"
    )


def flip_name(w: float) -> str:
    """The update trained with flip weight w: compat_1, compat_0_5."""
    return "compat_" + f"{w:g}".replace(".", "_")


def flip_script(cfg: dict, task: str) -> str:
    compat = "".join(
        f'adapter {flip_name(w)}_a = train lora on "flip_new.jsonl" '
        f"{train_opts(cfg, f'compatible_with: base + old_a, flip_weight: {w}')}\n"
        for w in cfg["flip_weights"]
    )
    return (
        "# generated by bench/lifecycle.py: do not edit\ninput x: str\nmodel base = default\n"
        f'adapter old_a = train lora on "flip_old.jsonl" {train_opts(cfg, epochs=cfg["flip_old_epochs"])}\n'
        f'adapter plain_a = train lora on "flip_new.jsonl" {train_opts(cfg)}\n'
        + compat
        + "model old = base + old_a\nmodel plain = base + plain_a\n"
        + "".join(f"model {flip_name(w)} = base + {flip_name(w)}_a\n" for w in cfg["flip_weights"])
        + "model current = old   # the model `lmlang compare --swap current=...` rebinds\n\n"
        + query("q", "current", task)
        + "flow {\n    emit y = q(x).y\n}\n"
    )


# ---------------------------------------------------------------- data


def write_data(cfg: dict, workdir: Path) -> dict:
    """Every file the scripts read; returns the rows the bench scores with."""
    import random

    from lmlang.lifecycle.generate import pick_rows

    files = T.write_task_files(workdir, cfg["n_train"], cfg["n_test"], seed=0)
    for t in T.TASKS:
        unlabeled = unlabeled_rows(t, cfg, cfg["n_unlabeled"])  # inputs only: the labels are not used
        T.write_jsonl(workdir / f"unlabeled_{t}.jsonl", [{"text": r["x"]} for r in unlabeled])
        more = unlabeled_rows(t, cfg, cfg["vote_unlabeled"])  # the vote keeps a few: more inputs
        T.write_jsonl(workdir / f"unlabeled_{t}_more.jsonl", [{"text": r["x"]} for r in more])
        target, _ = T.make_split(t, cfg["n_target"], 0, seed=1)
        T.write_jsonl(workdir / f"target_{t}.jsonl", [{"prompt": r["x"], "completion": r["y"]} for r in target])
        if t in cfg["demo_tasks"]:
            (workdir / f"demos_{t}.jsonl").write_text("".join(x + "\n" for x in demo_rows(t, cfg)), encoding="utf-8")
    pool = [{"prompt": r["x"], "completion": r["y"]} for t in T.TASKS for r in files[t]["train_rows"]]
    random.Random(0).shuffle(pool)  # mixed: the selection must find the task's rows
    T.write_jsonl(workdir / "pool.jsonl", pool)
    k = cfg["n_train"]
    T.write_jsonl(workdir / f"random_{k}.jsonl", pick_rows(pool, k, 0))
    old, test, new = flip_rows(cfg)
    T.write_jsonl(workdir / "flip_old.jsonl", old)
    T.write_jsonl(workdir / "flip_new.jsonl", new)
    return {"files": files, "flip_test": test}


def flip_rows(cfg: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """(OLD's training rows, the held-out rows, the update's rows): the update
    holds other rows of the task (seed 5, none held out) and rows of another
    task, shuffled; the two training sets share no input."""
    import random

    t = cfg["flip_task"]
    train, test = T.make_split(t, cfg["flip_old"], cfg["flip_test"], seed=0)
    taken = {r["x"] for r in train + test}
    extra = [r for r in T.make_split(t, cfg["flip_new"] + len(taken), 0, seed=5)[0] if r["x"] not in taken]
    mix, _ = T.make_split(cfg["flip_mix_task"], cfg["flip_mix"], 0, seed=5)
    new = [{"prompt": r["x"], "completion": r["y"]} for r in extra[: cfg["flip_new"]] + mix]
    random.Random(0).shuffle(new)
    return [{"prompt": r["x"], "completion": r["y"]} for r in train], test, new


# ---------------------------------------------------------------- measurements


def compile_script(workdir: Path, name: str, text: str):
    import lmlang

    path = workdir / f"{name}.lm"
    path.write_text(text, encoding="utf-8")
    return lmlang.compile_file(path)


def scores(prog) -> dict[str, float]:
    """Every eval block of the program: name -> score (an eval with errors says so)."""
    from lmlang.lifecycle.evaluate import run_evals

    out = {}
    for r in run_evals(prog):
        out[r.name.removesuffix("_acc")] = round(r.score, 4)
        if r.errors:
            out[f"{r.name}_errors"] = r.errors
    return out


def adapter_meta(prog, name: str) -> dict:
    """The trained adapter's lmlang_adapter.json (rows, seconds, losses)."""
    folder = Path(prog._executor().builder.value(prog.frontend.compiled.names[name]))
    return json.loads((folder / "lmlang_adapter.json").read_text(encoding="utf-8"))


def synthetic_gain(cfg: dict, workdir: Path, log) -> dict:
    out = {}
    for t in T.TASKS:
        out[t] = synthetic_one(cfg, workdir, t, False)
        if t in cfg["vote_tasks"]:
            out[t]["vote"] = {"vote": cfg["vote"], "agree": agree_of(cfg, t), **synthetic_one(cfg, workdir, t, True)}
            out[t]["unfiltered_more"] = synthetic_one(cfg, workdir, t, False, more=True)
        log(f"  synthetic {t}: {out[t]}")
    return out


def synthetic_one(cfg: dict, workdir: Path, task: str, vote: bool, more: bool = False) -> dict:
    name = f"synthetic_{task}" + ("_vote" if vote else "_more" if more else "")
    prog = compile_script(workdir, name, synthetic_script(cfg, task, vote, more))
    gen = prog_rows(prog, "synth")
    if not gen:  # the vote kept no row: nothing to train on
        return {"gain": None, "generated_rows": 0}
    s = scores(prog)
    out = {
        "gain": round(s["tuned"] - s["base"], 4),
        "base": s["base"],
        "tuned": s["tuned"],
        "generated_rows": len(gen),
        "generated_right": round(generated_accuracy(gen, task, cfg), 4),
    }
    if "base_demos" in s:  # the base with the generation's few-shot prompt: the stronger base
        out["base_demos"] = s["base_demos"]
        out["gain_vs_base_demos"] = round(s["tuned"] - s["base_demos"], 4)
    del prog
    gc.collect()
    return out


def prog_rows(prog, name: str) -> list[dict]:
    from lmlang.lifecycle.data import DataSets

    return DataSets(prog).rows(name)


def generated_accuracy(rows: list[dict], task: str, cfg: dict) -> float:
    """How many generated labels are right (the unlabeled inputs' true answers
    are known to the bench, never to the script)."""
    n = max(cfg["n_unlabeled"], cfg["vote_unlabeled"])
    truth = {r["x"]: r["y"] for r in unlabeled_rows(task, cfg, n)}
    right = [truth.get(r["prompt"].rsplit("\n\n", 1)[-1]) == r["completion"].strip() for r in rows]
    return sum(right) / len(right) if right else 0.0


def select_gain(cfg: dict, workdir: Path, data: dict, log) -> dict:
    t = cfg["select_task"]
    prog = compile_script(workdir, f"select_{t}", select_script(cfg, t))
    s = scores(prog)
    own = {r["x"] for r in data["files"][t]["train_rows"]}
    picked = prog_rows(prog, "picked")
    out = {
        "task": t,
        "k": cfg["n_train"],
        "gain": round(s["sel"] - s["rnd"], 4),
        "selected": s["sel"],
        "random": s["rnd"],
        "base": s["base"],
        "select_precision": round(sum(r["prompt"] in own for r in picked) / len(picked), 4),
    }
    log(f"  select: {out}")
    return out


def dora_vs_lora(cfg: dict, workdir: Path, log) -> tuple[dict, object]:
    t = cfg["dora_task"]
    prog = compile_script(workdir, f"dora_{t}", dora_script(cfg, t))
    s = scores(prog)
    out: dict = {"task": t}
    for m in ("lora", "dora"):
        meta = adapter_meta(prog, f"{m}_a")
        out[m] = {
            "accuracy": s[m],
            "train_seconds": round(meta.get("seconds", 0.0), 1),
            "final_loss": meta.get("final_loss"),
        }
    log(f"  dora_vs_lora: {out}")
    return out, prog


def flip_rate_ratio(cfg: dict, workdir: Path, data: dict, log) -> dict:
    """Per flip weight, the update's negative flip rate over the plain
    update's. `ratio`: the smallest over the weights whose update is not
    less accurate than the plain one by more than 0.02 (fewer flips not
    bought with accuracy); `ratio_equal_accuracy`: the smallest over the
    weights within 0.02 of it either way (the issue's "at equal accuracy"
    read literally); None where no weight qualifies or the plain update
    flips nothing."""
    from lmlang.compare import compare, swap_model

    prog = compile_script(workdir, "flip", flip_script(cfg, cfg["flip_task"]))
    rows = [{"x": r["x"], "y": r["y"]} for r in data["flip_test"]]

    def against_old(new: str):
        rep = compare(prog, swap_model(prog, "current", new), rows, expected="y", output="y", new_name=new)
        log(f"  flip {new}: accuracy {rep.new_accuracy:.3f}, negative flip rate {rep.negative_flip_rate:.3f}")
        return rep

    plain = against_old("plain")
    out: dict = {
        "task": cfg["flip_task"],
        "rows": len(rows),
        "old_accuracy": round(plain.old_accuracy, 4),
        "without": {"accuracy": round(plain.new_accuracy, 4), "negative_flip_rate": round(plain.negative_flip_rate, 4)},
        "with": {},
    }
    for w in cfg["flip_weights"]:
        rep = against_old(flip_name(w))
        out["with"][f"{w:g}"] = {
            "accuracy": round(rep.new_accuracy, 4),
            "negative_flip_rate": round(rep.negative_flip_rate, 4),
            "ratio": (
                round(rep.negative_flip_rate / plain.negative_flip_rate, 4) if plain.negative_flip_rate else None
            ),
            "accuracy_gap": round(abs(rep.new_accuracy - plain.new_accuracy), 4),
        }
    out["flip_weight"], out["ratio"] = best_ratio(out, lambda d: d["accuracy"] >= plain.new_accuracy - 0.02)
    out["ratio_equal_accuracy"] = best_ratio(out, lambda d: d["accuracy_gap"] <= 0.02)[1]
    log(f"  flip: {out}")
    return out


def best_ratio(out: dict, admits) -> tuple[float | None, float | None]:
    """(weight, ratio) of the smallest ratio among the weights `admits` takes."""
    ok = [(d["ratio"], float(w)) for w, d in out["with"].items() if admits(d) and d["ratio"] is not None]
    return (min(ok)[1], min(ok)[0]) if ok else (None, None)


def export_parity(cfg: dict, workdir: Path, data: dict, prog, vllm: str, log) -> dict:
    """The exported LoRA folder's greedy outputs in transformers+PEFT (and
    vLLM) against lmlang's own with the adapter it came from."""
    from lmlang.lifecycle.export import run_exports

    t = cfg["dora_task"]
    rows = [{"x": r["x"]} for r in data["files"][t]["test_rows"][: cfg["parity_rows"]]]
    folder = run_exports(prog, only=("lora_a",))[0].path
    ours = [o["y"] for o in prog.run_batch(rows)]
    peft = peft_greedy(folder, [r["x"] for r in rows], cfg["parity_tokens"])
    out: dict = {"rows": len(rows), "peft": peft == ours}
    if peft != ours:
        out["peft_mismatch"] = [{"lmlang": a, "peft": b} for a, b in zip(ours, peft) if a != b][:3]
    out["vllm"] = vllm_parity(cfg, workdir, folder, rows, ours, vllm)
    log(f"  export_parity: {out}")
    return out


def peft_greedy(folder: Path, prompts: list[str], max_new: int) -> list[str]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmlang.models.loader import resolve_model

    base = resolve_model("default")
    tok = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(folder))
    model.eval()
    out = []
    with torch.no_grad():
        for p in prompts:
            text = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            gen = model.generate(input_ids=ids, max_new_tokens=max_new, do_sample=False, eos_token_id=tok.eos_token_id)
            out.append(tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True))
    return out


def vllm_parity(cfg: dict, workdir: Path, folder: Path, rows: list[dict], ours: list[str], mode: str):
    from lmlang.home import cache_dir

    if mode == "off":
        return "skipped (--vllm off)"
    venvs = cache_dir("venvs")
    if not any(p.is_dir() and p.name.startswith("vllm") for p in venvs.iterdir()):
        return "skipped (no venv)"
    import lmlang
    from lmlang.errors import LmlangError

    src = (
        "# generated by bench/lifecycle.py: do not edit\ninput x: str\nmodel base = vllm default\n"
        f"adapter ex = lora {lm_str(str(folder))}\nmodel tuned = base + ex\n" + parity_query(cfg, "tuned")
    )
    (workdir / "parity_vllm.lm").write_text(src, encoding="utf-8")
    try:
        served = [o["y"] for o in lmlang.compile_file(workdir / "parity_vllm.lm").run_batch(rows)]
    except LmlangError as e:  # report it: a bench run must not die on a server that would not start
        return f"error: {e.message}"
    return served == ours


# ---------------------------------------------------------------- report


def markdown(report: dict, mode: str) -> str:
    lines = [f"# bench/lifecycle.py ({mode})", "", "| key | figures |", "|---|---|"]
    for k in KEYS:
        v = report.get(k)
        if k == "synthetic_gain" and isinstance(v, dict):
            for t, d in v.items():
                lines.append(
                    f"| synthetic_gain {t} | {d['gain']:+.3f} (base {d['base']:.3f}, tuned {d['tuned']:.3f}, "
                    f"generated labels right {d['generated_right']:.2f}) |"
                )
                if "base_demos" in d:
                    lines.append(
                        f"| synthetic_gain {t} against the base with the demos | {d['gain_vs_base_demos']:+.3f} "
                        f"(base with the generation's few-shot prompt {d['base_demos']:.3f}) |"
                    )
                if "vote" in d and d["vote"]["gain"] is not None:
                    v2 = d["vote"]
                    lines.append(
                        f"| synthetic_gain {t}, vote {v2['vote']} agree {v2['agree']} | {v2['gain']:+.3f} "
                        f"(tuned {v2['tuned']:.3f} on {v2['generated_rows']} kept rows; "
                        f"their labels right {v2['generated_right']:.2f}) |"
                    )
                more = d.get("unfiltered_more")
                if more and more["gain"] is not None:
                    lines.append(
                        f"| synthetic_gain {t}, the vote's inputs unfiltered | {more['gain']:+.3f} "
                        f"(tuned {more['tuned']:.3f} on {more['generated_rows']} rows; "
                        f"labels right {more['generated_right']:.2f}) |"
                    )
        elif k == "select_gain" and isinstance(v, dict):
            lines.append(
                f"| select_gain ({v['task']}, K {v['k']}) | {v['gain']:+.3f} (selected {v['selected']:.3f}, "
                f"random {v['random']:.3f}, base {v['base']:.3f}; precision {v['select_precision']:.2f}) |"
            )
        elif k == "dora_vs_lora" and isinstance(v, dict):
            lines.append(
                f"| dora_vs_lora ({v['task']}) | DoRA {v['dora']['accuracy']:.3f} in {v['dora']['train_seconds']} s, "
                f"LoRA {v['lora']['accuracy']:.3f} in {v['lora']['train_seconds']} s |"
            )
        elif k == "flip_rate_ratio" and isinstance(v, dict):
            for w, d in v["with"].items():
                lines.append(
                    f"| flip_rate_ratio ({v['task']}, {v['rows']} rows, w {w}) | {d['ratio']} "
                    f"(NFR with {d['negative_flip_rate']:.3f} at accuracy {d['accuracy']:.3f}, "
                    f"without {v['without']['negative_flip_rate']:.3f} at {v['without']['accuracy']:.3f}; "
                    f"old {v['old_accuracy']:.3f}) |"
                )
            lines.append(
                f"| flip_rate_ratio | {v['ratio']} at w {v['flip_weight']} (no accuracy lost); "
                f"within 0.02 of the plain update's accuracy: {v['ratio_equal_accuracy']} |"
            )
        elif k == "export_parity" and isinstance(v, dict):
            lines.append(f"| export_parity ({v['rows']} rows) | PEFT {v['peft']}, vLLM {v['vllm']} |")
        elif v is not None:
            lines.append(f"| {k} | {v} |")
    return "\n".join(lines) + f"\n\nTotal {report['meta']['seconds']:.0f} s.\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print a final JSON line")
    ap.add_argument("--reduced", action="store_true", help="a tiny version for CI")
    ap.add_argument("--out", help="write the table here (.json: JSON, else markdown)")
    ap.add_argument("--only", help=f"comma-separated keys ({', '.join(KEYS)})")
    ap.add_argument("--workdir", help="where the generated data and scripts go")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (1 on a machine shared with other jobs)")
    ap.add_argument("--vllm", choices=("auto", "off"), default="auto", help="export parity through vLLM too")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = dict(REDUCED if args.reduced else FULL)
    mode = "reduced" if args.reduced else "full"
    only = set(args.only.split(",")) if args.only else set(KEYS)
    unknown = only - set(KEYS)
    if unknown:
        raise SystemExit(f"unknown key(s) {sorted(unknown)}; keys: {', '.join(KEYS)}")
    from lmlang.home import cache_dir

    workdir = Path(args.workdir) if args.workdir else cache_dir("bench") / "lifecycle" / mode
    workdir.mkdir(parents=True, exist_ok=True)

    def log(msg: str):
        print(msg, file=sys.stderr, flush=True)

    start = time.perf_counter()
    log(f"lifecycle ({mode}): data and scripts in {workdir}")
    data = write_data(cfg, workdir)
    report: dict = {}

    def save() -> str:
        """The table so far (written to --out after every key: a long run
        stopped half way keeps what it measured)."""
        report.pop("meta", None)  # last in the JSON
        report["meta"] = {"mode": mode, **cfg, "seconds": round(time.perf_counter() - start, 1)}
        table = markdown(report, mode)
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=1) if out.suffix == ".json" else table, encoding="utf-8")
        return table

    if "synthetic_gain" in only:
        report["synthetic_gain"] = synthetic_gain(cfg, workdir, log)
        save()
    if "select_gain" in only:
        report["select_gain"] = select_gain(cfg, workdir, data, log)
        save()
    if only & {"dora_vs_lora", "export_parity"}:
        dora, prog = dora_vs_lora(cfg, workdir, log)
        if "dora_vs_lora" in only:
            report["dora_vs_lora"] = dora
            save()
        if "export_parity" in only:
            report["export_parity"] = export_parity(cfg, workdir, data, prog, args.vllm, log)
            save()
        del prog
        gc.collect()
    if "flip_rate_ratio" in only:
        report["flip_rate_ratio"] = flip_rate_ratio(cfg, workdir, data, log)
    print(save())
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
