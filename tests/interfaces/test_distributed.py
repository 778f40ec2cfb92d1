"""Data runs on Ray keep the local contract: the same results row by row,
each row exactly once, and a SIGKILLed actor or driver loses nothing."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lmlang
from lmlang import datarun as D

ray = pytest.importorskip("ray")

from lmlang.distributed import RayDataRun, actor_count, actor_options, model_bytes  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs for this module (started once: it takes seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def script(tmp_path, model_dir) -> Path:
    f = tmp_path / "t.lm"
    f.write_text(
        f'input t: str\nmodel m = "{model_dir}"\n'
        'query q(x: str) using m { "{x} [a]" where a in ["yes", "no"] }\n'
        'query w(x: str) using m { "Say {x}: [b]" where tokens(b) <= 4 }\n'
        'flow { r = q(t) emit a = r.a, b = w(t).b }\n'
    )
    return f


def data(tmp_path, n: int, bad_line: bool = False) -> Path:
    f = tmp_path / "rows.jsonl"
    lines = [json.dumps({"t": f"row {i}", "extra": i}) for i in range(n)]
    if bad_line:
        lines[3] = "{broken"
    f.write_text("\n".join(lines) + "\n")
    return f


def local_results(script_path, data_path, batch: int) -> dict:
    prog = lmlang.compile_file(script_path, batch_size=batch)
    out = []
    D.run_data(prog, D.read_rows(data_path), out.append, chunk_size=batch)
    return {r["row"]: r for r in out}


def by_row(records: list[dict]) -> dict:
    rows = [r["row"] for r in records]
    assert len(rows) == len(set(rows)), "a row was written twice"
    return {r["row"]: r for r in records}


def test_a_ray_run_equals_the_local_run_row_by_row(cluster, tiny_model_dir, tmp_path):
    s, d = script(tmp_path, tiny_model_dir), data(tmp_path, 10, bad_line=True)
    prog = lmlang.compile_file(s, batch_size=3)
    out = []
    runner = RayDataRun(prog, actors=2)
    summary = runner.run(D.read_rows(d), out.append, chunk_size=3)
    assert by_row(out) == local_results(s, d, 3)
    assert (summary.ok, summary.failed, summary.total) == (9, 1, 10) and summary.ignored_columns == {"extra"}
    assert by_row(out)[3]["error"]["type"] == "DataError"
    assert {r.query for r in prog.trace.records} == {"q", "w"} and len(prog.trace.records) == 18


def test_an_actor_killed_with_sigkill_loses_and_repeats_no_row(cluster, tiny_model_dir, tmp_path):
    # 12 chunks over 2 actors: when the first row is written, the actor asked
    # for its pid (which waits behind its current chunk) still has chunks to
    # run, whatever the machine's load, so its death is seen and replaced.
    s, d = script(tmp_path, tiny_model_dir), data(tmp_path, 24)
    prog = lmlang.compile_file(s, batch_size=2)
    runner = RayDataRun(prog, actors=2)
    out = []

    def write(rec):
        out.append(rec)
        if len(out) == 1:  # mid-run: the other chunks are queued or decoding
            os.kill(ray.get(runner.actors[0].pid.remote()), signal.SIGKILL)

    summary = runner.run(D.read_rows(d), write, chunk_size=2)
    assert runner.replaced >= 1
    assert by_row(out) == local_results(s, d, 2) and summary.ok == 24


def test_a_killed_driver_resumes_without_losing_or_repeating_a_row(cluster, tiny_model_dir, tmp_path):
    s, d = script(tmp_path, tiny_model_dir), data(tmp_path, 24)
    out = tmp_path / "out.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "lmlang.cli",
        "run",
        str(s),
        "--data",
        str(d),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--no-progress",
        "--ray",
        cluster,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(D.resume_state(out).done)
    assert 4 <= done_before < 24
    p = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert f"{done_before} already done" in p.stderr
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert by_row(records) == local_results(s, d, 2)


def test_actor_resources_follow_the_models(tiny_model_dir, tmp_path):
    prog = lmlang.compile_file(script(tmp_path, tiny_model_dir), device="cpu")
    weights = sum(f.stat().st_size for f in Path(tiny_model_dir).glob("*.safetensors"))
    assert model_bytes(prog) == weights
    cpu = actor_options(prog, 1, {"CPU": 8, "memory": 10**10})
    assert cpu["num_cpus"] == 1 and cpu["num_gpus"] == 0 and cpu["memory"] >= weights
    assert actor_count(cpu, {"CPU": 8, "memory": 10**10}, None, None) == 8
    assert actor_count(cpu, {"CPU": 8, "memory": 10**10}, 3, None) == 3  # no more actors than chunks
    assert actor_count(actor_options(prog, 2, {}), {"CPU": 8, "memory": 10**10}, None, None) == 4
    auto = lmlang.compile_file(script(tmp_path, tiny_model_dir))
    gpu = actor_options(auto, 1, {"CPU": 8, "GPU": 2})
    assert gpu["num_gpus"] == 1 and "memory" not in gpu
    assert actor_count(gpu, {"CPU": 8, "GPU": 2}, None, None) == 2
    with pytest.raises(lmlang.LmlangRuntimeError, match="cannot hold one actor"):
        actor_count(cpu, {"CPU": 8, "memory": weights}, None, None)
