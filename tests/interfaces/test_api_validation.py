"""The Python API validates what it is given instead of guessing: run_batch's
`errors`, rows that are not dicts (named by row), a query parameter given
both by position and by name, and input values of the wrong type."""

import pytest

import lmlang
from lmlang.runtime.executor import InputError

QUERY = 'query q(x: str) using m { "{x} [a]" where a in ["yes", "no"] }\n'


@pytest.fixture(scope="module")
def prog(tiny_model_dir):
    return lmlang.compile(
        f'input t: str\ninput n: int = 1\nmodel m = "{tiny_model_dir}"\n{QUERY}flow {{ emit t = t, n = n + 1 }}\n'
    )


@pytest.mark.parametrize("bad", ["bogus", "Return", None, True])
def test_run_batch_errors_is_validated(prog, bad):
    with pytest.raises(ValueError, match="errors must be 'raise' or 'return'"):
        prog.run_batch([{"t": "a"}], errors=bad)


def test_non_dict_rows_are_named_and_the_others_run(prog):
    out = prog.run_batch([{"t": "a"}, ["t", "b"], None, "t=c", {"t": "d"}], errors="return")
    assert out[0] == {"t": "a", "n": 2} and out[4] == {"t": "d", "n": 2}
    assert (
        isinstance(out[1], InputError)
        and out[1].message == "row 1: expected a dict of input names to values, got a list"
    )
    assert out[2].message == "row 2: expected a dict of input names to values, got None"
    assert out[3].message == "row 3: expected a dict of input names to values, got a str"
    with pytest.raises(InputError, match="row 1: expected a dict"):
        prog.run_batch([{"t": "a"}, 7])
    with pytest.raises(TypeError, match="for one row use run"):
        prog.run_batch({"t": "a"})


def test_run_each_names_a_bad_row_by_its_id(prog):
    seen = {}
    prog.run_each([{"t": "a"}, 3], lambda o: seen.__setitem__(o.index, o), ids=[10, 11])
    assert seen[10].error is None and seen[10].values == {"t": "a", "n": 2}
    assert "row 11: expected a dict" in seen[11].error.message
    with pytest.raises(ValueError, match="ids ran out at row 1"):
        prog.run_each([{"t": "a"}, {"t": "b"}], lambda o: None, ids=[0])


def test_a_parameter_given_twice_is_refused(prog):
    q = prog.queries["q"]
    with pytest.raises(lmlang.LmlangRuntimeError, match="got 'x' twice, by position and by name"):
        q("a", x="b")
    with pytest.raises(lmlang.LmlangRuntimeError, match="got 'x' twice"):
        prog.call_query("q", ["a"], {"x": "b"})
    with pytest.raises(TypeError, match="args must be a list or tuple"):
        prog.call_query("q", "a")
    with pytest.raises(TypeError, match="kwargs must be a dict"):
        prog.call_query("q", ["a"], [("x", "b")])


@pytest.mark.parametrize(
    "row, message",
    [
        ({"t": "a", "n": 1.9}, "input 'n' expects int, got 1.9"),
        ({"t": None}, "input 't' expects str, got null"),
        ({"t": {"k": 1}}, "input 't' expects str, got a dict"),
        ({"t": ["a"]}, "input 't' expects str, got a list"),
        ({"t": "a", "n": float("nan")}, "input 'n' expects int"),
        ({"t": "a", "n": True}, "input 'n' expects int"),
    ],
)
def test_inputs_are_never_coerced_silently(prog, row, message):
    (out,) = prog.run_batch([row], errors="return")
    assert isinstance(out, lmlang.LmlangError) and message in out.message, out


def test_whole_floats_are_ints(prog):
    assert prog.run(t="a", n=2.0) == {"t": "a", "n": 3}


def test_list_inputs_check_their_items(tiny_model_dir):
    p = lmlang.compile(
        f'input tags: list[str]\ninput w: float = 1.0\nmodel m = "{tiny_model_dir}"\n{QUERY}'
        "flow { emit tags = tags, w = w }\n"
    )
    assert p.run(tags=["a", "b"], w=2) == {"tags": ["a", "b"], "w": 2.0}
    out = p.run_batch(
        [{"tags": [{"k": 1}]}, {"tags": {"a": 1}}, {"tags": ["a"], "w": float("inf")}, {"tags": ["ok"]}],
        errors="return",
    )
    assert "input 'tags' expects list[str], got a dict (at [0])" in out[0].message
    assert "input 'tags' expects list[str], got a dict" in out[1].message
    assert "input 'w' expects float, got inf" in out[2].message
    assert out[3] == {"tags": ["ok"], "w": 1.0}
