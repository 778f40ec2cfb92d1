"""The result cache: a repeated call is answered from disk without loading
the model; its key follows everything the result depends on; concurrent
writers never corrupt it; a damaged entry is recomputed."""

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

import lmlang
from lmlang.cli import main
from lmlang.runtime.result_cache import ResultCache, cache_clear, cache_info

REPO = Path(__file__).resolve().parents[2]


def source(model_dir, decoder: str = "", adapter: str | None = None) -> str:
    use = "m"
    extra = ""
    if adapter:
        extra = f'adapter la = lora "{adapter}"\nmodel ma = m + la\n'
        use = "ma"
    return (
        f'input t: str\nmodel m = "{model_dir}"\n{extra}'
        f'query q(x: str) using {use} {decoder} {{ "Say {{x}}: [a]" where tokens(a) <= 4 }}\n'
        'flow { emit a = q(t).a }\n'
    )


def entries(home: Path) -> list[Path]:
    return sorted((home / "results").glob("*/*.json"))


def test_a_repeated_call_is_answered_without_loading_the_model(tiny_model_dir, lmlang_home):
    first = lmlang.compile(source(tiny_model_dir), cache=True)
    out = first.run_batch([{"t": "cat"}, {"t": "dog"}])
    assert [r.cached for r in first.trace.records] == [False, False]
    assert len(entries(lmlang_home)) == 2
    again = lmlang.compile(source(tiny_model_dir), cache=True)
    assert again.run_batch([{"t": "cat"}, {"t": "dog"}]) == out
    assert [r.cached for r in again.trace.records] == [True, True]
    assert again._executor()._lms == {}  # no model was loaded
    rec = again.trace.records[0]
    assert rec.forward_passes == 0 and "Say cat:" in rec.prompt and rec.values == {"a": out[0]["a"]}
    assert lmlang.compile(source(tiny_model_dir), cache=False).run(t="cat") == out[0]


def test_an_all_hit_run_never_imports_torch(tiny_model_dir, lmlang_home, tmp_path):
    script = tmp_path / "s.lm"
    script.write_text(source(tiny_model_dir))
    lmlang.compile_file(script, cache=True).run(t="cat")
    code = (
        "import sys, lmlang\n"
        f"p = lmlang.compile_file({str(script)!r}, cache=True)\n"
        "print(p.run(t='cat')['a'] is not None, p.trace.records[0].cached, 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "LMLANG_HOME": str(lmlang_home)}
    env.pop("LMLANG_CACHE", None)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["True", "True", "False"]


def test_the_key_follows_inputs_seed_model_and_adapter_files(tiny_model_dir, tiny_model_dir_b, lmlang_home, tmp_path):
    from test_adapters import make_lora

    lora = make_lora(tiny_model_dir, tmp_path / "lora", seed=1)

    n = 0
    for variant in [
        source(tiny_model_dir),
        source(tiny_model_dir_b),
        source(tiny_model_dir, adapter=str(lora)),
        source(tiny_model_dir, "decode sample(seed: 1)"),
        source(tiny_model_dir, "decode sample(seed: 2)"),
    ]:
        lmlang.compile(variant, cache=True).run(t="cat")
        n += 1
        assert len(entries(lmlang_home)) == n  # each is a new key: nothing answered from another
    lmlang.compile(source(tiny_model_dir), cache=True).run(t="dog")
    assert len(entries(lmlang_home)) == n + 1
    seeded = lmlang.compile(source(tiny_model_dir, "decode sample(seed: 1)"), cache=True)
    seeded.set_seed(5).run(t="cat")
    assert len(entries(lmlang_home)) == n + 2 and not seeded.trace.records[-1].cached
    # Changing the adapter's weights changes the key even though its path is the same.
    weights = lora / "adapter_model.safetensors"
    make_lora(tiny_model_dir, tmp_path / "lora2", seed=2)
    weights.write_bytes((tmp_path / "lora2" / "adapter_model.safetensors").read_bytes())
    p = lmlang.compile(source(tiny_model_dir, adapter=str(lora)), cache=True)
    p.run(t="cat")
    assert not p.trace.records[-1].cached


def test_sampling_calls_are_cached_per_call_seed(tiny_model_dir, lmlang_home):
    src = (
        f'input t: str\nmodel m = "{tiny_model_dir}"\n'
        'query s(x: str) using m decode sample(temperature: 2.0, seed: 3) { "{x} [d]" where tokens(d) <= 4 }\n'
        'flow { d = [] for i in range(4) { d = d + [s(t).d] } emit d = d }\n'
    )
    out = lmlang.compile(src, cache=True).run(t="cat")
    assert len(set(out["d"])) >= 3 and len(entries(lmlang_home)) == 4
    again = lmlang.compile(src, cache=True)
    assert again.run(t="cat") == out and all(r.cached for r in again.trace.records)


def test_a_damaged_or_foreign_entry_is_recomputed(tiny_model_dir, lmlang_home):
    out = lmlang.compile(source(tiny_model_dir), cache=True).run(t="cat")
    (entry,) = entries(lmlang_home)
    for damage in (
        '{"format": 1, "key": "',
        "not json at all",
        json.dumps({"format": 1, "key": "other", "result": {}, "texts": {}}),
    ):
        entry.write_text(damage)
        p = lmlang.compile(source(tiny_model_dir), cache=True)
        assert p.run(t="cat") == out and not p.trace.records[-1].cached
        assert json.loads(entry.read_text())["result"] == out  # replaced by the recomputed result


def test_concurrent_writers_leave_whole_entries(tmp_path):
    """Several processes publish the same keys at once: every entry parses."""
    code = (
        "import sys\nfrom pathlib import Path\nfrom lmlang.runtime.result_cache import ResultCache\n"
        "c = ResultCache(Path(sys.argv[1]))\n"
        "for i in range(200):\n"
        "    k = f'{i % 10:02d}' + 'ab' * 19\n"
        "    c.put(k, query='q', model='m', result={'a': 'x' * (1000 + int(sys.argv[2]))}, texts={'a': 'x'}, prompt='p')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(w)], env=env) for w in range(4)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    cache = ResultCache(tmp_path)
    found = list(tmp_path.glob("*/*.json"))
    assert len(found) == 10 and not list(tmp_path.glob("*/*.tmp"))
    for f in found:
        entry = cache.get(f.stem)
        assert entry is not None and entry["result"]["a"].startswith("x" * 1000)


def test_cache_command_and_no_cache_option(tiny_model_dir, lmlang_home, tmp_path, monkeypatch):
    monkeypatch.delenv("LMLANG_CACHE", raising=False)
    script = tmp_path / "s.lm"
    script.write_text(source(tiny_model_dir))
    runner = CliRunner()
    r = runner.invoke(main, ["run", str(script), "--set", "t=cat", "--no-cache", "--json"])
    assert r.exit_code == 0, r.output
    assert not entries(lmlang_home)
    trace = tmp_path / "trace.jsonl"
    for _ in range(2):
        r = runner.invoke(main, ["run", str(script), "--set", "t=cat", "--json", "--trace", str(trace)])
        assert r.exit_code == 0, r.output
    assert [json.loads(x)["cached"] for x in trace.read_text().splitlines()] == [False, True]
    info = json.loads(runner.invoke(main, ["cache", "info", "--json"]).output)
    assert info["entries"] == 1 and info["bytes"] > 0 and info["path"] == str(lmlang_home / "results")
    assert "1 entry" in runner.invoke(main, ["cache", "info"]).output
    assert runner.invoke(main, ["cache", "clear"]).output.strip() == "removed 1 cached result"
    assert cache_info()["entries"] == 0 and cache_clear() == 0


def test_a_data_run_answered_by_the_cache_loads_no_model(tiny_model_dir, lmlang_home, tmp_path, monkeypatch):
    monkeypatch.delenv("LMLANG_CACHE", raising=False)
    script = tmp_path / "s.lm"
    script.write_text(source(tiny_model_dir))
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"t": f"r{i}"}) + "\n" for i in range(5)))
    outs = []
    for n in range(2):
        out = tmp_path / f"out{n}.jsonl"
        code = (
            "import sys\nfrom lmlang.cli import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n"
            "    print('TORCH', 'torch' in sys.modules, file=sys.stderr)\n    raise\n"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO), "LMLANG_HOME": str(lmlang_home)}
        env.pop("LMLANG_CACHE", None)
        p = subprocess.run(
            [sys.executable, "-c", code, "run", str(script), "--data", str(data), "--out", str(out), "--no-progress"],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert p.returncode == 0, p.stderr
        outs.append((out.read_text(), p.stderr))
    assert outs[0][0] == outs[1][0]
    assert "TORCH True" in outs[0][1] and "TORCH False" in outs[1][1]
