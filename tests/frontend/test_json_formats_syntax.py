"""`x is json(formats: "annotate") ...`: the surface syntax of
JsonSchema.formats (constraints/formats.py)."""

import pytest

from lmlang.constraints import spec as C
from lmlang.errors import LmlangError
from lmlang.frontend import build

SCHEMA = '{"type": "object", "properties": {"u": {"type": "string", "format": "url"}}, "required": ["u"]}'


def script(opts: str, target: str = '"s.json"') -> str:
    return (
        f'model base = default\nquery f() using base {{\n  user "hi"\n  assistant "[o]"\n'
        f'  where o is json{opts} {target}\n}}\n'
    )


def hole_constraint(fe):
    (q,) = fe.checked.queries.values()
    return q.constraints["o"]


@pytest.fixture()
def folder(tmp_path):
    (tmp_path / "s.json").write_text(SCHEMA)
    return tmp_path


def compile_in(folder, text):
    return build(text, str(folder / "t.lm"), base_dir=folder)


def test_unknown_format_is_refused_by_default_and_with_enforce(folder):
    for opts in ("", '(formats: "enforce")'):
        with pytest.raises(LmlangError) as info:
            compile_in(folder, script(opts))
        d = info.value.diagnostics[0]
        assert "#/properties/u/format" in d.message and 'json(formats: "annotate")' in d.hint


def test_annotate_passes_and_reaches_the_constraint(folder):
    fe = compile_in(folder, script('(formats: "annotate")'))
    c = hole_constraint(fe)
    shapes = [p for p in (c.parts if isinstance(c, C.All) else (c,)) if isinstance(p, C.JsonSchema)]
    assert shapes and shapes[0].formats == "annotate"


def test_inline_json_takes_the_option_too(folder):
    fe = compile_in(folder, script('(formats: "annotate")', "{x: int}"))
    assert "annotate" in repr(hole_constraint(fe))


@pytest.mark.parametrize(
    "opts, message, hint",
    [
        ('(formats: "anotate")', "formats: 'anotate' is not an option", "did you mean 'annotate'?"),
        ('(fromats: "annotate")', "unknown json option 'fromats'", "did you mean 'formats'?"),
    ],
)
def test_bad_option_gets_did_you_mean(folder, opts, message, hint):
    with pytest.raises(LmlangError) as info:
        compile_in(folder, script(opts))
    d = info.value.diagnostics[0]
    assert d.message == message and d.hint == hint and d.span.line == 5
