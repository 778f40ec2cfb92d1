"""Data runs keep every row: hostile rows (bad bytes, deep values, NaN,
lone surrogates, rows longer than the model's window, broken CSV) are
recorded with their reason and the run goes on; a --resume goes past them."""

import io
import json
import re

import pytest
from click.testing import CliRunner

from lmlang import datarun as D
from lmlang.cli import main
from lmlang.jsonl import MAX_DEPTH, parse_jsonl


def script(tmp_path, model_dir, body: str = 'flow { r = q(t) emit a = r.a, n = n + 1 }') -> str:
    f = tmp_path / "t.lm"
    f.write_text(
        "input t: str\ninput n: int = 1\n"
        f'model m = "{model_dir}"\n'
        'query q(x: str) using m { "{x} [a]" where a in ["yes", "no"] }\n' + body + "\n"
    )
    return str(f)


def invoke(*args):
    return CliRunner().invoke(main, ["run", *map(str, args), "--no-progress"])


def records(path) -> dict:
    out = {}
    for line in open(path, encoding="utf-8"):
        rec = json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in the output"))
        assert rec["row"] not in out, "a row written twice"
        out[rec["row"]] = rec
    return out


# ---------------------------------------------------------------- the JSONL reader


@pytest.mark.parametrize(
    "line, code, words",
    [
        (b'{"n": Infinity}', "invalid-json", "Infinity is not a JSON number"),
        (b'{"n": -Infinity}', "invalid-json", "-Infinity is not a JSON number"),
        (b'{"n": NaN}', "invalid-json", "NaN is not a JSON number"),
        (b'{"n": 1e999}', "invalid-json", "too large for a float"),
        (b'{"t": "\\ud800"}', "not-text", "lone surrogate (\\ud800)"),
        (b'{"\\udfff": 1}', "not-text", "lone surrogate (\\udfff)"),
        (b'{"t": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "too-deep", "nested deeper than"),
        (b'{"t": ' + b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b"}", "too-deep", "nested deeper than"),
        (b'{"t": "\xff"}', "not-utf8", "not UTF-8"),
    ],
)
def test_a_hostile_line_is_a_problem_of_that_line(line, code, words):
    rows = list(parse_jsonl(io.BytesIO(b'{"a": 1}\n' + line + b'\n{"b": 2}\n')))
    assert [r.line for r in rows] == [1, 2, 3]
    assert rows[0].value == {"a": 1} and rows[2].value == {"b": 2}
    assert rows[1].value is None and rows[1].code == code and words in rows[1].problem


def test_nesting_up_to_the_limit_is_fine():
    deep = b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1)
    (row,) = parse_jsonl(io.BytesIO(b'{"t": ' + deep + b"}\n"))
    assert row.value is not None


def test_an_overlong_line_is_skipped_without_holding_it(monkeypatch):
    import lmlang.jsonl as J

    monkeypatch.setattr(J, "MAX_LINE_BYTES", 1000)
    data = b'{"a": 1}\n{"t": "' + b"x" * 5000 + b'"}\n{"b": 2}\n'
    rows = list(J.parse_jsonl(io.BytesIO(data)))
    assert [(r.line, r.code) for r in rows] == [(1, ""), (2, "too-long"), (3, "")]
    assert rows[2].value == {"b": 2}
    lines = list(J.bounded_lines(io.BytesIO(data), limit=1000))
    assert lines[1] is None and max(len(x) for x in lines if x) < 1003


# ---------------------------------------------------------------- whole runs


def test_one_bad_row_never_stops_a_run_nor_its_batch(tiny_model_dir, tmp_path):
    f = script(tmp_path, tiny_model_dir)
    data = tmp_path / "rows.jsonl"
    bad = [
        b'{"t": "\xff\xfe"}',  # not UTF-8, within the first 8 KB
        b'{"t": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # 100k deep
        b'{"t": "x", "n": Infinity}',  # Infinity for an int
        b'{"t": "x", "n": NaN}',
        b'{"t": "\\ud800"}',  # a lone surrogate
        b'{"t": "x", "n": 1.9}',  # int from 1.9
        b'{"t": null}',  # str from null
        b'{"t": {"a": 1}}',  # str from a dict
        b'{"t": ["a"]}',  # str from a list
    ]
    lines = [b'{"t": "first"}', *bad, b'{"t": "last", "n": 2.0}']
    data.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"
    r = invoke(f, "--data", data, "--out", out, "--batch-size", 4)
    recs = records(out)
    assert sorted(recs) == list(range(len(lines))), r.output
    assert recs[0]["output"]["a"] in ("yes", "no")
    assert recs[len(lines) - 1]["output"]["n"] == 3  # 2.0 is a whole number: an int
    for i in range(1, len(lines) - 1):
        assert "error" in recs[i], recs[i]
    msgs = [recs[i]["error"]["message"] for i in range(1, len(lines) - 1)]
    assert "not UTF-8" in msgs[0] and "nested deeper" in msgs[1] and "Infinity is not a JSON number" in msgs[2]
    assert "NaN" in msgs[3] and "lone surrogate" in msgs[4]
    assert msgs[5] == "input 'n' expects int, got 1.9"
    assert msgs[6] == "input 't' expects str, got null"
    assert msgs[7] == "input 't' expects str, got a dict" and msgs[8] == "input 't' expects str, got a list"
    assert f"2 ok, {len(bad)} failed" in r.output and r.exit_code == 2

    # A resume skips every recorded row, the bad ones too, and goes on.
    lines.append(b'{"t": "new"}')
    data.write_bytes(b"\n".join(lines) + b"\n")
    r = invoke(f, "--data", data, "--out", out, "--resume")
    assert r.exit_code == 0, r.output
    assert "1 ok, 0 failed" in r.output and sorted(records(out)) == list(range(len(lines)))


def test_a_row_longer_than_the_window_is_refused_before_it_runs(tiny_model_dir, tmp_path, monkeypatch):
    """The tiny model's window is 2,048 tokens. A huge row is refused by its
    length in characters (never tokenized); one just past the window by its
    token count; neither reaches a forward pass."""
    import lmlang.runtime.decode as E

    f = script(tmp_path, tiny_model_dir)
    huge = "word " * 600_000  # 3 MB
    medium = "xq " * 3000  # > 2,048 tokens, < the character bound
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"t": t}) + "\n" for t in ["a", huge, medium, "b"]))
    fed = []
    for name in ("run_decoder", "decode_rows"):  # every way a batch reaches a forward pass
        real = getattr(E, name)
        monkeypatch.setattr(
            E,
            name,
            lambda lm, runs, *a, _real=real, **k: (
                fed.append(max(sum(len(c) for c in r.chunk_ids) for r in runs)) or _real(lm, runs, *a, **k)
            ),
        )
    out = tmp_path / "out.jsonl"
    r = invoke(f, "--data", data, "--out", out)
    recs = records(out)
    assert sorted(recs) == [0, 1, 2, 3] and r.exit_code == 1, r.output
    assert "output" in recs[0] and "output" in recs[3]
    assert re.search(
        r"is 3,000,0\d\d characters, more than the 2,048-token window of model m", recs[1]["error"]["message"]
    )
    assert "tokens; model m takes at most 2,048" in recs[2]["error"]["message"]
    assert fed and max(fed) < 100  # only the short rows were decoded


def test_refuse_overlong_bounds():
    from lmlang.errors import LmlangRuntimeError
    from lmlang.runtime.window import config_window, refuse_overlong

    class Tok:
        def get_vocab(self):
            return {"a": 0, "abcd": 1}

    class Cfg:
        max_position_embeddings = 10

    class Model:
        config = Cfg()

    class FakeLM:
        name, tokenizer, model = "m", Tok(), Model()

    lm = FakeLM()
    refuse_overlong(lm, "q", ["x" * 40])  # 40 chars may be 10 tokens of 4: not refused yet
    with pytest.raises(LmlangRuntimeError, match="41 characters"):
        refuse_overlong(lm, "q", ["x" * 41])
    refuse_overlong(lm, "q", ["x"], [[1] * 9])
    with pytest.raises(LmlangRuntimeError, match="10 tokens"):
        refuse_overlong(lm, "q", ["x"], [[1] * 4, [2] * 6])  # no room for an answer

    class Fused:
        name, tokenizer = "f", Tok()
        members = [(lm, 1.0), (FakeLM(), 1.0)]

    with pytest.raises(LmlangRuntimeError):
        refuse_overlong(Fused(), "q", ["x" * 41])
    assert config_window(type("C", (), {"text_config": Cfg()})()) == 10
    assert config_window(object()) is None


def test_a_non_finite_output_is_recorded_as_that_rows_error(tiny_model_dir, tmp_path):
    f = script(tmp_path, tiny_model_dir, 'flow { emit v = float(t) }')
    data = tmp_path / "rows.jsonl"
    data.write_text('{"t": "1.5"}\n{"t": "nan"}\n{"t": "-inf"}\n')
    out = tmp_path / "out.jsonl"
    r = invoke(f, "--data", data, "--out", out)
    recs = records(out)  # fails on a bare NaN
    assert recs[0]["output"] == {"v": 1.5}
    for i in (1, 2):
        assert "NaN or Infinity" in recs[i]["error"]["message"] and recs[i]["input"] == {"t": ["nan", "-inf"][i - 1]}
    assert r.exit_code == 1


def test_a_row_that_breaks_the_runtime_loses_only_itself():
    """run_each raising something unexpected (not an LmlangError) for one row
    of a chunk: the chunk's other rows run again one by one and are kept."""

    class Program:
        inputs = {"t": "str"}

        def run_each(self, rows, on_done, ids, chunk_size):
            from lmlang.runtime.executor import RowOutcome

            for i, r in zip(ids, rows):
                if r["t"] == "boom":
                    raise ZeroDivisionError("kaboom")
                on_done(RowOutcome(i, {"v": r["t"]}))

    rows = [D.DataRow(i, {"t": t}) for i, t in enumerate(["a", "b", "boom", "c"])]
    written = []
    summary = D.run_data(Program(), rows, written.append, chunk_size=4)
    by_row = {rec["row"]: rec for rec in written}
    assert sorted(by_row) == [0, 1, 2, 3] and len(written) == 4
    assert by_row[2]["error"] == {"type": "ZeroDivisionError", "message": "kaboom", "hint": "", "exit_code": 1}
    assert [by_row[i]["output"]["v"] for i in (0, 1, 3)] == ["a", "b", "c"]
    assert (summary.ok, summary.failed) == (3, 1)


# ---------------------------------------------------------------- CSV


def csv_rows(tmp_path, data: bytes) -> list:
    path = tmp_path / "rows.csv"
    path.write_bytes(data)
    return [(r.index, r.values, r.error and r.error.message) for r in D.read_rows(path)]


def test_csv_bad_bytes_spoil_their_row_only(tmp_path):
    rows = csv_rows(tmp_path, b"t,n\nhello,3\nbad\xff,2\nok,4\n")
    assert rows[0][1] == {"t": "hello", "n": "3"} and rows[2][1] == {"t": "ok", "n": "4"}
    assert rows[1][1] is None and "rows.csv:3: bad CSV row: not UTF-8 text (byte 0xff)" in rows[1][2]


def test_csv_unclosed_quote_does_not_swallow_rows(tmp_path):
    rows = csv_rows(tmp_path, b't,n\nhello,3\n"unclosed,2\nok,4\nok2,5\n')
    assert [r[0] for r in rows] == [0, 1, 2, 3]
    assert rows[1][1] is None and "rows.csv:3: bad CSV row: a quoted cell is never closed" in rows[1][2]
    assert [r[1] for r in rows[2:]] == [{"t": "ok", "n": "4"}, {"t": "ok2", "n": "5"}]
    # Closed by the next quoted cell's opening quote: malformed there, and the rows between still run.
    rows = csv_rows(tmp_path, b't,n\n"unclosed,2\nok,4\n"multi\nline",6\n')
    assert rows[0][1] is None and "rows.csv:2: bad CSV row" in rows[0][2]
    assert [r[1] for r in rows[1:]] == [{"t": "ok", "n": "4"}, {"t": "multi\nline", "n": "6"}]


def test_csv_quote_running_too_long_is_taken_for_unclosed(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "MAX_RECORD_LINES", 3)
    rows = csv_rows(tmp_path, b't\n"open\na\nb\nc\nd\n')
    assert rows[0][1] is None and "more than 3 lines" in rows[0][2]
    assert [r[1] for r in rows[1:]] == [{"t": x} for x in "abcd"]


def test_csv_malformed_quote_is_a_row_error(tmp_path):
    rows = csv_rows(tmp_path, b't,n\nx,"b"c\nok,4\n')
    assert rows[0][1] is None and "bad CSV row" in rows[0][2] and rows[1][1] == {"t": "ok", "n": "4"}


def test_csv_bom_is_skipped_and_a_duplicate_header_is_an_error(tmp_path):
    assert csv_rows(tmp_path, b"\xef\xbb\xbft,n\nhello,3\n") == [(0, {"t": "hello", "n": "3"}, None)]
    with pytest.raises(D.DataError, match="column 't' appears twice"):
        csv_rows(tmp_path, b"t,n,t\na,1,b\n")
    with pytest.raises(D.DataError, match="bad CSV header: not UTF-8"):
        csv_rows(tmp_path, b"t\xff\na\n")


def test_a_bad_csv_header_fails_before_models_load(tiny_model_dir, tmp_path, monkeypatch):
    from lmlang.program import Program

    f = script(tmp_path, tiny_model_dir)
    (tmp_path / "rows.csv").write_text("t,t\na,b\n")
    monkeypatch.setattr(Program, "load_models", lambda self: pytest.fail("models loaded"))
    r = invoke(f, "--data", tmp_path / "rows.csv", "--out", tmp_path / "out.jsonl")
    assert r.exit_code == 1 and "appears twice" in r.output
    assert not (tmp_path / "out.jsonl").exists()


def test_csv_run_end_to_end(tiny_model_dir, tmp_path):
    f = script(tmp_path, tiny_model_dir)
    data = tmp_path / "rows.csv"
    data.write_bytes(b'\xef\xbb\xbft,n\nhello,3\n"unclosed,2\nbad\xff,1\nok,1.9\nfine,4\n')
    out = tmp_path / "out.jsonl"
    r = invoke(f, "--data", data, "--out", out)
    recs = records(out)
    assert sorted(recs) == [0, 1, 2, 3, 4], r.output
    assert recs[0]["output"]["n"] == 4 and recs[4]["output"]["n"] == 5
    assert "never closed" in recs[1]["error"]["message"] and "not UTF-8" in recs[2]["error"]["message"]
    assert recs[3]["error"]["message"] == "input 'n' expects int, got '1.9'"
