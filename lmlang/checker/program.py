"""What the checker hands on: the checked program (declarations by kind,
checked queries, the flow) and how file references resolve.

File references are confined: a script reads only files under its own
folder (the main script's, for imports too) and the folders the caller
allows (`--allow-path`, `allow_paths=`, LMLANG_ALLOW_PATH). A reference is
resolved first (`~`, `..`, every symlink followed), then checked, so a link
inside the tree that points out of it is refused like the path it points to.
"""

from __future__ import annotations

from pathlib import Path

from .. import ast as A
from .. import types as T
from ..frozen import field, frozen, record
from ..source import Source


@frozen
class QueryInfo:
    decl: A.QueryDecl
    holes: tuple[str, ...]
    constraints: dict  # hole -> Constraint | None
    decoder: tuple[str, tuple]  # (name, sorted (key, value) pairs with defaults)
    using: A.ModelExpr
    chat: bool
    distribution: tuple[str, tuple[str, ...]] | None
    result_type: T.T
    guard: tuple | None = None  # second wave: ("leak", ((option, value), ...)) (guards.py)

    @property
    def name(self) -> str:
        return self.decl.name


@record
class CheckedProgram:
    """What the checker hands the compiler: the declarations by kind, their
    types and lowered constraints, and the warnings."""

    source: Source
    base_dir: Path
    program: A.Program
    inputs: dict = field(default_factory=dict)  # name -> InputDecl
    models: dict = field(default_factory=dict)  # name -> ModelDecl
    adapters: dict = field(default_factory=dict)  # name -> AdapterDecl
    routers: dict = field(default_factory=dict)  # name -> RouterDecl
    queries: dict = field(default_factory=dict)  # name -> QueryInfo
    flow: A.FlowDecl | None = None
    warnings: list = field(default_factory=list)
    sources: dict = field(default_factory=dict)  # filename -> Source (imports)
    functions: frozenset = frozenset()
    query_decls: dict[str, A.QueryDecl] = field(default_factory=dict)  # name -> QueryDecl (before checking)
    roots: tuple = ()  # resolved folders file references may reach
    defs: dict = field(default_factory=dict)  # name -> DefDecl (flow functions)
    datasets: dict = field(default_factory=dict)  # name -> DataDecl
    data_columns: dict = field(default_factory=dict)  # data set name -> its columns (None: known when it runs)
    evals: dict = field(default_factory=dict)  # name -> EvalDecl
    exports: list = field(default_factory=list)  # ExportDecl, in order

    def path_for(self, text: str, node) -> Path:
        """A file reference resolved relative to the folder of the script
        that wrote it (imports keep their own folder). Not confined: the
        checker confines every reference (confined_path) before the
        compiler resolves it again with this."""
        return resolve_path(text, node, self.base_dir, self.source.filename)

    def confined_path(self, text: str, node) -> Path:
        """path_for, refused (PathRefused) outside the allowed folders."""
        return confine(self.path_for(text, node), self.roots or (self.base_dir.resolve(),))

    def kind_of(self, name: str) -> str:
        """What a declared name is ("a model", "a query", ...), "" if none."""
        for table, kind in (
            (self.models, "a model"),
            (self.adapters, "an adapter"),
            (self.routers, "a router"),
            (self.inputs, "an input"),
            (self.query_decls, "a query"),
            (self.defs, "a function"),
            (self.datasets, "a data set"),
            (self.evals, "an eval"),
        ):
            if name in table:
                return kind
        return ""


class PathRefused(ValueError):
    """A file reference that resolves outside every allowed folder."""

    def __init__(self, path: Path, roots: tuple):
        super().__init__(f"{path} is outside {', '.join(map(str, roots))}")
        self.path, self.roots = path, roots


def allowed_roots(base_dir: Path, allow_paths=()) -> tuple[Path, ...]:
    """The folders a script's file references may reach: its own folder and
    the ones the caller allows, resolved (a symlinked folder counts as its
    target), without duplicates."""
    roots = [Path(base_dir).resolve()]
    for p in allow_paths:
        root = Path(p).expanduser().resolve()
        if root not in roots:
            roots.append(root)
    return tuple(roots)


def confine(path: Path, roots: tuple) -> Path:
    """`path` (already resolved) when it lies under one of `roots`."""
    if any(path == r or path.is_relative_to(r) for r in roots):
        return path
    raise PathRefused(path, roots)


def resolve_path(text: str, node, base_dir: Path, main_file: str | None = None) -> Path:
    """The main script's references resolve against base_dir (its folder, or
    the base_dir given to compile()); an imported file's against its own
    folder. Symlinks are followed (what a confinement check needs to see)."""
    p = Path(text).expanduser()
    if p.is_absolute():
        return p.resolve()
    filename = getattr(getattr(node, "span", None), "filename", "")
    if filename and not filename.startswith("<") and filename != main_file:
        return (Path(filename).resolve().parent / p).resolve()
    return (base_dir / p).resolve()
