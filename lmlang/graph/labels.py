"""One-line labels of graph nodes and IR (graph exports, the builder's
messages): inputs named by their declared names, statements as short
source text."""

from __future__ import annotations

import json

from . import ir as I
from .specs import AdapterMergeSpec, ApplySpec, FuseSpec, MergeSpec, QuerySpec, RouterSpec, StepSpec, TrainSpec


def node_label(compiled, nid: str) -> str:
    """A one-line description of a node of `compiled` (a Compiled), naming
    its inputs by their declared names (`apply base + polite*0.8`,
    `merge ties(base; tuned, math)`)."""
    spec = compiled.spec(nid)

    def name(ref: str) -> str:
        text = compiled.display_name(ref)
        return f"({text})" if " " in text and not compiled.node_names.get(ref) else text

    if isinstance(spec, ApplySpec):
        return f"{name(spec.base)} + " + " + ".join(f"{name(a)}{'' if s == 1 else f'*{s:g}'}" for a, s in spec.adapters)
    if isinstance(spec, MergeSpec):
        models = ", ".join(f"{name(m)}{_weight_text(p)}" for m, p in spec.models)
        base = f"base: {name(spec.base)}; " if spec.base else ""
        return f"merge {spec.method}({base}{models})"
    if isinstance(spec, AdapterMergeSpec):
        return f"merge {spec.method}(" + ", ".join(f"{name(a)}{_weight_text(p)}" for a, p in spec.adapters) + ")"
    if isinstance(spec, FuseSpec):
        text = ""
        for i, (m, w) in enumerate(spec.members):
            sign = (" - " if i else "-") if w < 0 else (" + " if i else "")
            text += f"{sign}{'' if abs(w) == 1 else f'{abs(w):g}*'}{name(m)}"
        return f"fuse {spec.mode}: {text}"
    if isinstance(spec, TrainSpec):
        return f"train lora on {spec.dataset or spec.data.rsplit('/', 1)[-1]} (base: {name(spec.base)})"
    if isinstance(spec, RouterSpec):
        return (
            f"router {spec.name} ({spec.mode}: "
            + ", ".join(name(e) for e, _ in spec.experts)
            + (f"; default {name(spec.default)}" if spec.default else "")
            + ")"
        )
    if isinstance(spec, QuerySpec):
        params = ", ".join(p for p, _ in spec.params)
        holes = ", ".join(spec.holes)
        grown = any(kind == "block" for _role, parts in spec.segments for kind, _ in parts)
        return f"query {spec.name}({params}) -> [{holes}]{' (grown prompt)' if grown else ''} using {name(spec.model)}"
    if isinstance(spec, StepSpec):
        return stmt_text(spec.stmt)
    return spec.label()


def _weight_text(params: tuple) -> str:
    d = dict(params)
    if not d:
        return ""
    if set(d) == {"weight"}:
        return f":{d['weight']:g}" if isinstance(d["weight"], (int, float)) else ""
    return ":{" + ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else str(k) for k, v in d.items()) + "}"


def expr_text(e: I.Expr) -> str:
    """An expression back as short source text."""
    match e:
        case I.Lit(value):
            if isinstance(value, str):
                return json.dumps(value, ensure_ascii=False)
            return "true" if value is True else "false" if value is False else str(value)
        case I.Var(name):
            return name
        case I.Attr(obj, name):
            return f"{expr_text(obj)}.{name}"
        case I.Index(obj, index):
            return f"{expr_text(obj)}[{expr_text(index)}]"
        case I.ListExpr(items):
            return "[" + ", ".join(expr_text(x) for x in items) + "]"
        case I.Call(func, args, kwargs):
            parts = [expr_text(a) for a in args] + [f"{k}={expr_text(v)}" for k, v in kwargs]
            return f"{func}({', '.join(parts)})"
        case I.BinOp(op, left, right):
            return f"{expr_text(left)} {op} {expr_text(right)}"
        case I.UnaryOp(op, operand):
            return f"{op} {expr_text(operand)}" if op == "not" else f"-{expr_text(operand)}"
    return "?"


def stmt_text(s: I.Stmt, limit: int = 60) -> str:
    """A statement's head as short source text (a block's body left out)."""
    match s:
        case I.Assign(name, value):
            text = f"{name} = {expr_text(value)}"
        case I.If(cond, _then, orelse):
            text = f"if {expr_text(cond)}" + (" / else" if orelse else "")
        case I.For(var, it):
            text = f"for {var} in {expr_text(it)}"
        case I.Emit(items):
            text = "emit " + ", ".join(n for n, _ in items)
        case I.While(cond, bound):
            text = f"while {expr_text(cond)} max {bound}"
        case I.Return(value):
            text = f"return {expr_text(value)}"
        case _:
            text = s.tag
    return text if len(text) <= limit else text[: limit - 3] + "..."
