"""What the checker hands on: the checked program (declarations by kind,
checked queries, the flow) and how file references resolve."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import ast as A
from .. import types as T
from ..frozen import frozen
from ..source import Source


@frozen
class QueryInfo:
    decl: A.QueryDecl
    holes: tuple[str, ...]
    constraints: dict                     # hole -> Constraint | None
    decoder: tuple[str, tuple]            # (name, sorted (key, value) pairs with defaults)
    using: A.ModelExpr
    chat: bool
    distribution: tuple[str, tuple[str, ...]] | None
    result_type: T.T

    @property
    def name(self) -> str:
        return self.decl.name


@dataclass
class CheckedProgram:
    source: Source
    base_dir: Path
    program: A.Program
    inputs: dict = field(default_factory=dict)      # name -> InputDecl
    models: dict = field(default_factory=dict)      # name -> ModelDecl
    adapters: dict = field(default_factory=dict)    # name -> AdapterDecl
    routers: dict = field(default_factory=dict)     # name -> RouterDecl
    queries: dict = field(default_factory=dict)     # name -> QueryInfo
    flow: A.FlowDecl | None = None
    warnings: list = field(default_factory=list)
    sources: dict = field(default_factory=dict)     # filename -> Source (imports)
    functions: frozenset = frozenset()
    query_decls: dict = field(default_factory=dict)  # name -> QueryDecl (before checking)

    def path_for(self, text: str, node) -> Path:
        """A file reference resolved relative to the folder of the script
        that wrote it (imports keep their own folder)."""
        return resolve_path(text, node, self.base_dir, self.source.filename)

    def kind_of(self, name: str) -> str:
        """What a declared name is ("a model", "a query", ...), "" if none."""
        for table, kind in ((self.models, "a model"), (self.adapters, "an adapter"), (self.routers, "a router"),
                            (self.inputs, "an input"), (self.query_decls, "a query")):
            if name in table:
                return kind
        return ""


def resolve_path(text: str, node, base_dir: Path, main_file: str | None = None) -> Path:
    """The main script's references resolve against base_dir (its folder, or
    the base_dir given to compile()); an imported file's against its own folder."""
    p = Path(text).expanduser()
    if p.is_absolute():
        return p
    filename = getattr(getattr(node, "span", None), "filename", "")
    if filename and not filename.startswith("<") and filename != main_file:
        return (Path(filename).resolve().parent / p).resolve()
    return (base_dir / p).resolve()
