"""The embedded Python API on the tiny model: compile / compile_file, run,
run_batch with progress, queries as functions with typed results, Python
functions in the flow, seeds, streaming and pydantic schemas."""

import pytest

import lmlang
from lmlang.runtime.executor import RowOutcome

QUERY = 'query q(x: str) using m { "{x} [a]" where a in ["yes", "no"] }\n'
TYPED = (
    'query typed(x: str) using m {\n    "{x} [n] [p] [b]"\n    where n is int and tokens(n) <= 3\n'
    '    where p is json { ok: bool, k: int(0..9) }\n    where b is bool\n}\n'
)


@pytest.fixture(scope="module")
def prog(tiny_model_dir):
    return lmlang.compile(
        f'input t: str\nmodel m = "{tiny_model_dir}"\n{QUERY}{TYPED}flow {{ r = q(t) emit a = r.a, t = t }}\n'
    )


def test_compile_file_and_run(tiny_model_dir, tmp_path):
    f = tmp_path / "p.lm"
    f.write_text(f'input t: str = "hi"\nmodel m = "{tiny_model_dir}"\n{QUERY}flow {{ r = q(t) emit a = r.a }}\n')
    p = lmlang.compile_file(f)
    assert p.inputs == {"t": "str"} and set(p.queries) == {"q"}
    assert p.run()["a"] in ("yes", "no")
    assert p.run(t="other")["a"] in ("yes", "no")


def test_queries_are_functions_with_typed_results(prog):
    q = prog.queries["q"]
    assert repr(q) == "<query q(x)>"
    assert q("hello") == q(x="hello") and q("hello")["a"] in ("yes", "no")
    out = prog.queries["typed"](x="hi")
    assert type(out["n"]) is int and type(out["b"]) is bool
    assert isinstance(out["p"], dict) and type(out["p"]["ok"]) is bool and 0 <= out["p"]["k"] <= 9
    with pytest.raises(lmlang.LmlangRuntimeError, match="has no parameter 'y'"):
        q(y="bad")


def test_run_batch_progress_callable_and_bar(prog, capfd):
    seen = []
    rows = [{"t": f"row {i}"} for i in range(5)]
    out = prog.run_batch(rows, progress=lambda done, total: seen.append((done, total)))
    assert [o["t"] for o in out] == [r["t"] for r in rows]  # results keep the input order
    assert seen == [(i, 5) for i in range(1, 6)]
    prog.run_batch(rows[:2], progress=True)
    assert "2/2" in capfd.readouterr().err


def test_run_batch_errors_return_and_raise(prog):
    out = prog.run_batch([{"t": "ok"}, {}], errors="return")
    assert out[0]["a"] in ("yes", "no") and isinstance(out[1], lmlang.ScriptError)
    with pytest.raises(lmlang.ScriptError, match="missing input 't'"):
        prog.run_batch([{"t": "ok"}, {}])


def test_run_each_reports_rows_as_they_finish_in_chunks(prog):
    got: list[RowOutcome] = []
    prog.run_each(({"t": str(i)} for i in range(5)), got.append, ids=[10, 11, 12, 13, 14], chunk_size=2)
    assert sorted(o.index for o in got) == [10, 11, 12, 13, 14]
    assert all(o.error is None and o.values["a"] in ("yes", "no") for o in got)


def test_registered_python_functions_run_in_the_flow(tiny_model_dir):
    calls = []

    def shout(s):
        calls.append(s)
        return s.upper() + "!"

    src = (
        f'input t: str\nmodel m = "{tiny_model_dir}"\n{QUERY}'
        "flow { r = q(shout(t)) emit loud = shout(t), a = r.a, n = count(r.a) }\n"
    )
    with pytest.raises(lmlang.CheckError, match="shout"):
        lmlang.compile(src)  # unknown until registered
    p = lmlang.compile(src, functions={"shout": shout, "count": len})
    out = p.run(t="hey")
    assert out["loud"] == "HEY!" and out["n"] == len(out["a"]) and calls == ["hey", "hey"]
    assert "HEY!" in p.trace.records[-1].prompt
    p.register("shout", lambda s: s[::-1])  # replace it; the script is checked again
    assert p.run(t="abc")["loud"] == "cba"

    def boom(s):
        raise ValueError("no luck")

    p.register("shout", boom)
    with pytest.raises(lmlang.LmlangRuntimeError, match=r"function shout\(\) failed: ValueError: no luck"):
        p.run(t="x")


def test_set_seed_gives_reproducible_samples(tiny_model_dir):
    src = (
        f'model m = "{tiny_model_dir}"\n'
        'query s(x: str) using m decode sample(temperature: 2.0) { "{x} [a]" where tokens(a) <= 6 }\n'
    )
    p = lmlang.compile(src)
    first = p.set_seed(5).queries["s"](x="hi")
    assert p.set_seed(5).queries["s"](x="hi") == first and p.seed == 5
    with pytest.raises(ValueError):
        p.set_seed(-1)


def test_stream_yields_pieces_that_join_to_the_hole_text(prog):
    s = prog.queries["q"].stream(x="hello")
    pieces = list(s)
    assert "".join(pieces) == s.result["a"] and s.result["a"] in ("yes", "no")


def test_stream_is_token_by_token(tiny_model_dir):
    p = lmlang.compile(
        f'model m = "{tiny_model_dir}"\n'
        'query w(x: str) using m { "{x} [a]" where tokens(a) <= 8 and len(a) <= 40 }\n'
    )
    s = p.queries["w"].stream(x="hello")
    pieces = list(s)
    assert len(pieces) > 1 and "".join(pieces) == s.result["a"]
    assert {h for h, _ in s.pieces} == {"a"}


def test_batch_size_reaches_the_decoder_and_chunks(tiny_model_dir, monkeypatch):
    import lmlang.runtime.decode as D
    import lmlang.runtime.executor as X

    p = lmlang.compile(f'input t: str\nmodel m = "{tiny_model_dir}"\n{QUERY}flow {{ emit a = q(t).a }}\n', batch_size=2)
    assert p.batch_size == 2
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            p.batch_size = bad
    decoded, chunks = [], []
    real_decoder, real_rows = D.decode_rows, X.Executor.run_rows
    monkeypatch.setattr(
        D, "decode_rows", lambda lm, runs, *a, **k: decoded.append(len(runs)) or real_decoder(lm, runs, *a, **k)
    )
    monkeypatch.setattr(
        X.Executor, "run_rows", lambda self, rows, **k: chunks.append(len(rows)) or real_rows(self, rows, **k)
    )
    rows = [{"t": f"r{i}"} for i in range(5)]
    p.run_each(rows, lambda o: None, chunk_size=5)
    assert (chunks, decoded) == ([5], [2, 2, 1])  # one chunk, decoded two rows at a time
    p.batch_size = 3  # applies to the running program too
    chunks.clear(), decoded.clear()
    p.run_each(rows, lambda o: None)
    assert (chunks, decoded) == ([3, 2], [3, 2])  # chunks default to the batch size


def test_trace_file_gets_a_line_per_query_until_closed(tiny_model_dir, tmp_path):
    import json

    path = tmp_path / "trace.jsonl"
    p = lmlang.compile(
        f'input t: str\nmodel m = "{tiny_model_dir}"\n{QUERY}flow {{ emit a = q(t).a }}\n', trace_file=path
    )
    p.run_batch([{"t": "a"}, {"t": "b"}])
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["query"] for r in lines] == ["q", "q"] and sorted(r["row"] for r in lines) == [0, 1]
    assert len(p.trace.records) == 2
    p.close()
    p.run(t="c")
    assert len(p.trace.records) == 3 and len(path.read_text().splitlines()) == 2


def test_call_query_with_on_token(prog):
    pieces = []
    out = prog.call_query("q", ["hello"], on_token=lambda hole, text: pieces.append((hole, text)))
    assert out == prog.queries["q"]("hello") == prog.call_query("q", kwargs={"x": "hello"})
    assert {h for h, _ in pieces} == {"a"} and "".join(t for _, t in pieces) == out["a"]


def test_schema_of_pydantic_model():
    pydantic = pytest.importorskip("pydantic")

    class Person(pydantic.BaseModel):
        name: str
        age: int

    schema = lmlang.program.schema_of(Person)
    assert schema["properties"]["age"]["type"] == "integer" and set(schema["required"]) == {"name", "age"}
    assert lmlang.program.schema_of({"type": "object"}) == {"type": "object"}
    with pytest.raises(TypeError):
        lmlang.program.schema_of(42)


def test_pydantic_model_as_json_schema(tiny_model_dir):
    pydantic = pytest.importorskip("pydantic")

    class Flag(pydantic.BaseModel):
        ok: bool

    p = lmlang.compile(
        f'model m = "{tiny_model_dir}"\nquery f(x: str) using m {{ "{{x}} [v]" where v is json "Flag" }}\n',
        schemas={"Flag": Flag},
    )
    out = p.queries["f"](x="hi")
    assert Flag.model_validate(out["v"]).ok in (True, False)
