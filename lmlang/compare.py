"""Model-update compatibility (MUSCLE-style): run an old and a new program
over the same labelled rows and count what the update broke and fixed.

A *negative flip* is a row the old program got right and the new one gets
wrong; a *positive flip* is the reverse. Accuracy alone hides negative flips
(an update can gain accuracy overall and still break rows users relied on),
so the report lists them.

    from lmlang.compare import compare, swap_model
    old = lmlang.compile_file("classify.lm")
    new = swap_model(old, "clf", "tuned")        # same script, model rebound
    report = compare(old, new, rows, expected="label", output="label")
    print(report.render())

The CLI is `lmlang compare OLD.lm NEW.lm --data rows.jsonl --expected label`
or `lmlang compare FILE.lm --swap clf=tuned --data ... --expected ...`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .errors import DataError, LmlangError, ScriptError


class CompareError(ScriptError):
    """A bad comparison request (unknown output, missing expected column,
    unknown model for --swap): exit code 2 like a script error."""


# ---------------------------------------------------------------- the report


@dataclass
class RowComparison:
    index: int  # 0-based row number in the data
    inputs: dict  # the row without the expected column
    expected: object
    old: object = None  # the old program's output value (None on error)
    new: object = None
    old_ok: bool = False
    new_ok: bool = False
    old_error: str | None = None
    new_error: str | None = None

    @property
    def flip(self) -> str:
        """ "negative" (right -> wrong), "positive" (wrong -> right) or ""."""
        if self.old_ok and not self.new_ok:
            return "negative"
        if self.new_ok and not self.old_ok:
            return "positive"
        return ""

    def to_dict(self) -> dict:
        d = {
            "row": self.index,
            "input": self.inputs,
            "expected": self.expected,
            "old": self.old,
            "new": self.new,
            "old_ok": self.old_ok,
            "new_ok": self.new_ok,
        }
        if self.old_error is not None:
            d["old_error"] = self.old_error
        if self.new_error is not None:
            d["new_error"] = self.new_error
        return d


@dataclass
class CompareReport:
    expected: str  # the expected column
    output: str  # the emitted value compared
    old_name: str = "old"
    new_name: str = "new"
    rows: list[RowComparison] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.rows)

    @property
    def old_correct(self) -> int:
        return sum(r.old_ok for r in self.rows)

    @property
    def new_correct(self) -> int:
        return sum(r.new_ok for r in self.rows)

    @property
    def old_accuracy(self) -> float:
        return self.old_correct / self.total if self.total else 0.0

    @property
    def new_accuracy(self) -> float:
        return self.new_correct / self.total if self.total else 0.0

    @property
    def negative_flips(self) -> list[RowComparison]:
        return [r for r in self.rows if r.flip == "negative"]

    @property
    def positive_flips(self) -> list[RowComparison]:
        return [r for r in self.rows if r.flip == "positive"]

    @property
    def negative_flip_rate(self) -> float:
        """Negative flips over all rows (MUSCLE's NFR)."""
        return len(self.negative_flips) / self.total if self.total else 0.0

    @property
    def old_errors(self) -> int:
        return sum(r.old_error is not None for r in self.rows)

    @property
    def new_errors(self) -> int:
        return sum(r.new_error is not None for r in self.rows)

    def to_dict(self, rows: bool = False) -> dict:
        d = {
            "rows": self.total,
            "expected": self.expected,
            "output": self.output,
            "old": {
                "name": self.old_name,
                "correct": self.old_correct,
                "accuracy": self.old_accuracy,
                "errors": self.old_errors,
            },
            "new": {
                "name": self.new_name,
                "correct": self.new_correct,
                "accuracy": self.new_accuracy,
                "errors": self.new_errors,
            },
            "negative_flips": len(self.negative_flips),
            "positive_flips": len(self.positive_flips),
            "negative_flip_rate": self.negative_flip_rate,
            "negative_flip_rows": [r.to_dict() for r in self.negative_flips],
            "positive_flip_rows": [r.to_dict() for r in self.positive_flips],
        }
        if rows:
            d["all_rows"] = [r.to_dict() for r in self.rows]
        return d

    def render(self, max_rows: int = 20) -> str:
        """A plain-text report: accuracies, flip counts, the flipped rows."""
        from .builtins import value_text

        width = max(len(self.old_name), len(self.new_name), 3)
        lines = [f"{self.total} rows, comparing emitted '{self.output}' with column '{self.expected}'"]
        for tag, name, ok, acc, errs in (
            ("old", self.old_name, self.old_correct, self.old_accuracy, self.old_errors),
            ("new", self.new_name, self.new_correct, self.new_accuracy, self.new_errors),
        ):
            extra = f", {errs} errors" if errs else ""
            lines.append(f"  {tag} {name:<{width}}  accuracy {acc:6.1%}  ({ok}/{self.total}{extra})")
        neg, pos = self.negative_flips, self.positive_flips
        lines.append(f"  negative flips (right -> wrong): {len(neg)}  ({self.negative_flip_rate:.1%} of rows)")
        lines.append(f"  positive flips (wrong -> right): {len(pos)}")

        def show(title: str, flips: list[RowComparison]):
            if not flips:
                return
            lines.append("")
            lines.append(title)
            for r in flips[:max_rows]:
                old = r.old_error and f"error: {r.old_error}" or value_text(r.old)
                new = r.new_error and f"error: {r.new_error}" or value_text(r.new)
                lines.append(f"  row {r.index}: {_short(_inputs_text(r.inputs))}")
                lines.append(f"    expected {_short(value_text(r.expected))} | old {_short(old)} | new {_short(new)}")
            if len(flips) > max_rows:
                lines.append(f"  ... {len(flips) - max_rows} more")

        show("negative flips:", neg)
        show("positive flips:", pos)
        return "\n".join(lines)


def _inputs_text(inputs: dict) -> str:
    from .builtins import value_text

    return ", ".join(f"{k}={value_text(v)}" for k, v in inputs.items())


def _short(text: str, n: int = 80) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= n else text[: n - 3] + "..."


# ---------------------------------------------------------------- matching


def matches(value, expected) -> bool:
    """Whether an emitted value equals the expected one. Equal values match;
    otherwise both are compared as text (value_text, stripped of surrounding
    whitespace), so a CSV "12" matches an emitted int 12 and "true" matches
    True."""
    from .builtins import value_text

    if value is None:
        return expected is None
    if isinstance(value, str) and isinstance(expected, str):
        return value.strip() == expected.strip()
    if type(value) is type(expected) or (
        isinstance(value, (int, float))
        and isinstance(expected, (int, float))
        and not isinstance(value, bool)
        and not isinstance(expected, bool)
    ):
        return value == expected
    return value_text(value).strip() == value_text(expected).strip()


# ---------------------------------------------------------------- emitted names


def emitted_names(program) -> list[str]:
    """The names a program's flow can emit, in source order (static)."""
    from . import ast as A

    flow = program.frontend.checked.flow
    if flow is None:
        return []
    items = (item.name for node in flow.walk() if isinstance(node, A.Emit) for item in node.items)
    return list(dict.fromkeys(items))


def pick_output(prog_a, prog_b, output: str | None) -> str:
    """The emitted name to compare: `output`, or the one name both emit."""
    a, b = emitted_names(prog_a), emitted_names(prog_b)
    if output is not None:
        for prog, names in ((prog_a, a), (prog_b, b)):
            if output not in names:
                raise CompareError(
                    f"{_prog_name(prog)} emits no '{output}'", hint="it emits: " + (", ".join(names) or "nothing")
                )
        return output
    common = [n for n in a if n in b]
    if len(a) == 1 and a == b:
        return a[0]
    if not common:
        raise CompareError(
            "the two programs emit no common name",
            hint=f"old emits {', '.join(a) or 'nothing'}; new emits {', '.join(b) or 'nothing'}",
        )
    raise CompareError(
        "the programs emit several values; say which to compare",
        hint="pass --output NAME (output=NAME); shared: " + ", ".join(common),
    )


def _prog_name(prog) -> str:
    return getattr(prog.frontend.source, "filename", "<program>")


# ---------------------------------------------------------------- swapping a model


def swap_model(program, old: str, new: str):
    """A copy of `program` in which the model name `old` is bound to the
    expression of the declared model `new` (so every query, router, merge
    or adapter that uses `old` now uses `new`). Recompiled from the checked
    program; nothing is loaded."""
    from .compiler import compile_checked
    from .frontend import FrontEnd
    from .program import Program

    fe = program.frontend
    checked = fe.checked
    for name in (old, new):
        if name not in checked.models:
            raise CompareError(
                f"--swap: no model named '{name}'", hint="declared models: " + (", ".join(checked.models) or "none")
            )
    if old == new:
        return program
    refs = _model_refs(checked, checked.models[new].expr)
    if old in refs:
        raise CompareError(
            f"--swap {old}={new}: '{new}' is built from '{old}', so rebinding '{old}' to it is circular",
            hint=f"declare the model the queries use under its own name (model current = {old}) "
            f"and swap that: --swap current={new}",
        )
    models = dict(checked.models)
    models[old] = dataclasses.replace(models[old], expr=models[new].expr)
    swapped = dataclasses.replace(checked, models=models)
    try:
        compiled = compile_checked(swapped)
    except LmlangError as e:
        raise e.with_source(fe.source) from None
    return Program(
        FrontEnd(fe.source, swapped, compiled), dict(program.functions), program.device, schemas=program.schemas
    )


def _model_refs(checked, expr) -> set[str]:
    """Every model name `expr` depends on, through models and adapters
    (an adapter trained on `base: m` depends on m)."""
    from .values import model_refs, source_refs

    seen_models: set[str] = set()
    seen_adapters: set[str] = set()
    stack = list(model_refs(expr))
    while stack:
        name, _node = stack.pop()
        if name in checked.adapters:
            if name not in seen_adapters:
                seen_adapters.add(name)
                stack.extend(source_refs(checked.adapters[name].source))
        elif name not in seen_models:
            seen_models.add(name)
            if name in checked.models:
                stack.extend(model_refs(checked.models[name].expr))
    return seen_models


# ---------------------------------------------------------------- running


def read_labelled_rows(path: str | Path, expected: str, fmt: str | None = None, limit: int | None = None) -> list[dict]:
    """Rows of a .jsonl/.csv file, each checked to have the expected column.
    A bad row or a row without the column is a DataError naming the row."""
    from . import datarun as D

    rows = []
    for r in D.read_rows(path, fmt):
        if limit is not None and r.index >= limit:
            break
        if r.error is not None:
            raise r.error
        assert r.values is not None  # a row without an error has its values
        if expected not in r.values:
            raise DataError(
                f"{path}: row {r.index} has no '{expected}' column",
                hint="--expected names the column that holds the right answer",
            )
        rows.append(r.values)
    return rows


def run_outputs(program, rows: list[dict], expected: str, output: str) -> list[tuple[object, str | None]]:
    """(value, error text) per row: the program's `output` over each row's
    input columns (the expected column and columns naming no input dropped)."""
    inputs = set(program.inputs)
    used = [{k: v for k, v in row.items() if k in inputs and k != expected} for row in rows]
    results = program.run_batch(used, errors="return")
    out: list[tuple[object, str | None]] = []
    for res in results:
        if isinstance(res, BaseException):
            out.append((None, getattr(res, "message", None) or str(res)))
        elif not isinstance(res, dict) or output not in res:
            out.append((None, f"emitted no '{output}'"))
        else:
            out.append((res[output], None))
    return out


def compare(
    prog_a,
    prog_b,
    rows: Iterable[dict],
    expected: str,
    output: str | None = None,
    *,
    old_name: str = "old",
    new_name: str = "new",
) -> CompareReport:
    """Run both programs over `rows` (dicts of columns; `expected` is the
    right answer, the other columns feed inputs of the same name) and
    compare each one's emitted `output` with it."""
    rows = [dict(r) for r in rows]
    for i, r in enumerate(rows):
        if expected not in r:
            raise DataError(f"row {i} has no '{expected}' column")
    output = pick_output(prog_a, prog_b, output)
    a = run_outputs(prog_a, rows, expected, output)
    b = run_outputs(prog_b, rows, expected, output)
    report = CompareReport(expected, output, old_name, new_name)
    for i, (row, (va, ea), (vb, eb)) in enumerate(zip(rows, a, b)):
        exp = row[expected]
        report.rows.append(
            RowComparison(
                index=i,
                inputs={k: v for k, v in row.items() if k != expected},
                expected=exp,
                old=va,
                new=vb,
                old_ok=ea is None and matches(va, exp),
                new_ok=eb is None and matches(vb, exp),
                old_error=ea,
                new_error=eb,
            )
        )
    return report
