"""Merges refuse non-finite options (library, YAML, script check), clean up
the temp folders of killed merges without touching running ones, report an
adapter merge's reconstruction error (and warn past the threshold), and say
"X (cached)" instead of "merging X" when the result is already there."""

import math
import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from lmlang.cli import main
from lmlang.merge import merge_models
from lmlang.merge.cli import merge_command
from lmlang.merge.lora import RECONSTRUCTION_WARNING, merge_loras
from lmlang.merge.options import option_problems
from lmlang.merge.stream import OWNER_FILE, UNOWNED_STALE_AFTER, MergeConfigError, WorkFolder, clean_stale_work
from test_merge_lora import make_lora


@pytest.fixture(scope="module")
def loras(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    a = make_lora(tiny_model_dir, root / "a", ["q_proj", "v_proj"], 4, 8, 1)
    b = make_lora(tiny_model_dir, root / "b", ["q_proj", "k_proj"], 2, 4, 2)
    return a, b


# ---------------------------------------------------------------- non-finite options


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_options_are_problems(bad):
    msgs = [p.message for p in option_problems("linear", {}, [{"weight": bad}, {"weight": 1.0}])]
    assert any("must be a finite number" in m for m in msgs), msgs
    msgs = [p.message for p in option_problems("slerp", {"t": [0.0, bad, 1.0]}, [{}], has_base=True)]
    assert any("option 't' must be a finite number" in m for m in msgs), msgs


def test_library_refuses_a_nan_weight(tiny_model_dir, tiny_model_dir_b, tmp_path):
    with pytest.raises(MergeConfigError, match="finite"):
        merge_models(
            "linear",
            [(tiny_model_dir, {"weight": math.nan}), (tiny_model_dir_b, {"weight": 1.0})],
            out_dir=tmp_path / "o",
        )
    assert not (tmp_path / "o").exists()


def test_merge_cli_refuses_nan_weight(tiny_model_dir, tiny_model_dir_b, tmp_path):
    cfg = tmp_path / "nan.yaml"
    for bad in (".nan", ".inf", "-.inf"):
        cfg.write_text(
            f"merge_method: linear\nmodels:\n  - model: {tiny_model_dir}\n    parameters: {{weight: {bad}}}\n"
            f"  - model: {tiny_model_dir_b}\n    parameters: {{weight: 1.0}}\n"
        )
        r = CliRunner().invoke(merge_command, [str(cfg), "--out", str(tmp_path / "o")])
        assert r.exit_code == 2 and "finite" in r.output and "Traceback" not in r.output, r.output
        assert not (tmp_path / "o").exists()


def test_script_check_refuses_an_infinite_literal_weight(tiny_model_dir, tiny_model_dir_b, tmp_path):
    f = tmp_path / "m.lm"
    f.write_text(
        f'model a = "{tiny_model_dir}"\nmodel b = "{tiny_model_dir_b}"\n'
        "model mean = merge linear { models: { a: 1e999, b: 0.5 } }\n"
        'query q(x: str) using mean { "{x} [r]" where r in ["y", "n"] }\n'
    )
    r = CliRunner().invoke(main, ["check", str(f)])
    assert r.exit_code == 2 and "finite" in r.output, r.output


# ---------------------------------------------------------------- stale temp folders


def owned_by(folder, pid_holding: bool):
    """A temp folder whose owner file is flock'ed by a child process, which
    is then either kept alive (a running merge) or killed (an abandoned one)."""
    folder.mkdir()
    code = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(folder / OWNER_FILE)!r}, os.O_WRONLY | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(600)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    if not pid_holding:
        p.kill()
        p.wait()
    return p


def test_only_abandoned_temp_folders_are_removed(tmp_path):
    dead = tmp_path / ".m-1.tmp-dead"
    alive = tmp_path / ".m-1.tmp-alive"
    fresh = tmp_path / ".m-1.tmp-fresh"  # no owner file yet: being set up, or an old lmlang
    old = tmp_path / ".m-1.tmp-old"
    other = tmp_path / ".other.tmp-dead"
    owned_by(dead, False)
    owned_by(other, False)
    p = owned_by(alive, True)
    try:
        fresh.mkdir()
        old.mkdir()
        past = time.time() - UNOWNED_STALE_AFTER - 60
        os.utime(old, (past, past))
        (tmp_path / "m-1").mkdir()  # a published result is never touched
        removed = clean_stale_work(tmp_path, "m-1")
        assert sorted(removed) == sorted([dead, old])
        assert alive.exists() and fresh.exists() and other.exists() and (tmp_path / "m-1").exists()
        assert clean_stale_work(tmp_path) == [other]  # the whole cache folder
        assert alive.exists()
    finally:
        p.kill()
        p.wait()
    assert clean_stale_work(tmp_path) == [alive]  # its owner is gone now


def test_a_work_folder_is_locked_while_it_lives(tmp_path):
    final = tmp_path / "result"
    work = WorkFolder(final)
    assert (work.path / OWNER_FILE).read_text().strip() == str(os.getpid())
    assert clean_stale_work(tmp_path) == []  # ours: locked
    second = WorkFolder(final)  # a concurrent merge of the same result
    assert work.path.exists() and second.path != work.path
    work.release()
    assert not (work.path / OWNER_FILE).exists()
    second.discard()
    assert not second.path.exists()


def test_a_killed_merge_leaves_a_folder_the_next_merge_removes(tiny_model_dir, tiny_model_dir_b, lmlang_home):
    code = (
        "import os, signal, sys\nfrom lmlang.merge import merge_models\nimport lmlang.merge.stream as S\n"
        "real = S._write_card\n"
        "def die(*a, **k):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
        "S._write_card = die\n"
        f"merge_models('linear', [({str(tiny_model_dir)!r}, {{'weight': 1.0}}), ({str(tiny_model_dir_b)!r}, {{'weight': 2.0}})])\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "LMLANG_HOME": str(lmlang_home), "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == -9, p.stderr
    leftovers = list(lmlang_home.rglob(".*.tmp-*"))
    assert len(leftovers) == 1 and any(leftovers[0].iterdir())
    res = merge_models("linear", [(tiny_model_dir, {"weight": 1.0}), (tiny_model_dir_b, {"weight": 1.0})])
    assert not res.cached and not leftovers[0].exists()
    assert not list(lmlang_home.rglob(".*.tmp-*")) and not (res.path / OWNER_FILE).exists()


# ---------------------------------------------------------------- reconstruction error, cached


def test_ties_of_adapters_reports_its_reconstruction_error(loras, tmp_path):
    a, b = loras
    said = []
    res = merge_loras(
        "ties",
        [(a, {"weight": 1.0, "density": 0.5}), (b, {"weight": 1.0, "density": 0.5})],
        output="lora",
        rank=2,
        out_dir=tmp_path / "r2",
        announce=lambda: said.append(1),
    )
    assert said == [1] and not res.cached
    assert res.overall_error > RECONSTRUCTION_WARNING
    assert res.summary() == f"rank 2, reconstruction error {res.overall_error:.1%}"
    (w,) = res.warnings
    assert "ties merge only approximately" in w and "rank 2" in w and "10% threshold" in w
    again = merge_loras(
        "ties",
        [(a, {"weight": 1.0, "density": 0.5}), (b, {"weight": 1.0, "density": 0.5})],
        output="lora",
        rank=2,
        out_dir=tmp_path / "r2",
        announce=lambda: said.append(2),
    )
    assert again.cached and said == [1] and again.warnings == res.warnings  # cached: not announced, still warned
    exact = merge_loras(
        "linear", [(a, {"weight": 1.0}), (b, {"weight": 1.0})], output="lora", out_dir=tmp_path / "exact"
    )
    assert exact.overall_error < 1e-5 and exact.warnings == []


def test_run_says_the_error_and_cached(loras, tiny_model_dir, tmp_path, lmlang_home):
    a, b = loras
    f = tmp_path / "m.lm"
    f.write_text(
        f'input t: str = "x"\nmodel base = "{tiny_model_dir}"\n'
        f'adapter a = lora "{a}"\nadapter b = lora "{b}"\n'
        "adapter mixed = merge ties { models: { a: 1.0, b: 1.0 }, density: 0.5, rank: 2 }\n"
        "model mm = base + mixed\n"
        "model full = merge ties { base: base, models: { base + a: 1.0, base + b: 1.0 }, density: 0.5 }\n"
        'query q(x: str) using mm { "{x} [r]" where r in ["y", "n"] }\n'
        'query p(x: str) using full { "{x} [r]" where r in ["y", "n"] }\n'
        "flow { emit r = q(t).r, s = p(t).r }\n"
    )
    first = CliRunner().invoke(main, ["run", str(f)])
    assert first.exit_code == 0, first.output
    assert "merging adapters (ties) for mixed" in first.output
    assert "merged mixed: rank 2, reconstruction error" in first.output
    assert "warning: mixed: the merged adapter keeps the ties merge only approximately" in first.output
    assert "merging full" in first.output
    second = CliRunner().invoke(main, ["run", str(f)])
    assert second.exit_code == 0, second.output
    assert "merging" not in second.output, second.output
    assert "mixed (cached): rank 2, reconstruction error" in second.output and "warning: mixed:" in second.output
    assert "full (cached)" in second.output
