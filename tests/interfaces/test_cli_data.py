"""`lmlang run --data`: one JSON line per row, failing rows recorded, resumable
after a crash (even SIGKILL) with no row lost or repeated."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from lmlang.cli import main
from lmlang.datarun import resume_state


def script(tmp_path, model_dir, decode: str = "") -> str:
    f = tmp_path / "t.lm"
    f.write_text(
        "input t: str\ninput n: int = 1\n"
        f'model m = "{model_dir}"\n'
        f'query q(x: str) using m {decode} {{ "{{x}} [a]" where a in ["yes", "no"] }}\n'
        "flow { r = q(t) emit a = r.a, n = n + 1 }\n"
    )
    return str(f)


def write_jsonl(path, rows, extra: str = ""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + extra)
    return str(path)


def read_out(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def invoke(*args):
    return CliRunner().invoke(main, ["run", *map(str, args), "--no-progress"])


def test_jsonl_rows_with_a_bad_row_and_a_broken_line(tiny_model_dir, tmp_path):
    f = script(tmp_path, tiny_model_dir)
    data = write_jsonl(
        tmp_path / "rows.jsonl", [{"t": "a", "id": 0}, {"t": "b", "n": "oops"}, {"t": "c", "n": 5}], extra="{broken\n"
    )
    out = tmp_path / "out.jsonl"
    r = invoke(f, "--data", data, "--out", out)
    assert r.exit_code == 2, r.output  # the worst failing row: an input error (script error)
    recs = {rec["row"]: rec for rec in read_out(out)}
    assert sorted(recs) == [0, 1, 2, 3]
    assert recs[0]["input"] == {"t": "a"} and recs[0]["output"]["a"] in ("yes", "no") and recs[0]["output"]["n"] == 2
    assert recs[2]["output"]["n"] == 6
    assert recs[1]["error"]["type"] == "InputError" and "expects int" in recs[1]["error"]["message"]
    assert recs[3]["error"]["type"] == "DataError" and "rows.jsonl:4" in recs[3]["error"]["message"]
    assert "ignored columns that name no input: id" in r.output
    assert "2 ok, 2 failed" in r.output


def test_csv_rows_empty_cell_takes_the_default_and_stdout_output(tiny_model_dir, tmp_path):
    f = script(tmp_path, tiny_model_dir)
    data = tmp_path / "rows.csv"
    data.write_text('t,n\nhello,3\n"with, comma",\n')
    r = invoke(f, "--data", data)
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert [x["row"] for x in lines] == [0, 1]
    assert lines[0]["output"]["n"] == 4 and lines[1]["output"]["n"] == 2
    assert lines[1]["input"] == {"t": "with, comma"}


def test_limit_trace_and_json_summary(tiny_model_dir, tmp_path):
    f = script(tmp_path, tiny_model_dir)
    data = write_jsonl(tmp_path / "rows.jsonl", [{"t": f"r{i}"} for i in range(6)])
    out, trace = tmp_path / "out.jsonl", tmp_path / "trace.jsonl"
    r = invoke(f, "--data", data, "--out", out, "--limit", 4, "--trace", trace, "--json", "--batch-size", 3)
    assert r.exit_code == 0, r.output
    assert sorted(x["row"] for x in read_out(out)) == [0, 1, 2, 3]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary == {"rows": 4, "skipped": 0, "ok": 4, "failed": 0, "out": str(out)}
    traced = [json.loads(x) for x in open(trace)]
    assert sorted(t["row"] for t in traced) == [0, 1, 2, 3] and {t["query"] for t in traced} == {"q"}


def test_existing_output_needs_resume_or_overwrite(tiny_model_dir, tmp_path):
    f = script(tmp_path, tiny_model_dir)
    data = write_jsonl(tmp_path / "rows.jsonl", [{"t": "a"}])
    out = tmp_path / "out.jsonl"
    out.write_text('{"row": 0, "input": {"t": "a"}, "output": {"a": "yes", "n": 2}}\n')
    r = invoke(f, "--data", data, "--out", out)
    assert r.exit_code == 1 and "already has results" in r.output and "--resume" in r.output
    r = invoke(f, "--data", data, "--out", out, "--overwrite")
    assert r.exit_code == 0 and len(read_out(out)) == 1
    r = invoke(f, "--out", out)
    assert r.exit_code == 2 and "--out needs --data" in r.output


def test_resume_drops_a_torn_last_line_and_runs_only_missing_rows(tiny_model_dir, tmp_path):
    f = script(tmp_path, tiny_model_dir)
    data = write_jsonl(tmp_path / "rows.jsonl", [{"t": f"r{i}"} for i in range(5)])
    out = tmp_path / "out.jsonl"
    out.write_text(
        '{"row": 0, "input": {"t": "r0"}, "output": {"a": "yes", "n": 2}}\n'
        '{"row": 3, "input": {"t": "r3"}, "error": {"type": "X", "message": "m", "hint": "", "exit_code": 1}}\n'
        '{"row": 1, "input": {"t": "r1"}, "outp'
    )
    r = invoke(f, "--data", data, "--out", out, "--resume")
    assert r.exit_code == 0, r.output
    assert "dropped a partial last line" in r.output and "2 already done" in r.output
    rows = [x["row"] for x in read_out(out)]
    assert sorted(rows) == [0, 1, 2, 3, 4] and rows[:2] == [0, 3]


def test_resume_state_reads_whole_lines_only(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text('{"row": 2, "output": {}}\n{"row": 5, "error": {}}\n{"row": 7, "out')
    st = resume_state(out)
    assert st.done == {2, 5} and st.errors == 1 and st.dropped_partial
    assert out.read_text().endswith("}\n")
    assert resume_state(tmp_path / "missing.jsonl").done == set()


def test_sigkill_mid_run_then_resume_loses_and_repeats_nothing(tiny_model_dir, tmp_path):
    """A real crash: the run is SIGKILLed while it writes, then resumed."""
    n = 120
    f = script(tmp_path, tiny_model_dir)
    data = write_jsonl(tmp_path / "rows.jsonl", [{"t": f"row number {i}"} for i in range(n)])
    out = tmp_path / "out.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "lmlang.cli",
        "run",
        f,
        "--data",
        data,
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if out.exists() and out.read_text().count("\n") >= 10:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    first = out.read_text()
    done_before = len([x for x in first.splitlines() if x.endswith("}")])
    assert 10 <= done_before < n
    # A torn write at the moment of the kill looks like this: simulate one too.
    if first.endswith("\n"):
        with open(out, "a") as fh:
            fh.write('{"row": 999, "inp')
    p = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    recs = read_out(out)
    assert sorted(r["row"] for r in recs) == list(range(n))  # each row exactly once
    assert all(r["output"]["a"] in ("yes", "no") for r in recs)
    assert f"{done_before} already done" in p.stderr


def test_seed_option_overrides_sampling_decoders(tiny_model_dir, tmp_path):
    f = tmp_path / "s.lm"
    f.write_text(
        f'model m = "{tiny_model_dir}"\n'
        'query s(x: str) using m decode sample(temperature: 2.0, seed: 3) { "{x} [a]" where tokens(a) <= 6 }\n'
        'flow { emit a = s("hi").a }\n'
    )
    runs = [invoke(f, "--json", "--seed", 11) for _ in range(2)]
    assert all(r.exit_code == 0 for r in runs), runs[0].output
    assert runs[0].stdout == runs[1].stdout  # same seed, same sample
    import lmlang

    prog = lmlang.compile_file(f)
    own = prog.run()["a"]
    assert prog.set_seed(3).run()["a"] == own  # the script's own seed
    assert prog.seed == 3
    others = {prog.set_seed(k).run()["a"] for k in (4, 5, 6, 7)}
    assert others - {own}, "another seed changes the sample"
    assert prog.set_seed(None).run()["a"] == own and prog.seed is None


def test_models_command_prints_a_table_and_json():
    r = CliRunner().invoke(main, ["models"])
    assert r.exit_code == 0
    head = r.output.splitlines()[0].split()
    assert head == ["name", "kind", "ready", "size", "path"]
    assert any(line.startswith("default") for line in r.output.splitlines())
    rows = json.loads(CliRunner().invoke(main, ["models", "--json"]).output)
    assert rows[0]["name"] == "default"


@pytest.mark.parametrize(
    "body, code",
    [
        ("model = default\n", 2),  # syntax error
        ('query q() using nosuch { "[a]" where a in ["x"] }\n', 2),  # check error
        ("input d: int = 0\nflow { emit x = 10 / d }\n", 1),  # runtime error
    ],
)
def test_documented_exit_codes(tmp_path, body, code):
    f = tmp_path / "x.lm"
    f.write_text(body)
    r = CliRunner().invoke(main, ["run", str(f)])
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
