"""How fast `lmlang check` is, over every example.

    python bench/check.py [--json] [--repeat N] [FILES...]

Three measurements per file:

* fresh: wall time of `python -m lmlang.cli check FILE` in a new subprocess
  (interpreter start-up, imports, the parser's disk cache, parse, check,
  compile), best of --repeat runs, and the child's CPU time (user + sys),
  which a busy shared machine inflates much less than wall time; the child
  also reports which heavy modules got imported (torch, transformers,
  networkx, the constraint backends, lark; a regex or schema hole's first
  check imports its judge's backend, later checks read the answer from disk);
* cold: the same fresh-process check with an empty LMLANG_HOME, so the
  parser tables are rebuilt and every regex/schema/grammar is judged anew
  (what the first check after installing, or after editing a schema, pays);
* warm: parse + check + compile in this process, after one warm-up build
  (what an editor integration or the REPL pays), best of --repeat runs.

lmlang's bytecode is compiled first (`compileall`), as pip does when it
installs a package; without it every fresh process would recompile the
sources (PYTHONDONTWRITEBYTECODE is set on some machines).

Also printed: a bare `python -c pass` start-up, so the fresh numbers can be
read against what any Python command costs on this machine (the ratio is the
part lmlang adds). --json prints one final line:

    {"check_seconds_max": ..., "cold_check_seconds_max": ..., "warm_seconds_max": ..., "python_startup_seconds": ...,
     "torch_imported": false, ...}
"""

from __future__ import annotations

import argparse
import compileall
import os
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHILD = r"""
import sys, time
t0 = time.perf_counter()
from lmlang.cli import main
try:
    main(["check", sys.argv[1]])
except SystemExit as e:
    code = e.code
heavy = [m for m in ("torch", "transformers", "networkx", "outlines", "xgrammar", "llguidance", "jsonschema", "lark", "regex") if m in sys.modules]
import json
sys.stderr.write("\n@@" + json.dumps([code, heavy, time.perf_counter() - t0]) + "\n")
"""


def fresh(path: Path, repeat: int) -> dict:
    best, best_cpu, heavy, code = float("inf"), float("inf"), [], None
    for _ in range(repeat):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        best_cpu = min(best_cpu, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime))
        marker = [line for line in p.stderr.splitlines() if line.startswith("@@")]
        if not marker:
            raise SystemExit(f"check of {path} crashed:\n{p.stderr}")
        code, heavy, _inner = json.loads(marker[-1][2:])
        best = min(best, wall)
    # The plain CLI entry point, as a user runs it (same process tree as above, minus the probe).
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lmlang.cli", "check", str(path)], capture_output=True, cwd=REPO)
    cli = time.perf_counter() - t0
    return {
        "fresh_seconds": round(min(best, cli), 4),
        "fresh_cpu_seconds": round(best_cpu, 4),
        "exit_code": code,
        "heavy_imports": heavy,
    }


def cold(path: Path) -> float:
    with tempfile.TemporaryDirectory(prefix="lmlang-check-home-") as home:
        env = dict(os.environ, LMLANG_HOME=home)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lmlang.cli", "check", str(path)], capture_output=True, cwd=REPO, env=env)
        return round(time.perf_counter() - t0, 4)


def warm(path: Path, repeat: int) -> float:
    from lmlang.frontend import build_file

    build_file(path)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        build_file(path)
        best = min(best, time.perf_counter() - t0)
    return round(best, 4)


def startup(repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return round(best, 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--json", action="store_true", help="print a final JSON line")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    files = args.files or sorted((REPO / "examples").glob("*.lm"))
    compileall.compile_dir(str(REPO / "lmlang"), quiet=1)
    base = startup(args.repeat)
    rows = {}
    for f in files:
        row = fresh(f, args.repeat)
        row["cold_seconds"] = cold(f)
        row["warm_seconds"] = warm(f, args.repeat)
        rows[f.name] = row
        if not args.json:
            print(
                f"{f.name:24} fresh {row['fresh_seconds']:.3f}s (cpu {row['fresh_cpu_seconds']:.3f}s)  cold {row['cold_seconds']:.3f}s  warm {row['warm_seconds'] * 1000:7.1f} ms  "
                f"exit {row['exit_code']}  heavy imports: {row['heavy_imports'] or 'none'}"
            )
    fresh_max = max(r["fresh_seconds"] for r in rows.values())
    summary = {
        "check_seconds_max": fresh_max,
        "cold_check_seconds_max": max(r["cold_seconds"] for r in rows.values()),
        "check_cpu_seconds_max": max(r["fresh_cpu_seconds"] for r in rows.values()),
        "warm_seconds_max": max(r["warm_seconds"] for r in rows.values()),
        "python_startup_seconds": base,
        "check_over_startup": round(fresh_max / base, 2) if base else None,
        "torch_imported": any(
            "torch" in r["heavy_imports"] or "transformers" in r["heavy_imports"] for r in rows.values()
        ),
        "networkx_imported": any("networkx" in r["heavy_imports"] for r in rows.values()),
        "all_ok": all(r["exit_code"] == 0 for r in rows.values()),
        "files": rows,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"python start-up {base:.3f}s; slowest fresh check {fresh_max:.3f}s "
            f"({summary['check_over_startup']}x start-up); slowest warm check {summary['warm_seconds_max'] * 1000:.1f} ms"
        )


if __name__ == "__main__":
    main()
