"""Names: one namespace for the declarations of a script and of the files it
`use`s, the inputs' types and defaults, and type annotations.

Imports. `use "file.lm"` joins the file's declarations (and its imports')
into one namespace; its flow does not run; a file reached along two paths
counts once; paths inside it stay relative to its own folder.
"""

from __future__ import annotations

from pathlib import Path

from .. import ast as A
from .. import types as T
from ..errors import CheckError, LmlangError
from ..source import Source, decode_script
from ..values import NOT_PLAIN, plain_value
from .context import Context, article, name_span, probe
from .program import CheckedProgram, PathRefused

_TABLES = {
    A.InputDecl: "inputs",
    A.ModelDecl: "models",
    A.AdapterDecl: "adapters",
    A.RouterDecl: "routers",
    A.QueryDecl: "query_decls",
    A.DefDecl: "defs",
    A.DataDecl: "datasets",
    A.EvalDecl: "evals",
}


def collect(cx: Context, program: A.Program) -> list:
    """Every declaration (imports joined in), entered in its table by name;
    duplicates are errors. The main script's flow becomes the program's."""
    out = cx.out
    decls: list = []
    for d in program.decls:
        decls.extend(load_import(cx, d) if isinstance(d, A.UseDecl) else [d])
    seen: dict[str, A.Node] = {}
    for d in decls:
        if isinstance(d, A.FlowDecl):
            if out.flow is not None:
                cx.error("a program has one flow", d, "merge the two flow blocks")
            elif getattr(d.span, "filename", None) == cx.source.filename:
                out.flow = d
            continue
        if isinstance(d, A.ExportDecl):
            out.exports.append(d)
            continue
        name = d.name
        if name in seen and seen[name].span == d.span:
            continue  # one file imported along two paths
        if name in seen:
            prev = seen[name].span
            where = "" if prev.filename == d.span.filename else f" of {prev.filename}"
            cx.error(f"'{name}' is already defined at line {prev.line}{where}", name_span(d), "pick another name")
            continue
        seen[name] = d
        getattr(out, _TABLES[type(d)])[name] = d
    return decls


def load_import(cx: Context, use: A.UseDecl) -> list:
    """The declarations of a `use`d file, checked on their own first (their
    errors become this check's); [] when it cannot be read or checked."""
    from ..parser import parse
    from .passes import check

    try:
        path = cx.out.confined_path(use.path, use)
    except PathRefused as e:
        cx.refuse("imported file", use.path, use, e)
        return []
    except (OSError, ValueError, RuntimeError):
        cx.error(f"invalid path {use.path!r}", use)
        return []
    here = Path(cx.source.filename).resolve()
    if path in cx.import_stack or path == here:
        chain = " -> ".join(p.name for p in (*cx.import_stack, here, path))
        cx.error(f"import cycle: {chain}", use, "remove one of the `use` lines")
        return []
    if not probe(path, "file"):
        cx.error(f"imported file not found: {use.path}", use, f"looked for {path}")
        return []
    try:
        text = decode_script(path.read_bytes(), str(path))
    except OSError as e:
        cx.error(f"cannot read {use.path}: {getattr(e, 'strerror', None) or e}", use)
        return []
    except LmlangError as e:  # not UTF-8: the bad byte's position in the used file
        cx.out.sources[str(path)] = e.source
        cx.error(e.message, e.span, e.hint)
        return []
    try:
        sub_out = check(
            parse(text, str(path)),
            Source(text, str(path)),
            path.parent,
            cx.functions,
            cx.schemas,
            (*cx.import_stack, here),
            roots=cx.out.roots,
        )
    except CheckError as e:
        cx.out.sources.update(e.sources)
        cx.report.extend(e.diagnostics)
        return []
    except LmlangError as e:
        cx.out.sources[str(path)] = Source(text, str(path))
        cx.error(e.message, e.span, e.hint)
        return []
    cx.out.sources.update(sub_out.sources)
    # Imported declarations (its own imports included) join this namespace;
    # an imported flow does not run. They are checked again here, with
    # file references still relative to their own file.
    return _imported_decls(sub_out)


def _imported_decls(sub_out: CheckedProgram) -> list:
    return [
        *sub_out.models.values(),
        *sub_out.adapters.values(),
        *sub_out.routers.values(),
        *sub_out.inputs.values(),
        *[q.decl for q in sub_out.queries.values()],
        *sub_out.datasets.values(),  # data sets are shared; evals and exports run only in their own script
    ]


def check_inputs(cx: Context) -> None:
    for d in cx.out.inputs.values():
        t = type_of_ref(cx, d.type)
        if t is None or d.default is None:
            continue
        dv = plain_value(d.default)
        if dv is NOT_PLAIN or not T.assignable(T.of_python(dv), t):
            cx.error(f"default for input '{d.name}' is not {article(t)}", d.default)


def type_of_ref(cx: Context, ref: A.TypeRef | None) -> T.T | None:
    """The type an annotation names (ANY when there is none); None, with an
    error, for an unknown type."""
    if ref is None:
        return T.ANY
    if ref.name == "list":
        inner = type_of_ref(cx, ref.arg) if ref.arg else T.ANY
        return T.list_of(inner or T.ANY)
    if ref.name in T.SCALARS and ref.arg is None:
        return T.T(ref.name)
    cx.error(
        f"unknown type '{ref.describe()}'",
        ref,
        cx.did_you_mean(ref.name, (*T.SCALARS, "list")) or "types: str, int, float, bool, json, any, list[T]",
    )
    return None
