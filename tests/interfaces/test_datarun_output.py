"""The output of a data run is safe: locked against a second run, never the
data file (through links either), only a regular file is read back by
--resume, and paths that cannot be written fail before any model loads."""

import json
import os
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner

from lmlang import datarun as D
from lmlang.cli import main
from lmlang.program import Program


def script(tmp_path, model_dir) -> str:
    f = tmp_path / "t.lm"
    f.write_text(
        f'input t: str\nmodel m = "{model_dir}"\n'
        'query q(x: str) using m { "{x} [a]" where a in ["yes", "no"] }\n'
        "flow { emit a = q(t).a }\n"
    )
    return str(f)


def rows_file(tmp_path, n=3):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"t": f"r{i}"}) + "\n" for i in range(n)))
    return data


def invoke(*args, input=None):
    return CliRunner().invoke(main, [*map(str, args)], input=input)


@pytest.fixture()
def no_models(monkeypatch):
    """Fail the test if a model starts to load."""
    monkeypatch.setattr(Program, "load_models", lambda self: pytest.fail("models loaded before the output was checked"))


def test_out_linked_to_the_data_never_truncates_it(tiny_model_dir, tmp_path, no_models):
    f, data = script(tmp_path, tiny_model_dir), rows_file(tmp_path)
    before = data.read_bytes()
    (tmp_path / "sym.jsonl").symlink_to(data)
    os.link(data, tmp_path / "hard.jsonl")
    for out in ("sym.jsonl", "hard.jsonl", "rows.jsonl"):
        r = invoke("run", f, "--data", data, "--out", tmp_path / out, "--overwrite", "--no-progress")
        assert r.exit_code == 2 and "is the --data file" in r.output, r.output
        assert data.read_bytes() == before
    r = invoke("run", f, "--data", data, "--out", f, "--overwrite", "--no-progress")
    assert r.exit_code == 2 and "is the script file" in r.output and "query q" in open(f).read()


@pytest.mark.parametrize(
    "flag, target",
    [
        ("--out", "missing/out.jsonl"),
        ("--out", "t.lm/out.jsonl"),
        ("--trace", "missing/trace.jsonl"),
        ("--trace", "t.lm/trace.jsonl"),
        ("--trace", "rows.jsonl"),
    ],
)
def test_unusable_output_paths_fail_before_models_load(tiny_model_dir, tmp_path, no_models, flag, target):
    f, data = script(tmp_path, tiny_model_dir), rows_file(tmp_path)
    r = invoke("run", f, "--data", data, flag, tmp_path / target, "--no-progress")
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and "Traceback" not in r.output
    assert f"{flag} " in r.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_fails_before_models_load(tiny_model_dir, tmp_path, no_models):
    f, data = script(tmp_path, tiny_model_dir), rows_file(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    r = invoke("run", f, "--data", data, "--out", ro / "out.jsonl", "--no-progress")
    assert r.exit_code == 2 and "cannot write --out" in r.output


def test_trace_without_data_to_a_missing_folder(tiny_model_dir, tmp_path, no_models, monkeypatch):
    monkeypatch.setattr(Program, "run", lambda self, **kw: pytest.fail("ran"))
    f = script(tmp_path, tiny_model_dir)
    r = invoke("run", f, "--set", "t=x", "--trace", tmp_path / "missing" / "tr.jsonl")
    assert r.exit_code == 2 and "cannot write --trace" in r.output and "Traceback" not in r.output


def test_graph_to_a_missing_folder_is_a_clean_error(tiny_model_dir, tmp_path):
    f = script(tmp_path, tiny_model_dir)
    r = invoke("graph", f, "-o", tmp_path / "missing" / "g.dot")
    assert r.exit_code == 2 and r.output.startswith("error: cannot write -o") and "Traceback" not in r.output


def test_resume_refuses_what_is_not_a_regular_file(tiny_model_dir, tmp_path, no_models):
    f, data = script(tmp_path, tiny_model_dir), rows_file(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for out in (fifo, "/dev/zero", tmp_path):
        r = invoke("run", f, "--data", data, "--out", out, "--resume", "--no-progress")
        assert r.exit_code == 2 and ("needs a regular file" in r.output or "Invalid value" in r.output), r.output
    with pytest.raises(D.OutputError, match="needs a regular file"):
        D.resume_state("/dev/zero")


def test_data_that_never_ends_is_refused(tiny_model_dir, tmp_path, no_models):
    f = script(tmp_path, tiny_model_dir)
    r = invoke("run", f, "--data", "/dev/zero", "--data-format", "jsonl", "--no-progress")
    assert r.exit_code == 1 and "not a regular file or a pipe" in r.output


def test_data_from_a_pipe_is_read_once(tiny_model_dir, tmp_path):
    f = script(tmp_path, tiny_model_dir)
    fifo = tmp_path / "rows.jsonl"
    os.mkfifo(fifo)
    assert D.count_rows(fifo) is None  # counting would eat the rows

    def feed():
        with open(fifo, "w") as fh:
            fh.write("".join(json.dumps({"t": f"r{i}"}) + "\n" for i in range(3)))

    threading.Thread(target=feed, daemon=True).start()
    out = tmp_path / "out.jsonl"
    r = invoke("run", f, "--data", fifo, "--out", out, "--no-progress")
    assert r.exit_code == 0, r.output
    assert sorted(json.loads(x)["row"] for x in open(out)) == [0, 1, 2]


def test_a_second_run_on_a_locked_out_fails_at_once(tiny_model_dir, tmp_path, no_models):
    f, data = script(tmp_path, tiny_model_dir), rows_file(tmp_path)
    out = tmp_path / "out.jsonl"
    held = D.OutputFile.open(out)  # a first run holds it
    try:
        for extra in ([], ["--resume"], ["--overwrite"]):
            r = invoke("run", f, "--data", data, "--out", out, "--no-progress", *extra)
            assert r.exit_code == 1 and "in use by another lmlang run" in r.output, r.output
        assert out.read_bytes() == b""
    finally:
        held.close()


def test_the_lock_holds_across_processes(tiny_model_dir, tmp_path):
    f, data = script(tmp_path, tiny_model_dir), rows_file(tmp_path)
    out = tmp_path / "out.jsonl"
    held = D.OutputFile.open(out)
    try:
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "lmlang.cli",
                "run",
                f,
                "--data",
                str(data),
                "--out",
                str(out),
                "--resume",
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
    finally:
        held.close()
    assert p.returncode == 1 and "in use by another lmlang run" in p.stderr, p.stderr


def test_the_lock_is_released_after_a_run(tiny_model_dir, tmp_path):
    f, data = script(tmp_path, tiny_model_dir), rows_file(tmp_path)
    out = tmp_path / "out.jsonl"
    assert invoke("run", f, "--data", data, "--out", out, "--no-progress").exit_code == 0
    D.OutputFile.open(out).close()  # free again
    r = invoke("run", f, "--data", rows_file(tmp_path, 4), "--out", out, "--resume", "--no-progress")
    assert r.exit_code == 0 and "1 ok, 0 failed, 3 already done" in r.output


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_stops_the_run_with_a_clean_error(tiny_model_dir, tmp_path):
    f, data = script(tmp_path, tiny_model_dir), rows_file(tmp_path)
    r = invoke("run", f, "--data", data, "--out", "/dev/full", "--no-progress")
    assert r.exit_code == 1 and "cannot write to /dev/full" in r.output and "Traceback" not in r.output
