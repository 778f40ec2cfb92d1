"""The embedded Python API: a compiled program you can run, inspect and extend."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .frontend import FrontEnd, build, build_file


class QueryFunction:
    """`program.queries["classify"](text="...")`: one query as a function."""

    def __init__(self, program: "Program", name: str):
        self.program, self.name = program, name

    def __call__(self, *args, **kwargs) -> dict:
        return self.program._executor().call_query(self.name, list(args), kwargs)

    def __repr__(self) -> str:
        info = self.program.frontend.checked.queries[self.name]
        params = ", ".join(p.name for p in info.decl.params)
        return f"<query {self.name}({params})>"


class Program:
    def __init__(self, frontend: FrontEnd, functions: dict | None = None, device: str = "auto"):
        self.frontend = frontend
        self.functions: dict[str, Callable] = dict(functions or {})
        self.device = device
        self._exec = None

    # ------------------------------------------------------------ inspection
    @property
    def graph(self):
        return self.frontend.compiled.graph

    @property
    def warnings(self):
        return self.frontend.warnings

    @property
    def inputs(self) -> dict:
        return {n: d.type.describe() for n, d in self.frontend.checked.inputs.items()}

    @property
    def queries(self) -> dict[str, QueryFunction]:
        return {name: QueryFunction(self, name) for name in self.frontend.checked.queries}

    # ------------------------------------------------------------ running
    def _executor(self):
        if self._exec is None:
            from .runtime.executor import Executor

            self._exec = Executor(self.frontend.compiled, self.functions, device=self.device)
        return self._exec

    def run(self, **inputs) -> dict:
        """Run the flow once; returns the emitted values by name."""
        return self._executor().run(inputs)

    def run_batch(self, rows: list[dict], *, errors: str = "raise") -> list:
        """Run the flow for many input rows, batching queries across rows.

        errors="raise" raises the first row's error after all rows ran;
        errors="return" puts the LmlangError in that row's place."""
        outcomes = self._executor().run_rows([dict(r) for r in rows])
        if errors == "raise":
            for o in outcomes:
                if o.error is not None:
                    raise o.error
        return [o.values if o.error is None else o.error for o in outcomes]

    @property
    def trace(self):
        return self._executor().trace

    def register(self, name: str, fn: Callable) -> "Program":
        """Make a Python function callable from the flow. The script is
        checked again, so calls to it are checked like any other."""
        self.functions[name] = fn
        fe = self.frontend
        self.frontend = build(fe.source.text, fe.source.filename, fe.checked.base_dir, frozenset(self.functions))
        self._exec = None
        return self


def compile(source: str, filename: str = "<string>", *, functions: dict | None = None, base_dir: str | Path | None = None,
            device: str = "auto") -> Program:
    functions = dict(functions or {})
    fe = build(source, filename, Path(base_dir) if base_dir else None, frozenset(functions))
    return Program(fe, functions, device)


def compile_file(path: str | Path, *, functions: dict | None = None, device: str = "auto") -> Program:
    functions = dict(functions or {})
    return Program(build_file(path, frozenset(functions)), functions, device)
