"""Grown prompts (issue 15): a query whose messages hold control flow
(`for`, `if`, `break`) and tool calls around their segments. The prompt's
text after a hole depends on the values decoded so far, so it is produced
step by step, as decoding reaches it, and fed into the same KV cache
(runtime/grown.py drives the decoding).

The chat template is rendered once, with one marker per control-flow block,
value, hole and tool call (runtime/prompt.py's private-use markers): the
template's text around them is trusted text; what a block produces is the
script's literal text plus values (parameters, loop variables, tool
results), and values are plain text (special tokens inside them are split,
as for any value).

Torch-free: the walk is plain Python over the graph IR.
"""

from __future__ import annotations

from ..builtins import value_text
from ..errors import LmlangError, LmlangRuntimeError
from ..graph import ir as I
from ..source import span_of
from ..tools import ToolError, run_tool
from .prompt import _through_template, lookup

Piece = tuple[str, bool]  # (text, is a value)
MAX_PROMPT_LOOP = 1000  # iterations of one prompt loop: checker/prompt_flow.py's bound for literals


def is_grown(segments) -> bool:
    """Whether a query's segments (QuerySpec.segments) hold a block or a tool call."""
    return any(kind in ("block", "call", "call_as") for _role, parts in segments for kind, _ in parts)


def render_grown(segments, tokenizer, chat: bool) -> tuple:
    """The prompt's parts in order, with the chat template's text as trusted
    text: ("text", s), ("interp", path), ("hole", name), ("call", Call),
    ("block", statements). Interpolations are looked up during the walk (a
    block may read loop variables and holes)."""
    lazy = [(role, [("path" if k == "interp" else k, v) for k, v in parts]) for role, parts in segments]
    if not chat:
        flat = [p for _role, parts in lazy for p in parts]
    else:
        flat = _through_template(tokenizer, lazy)
    return tuple(("interp", v) if k == "path" else (k, v) for k, v in flat)


class _Break(Exception):
    pass


class Growth:
    """One row's walk through a grown prompt: the text up to each hole,
    then, given the hole's value, the text up to the next one.

    `values` holds each hole's result: a list for a hole inside a loop (one
    value per iteration that reached it; inside nested loops a list of
    lists, one level per loop: `for i { for j { [x] } }` gives x[i][j]),
    else the value (None when the prompt never reached it). `interp` (runtime/flow.Interpreter) evaluates
    conditions and arguments; `functions` are the registered Python functions."""

    def __init__(self, parts: tuple, env: dict, interp, functions: dict, query: str = "", loc: str = ""):
        self.parts = parts
        self.env = dict(env)
        self.interp, self.functions = interp, functions
        self.query, self.loc = query, loc
        self.depth = hole_depths(parts)  # hole -> how many prompt loops enclose it
        self.values: dict = {h: [] if d else None for h, d in self.depth.items()}
        self.texts: dict = {h: [] if d else None for h, d in self.depth.items()}
        self._level = 0  # the prompt loops the walk is inside now
        self.transcript: list[str] = []
        self._gen = self._walk()
        self._started = False

    def advance(self, value=None) -> tuple[list[Piece], str | None, str]:
        """Run to the next hole: the pieces of text before it, the hole's
        name (None at the end of the prompt) and the literal text right after
        it in its segment ("" if none: it ends the hole)."""
        pieces: list[Piece] = []
        try:
            ev = self._gen.send(value) if self._started else next(self._gen)
            self._started = True
            while ev[0] != "hole":
                pieces.append((ev[1], ev[0] == "data"))
                self.transcript.append(ev[1])
                ev = next(self._gen)
        except StopIteration:
            return pieces, None, ""
        self.transcript.append(f"[{ev[1]}]")
        return pieces, ev[1], ev[2]

    def record(self, name: str, text: str, value) -> None:
        """A hole's decoded value: it joins the scope (conditions read the
        current iteration's value) and the result."""
        self.env[name] = value
        depth = self.depth.get(name, 0)
        if depth:
            _current(self.values[name], depth).append(value)
            _current(self.texts[name], depth).append(text)
        else:
            self.values[name], self.texts[name] = value, text

    def display(self) -> str:
        return "".join(self.transcript)

    # ------------------------------------------------------------ the walk
    def _walk(self):
        parts = self.parts
        for i, (kind, val) in enumerate(parts):
            if kind == "block":
                try:
                    yield from self._body(val)
                except _Break:  # pragma: no cover - the checker keeps break inside loops
                    pass
            else:
                after = parts[i + 1][1] if i + 1 < len(parts) and parts[i + 1][0] == "text" else ""
                yield from self._part(kind, val, after)

    def _body(self, stmts):
        for st in stmts:
            match st:
                case I.PSeg(parts):
                    for i, (kind, val) in enumerate(parts):
                        after = parts[i + 1][1] if i + 1 < len(parts) and parts[i + 1][0] == "text" else ""
                        yield from self._part(kind, val, after)
                case I.PIf(cond, then, orelse):
                    yield from self._body(then if self._eval(cond) else orelse)
                case I.PFor(var, it, body):
                    items = self._loop_items(it)
                    if not isinstance(items, (list, tuple)):
                        raise self._error(f"a prompt loop runs over a list, got {type(items).__name__}")
                    self._level += 1
                    deeper = [h for h, d in _depths(body, self._level).items() if d > self._level]
                    try:
                        for item in items:
                            self.env[var] = item
                            for h in deeper:  # this iteration's list in each nested loop's hole
                                _current(self.values[h], self._level).append([])
                                _current(self.texts[h], self._level).append([])
                            try:
                                yield from self._body(body)
                            except _Break:
                                break
                    finally:
                        self._level -= 1
                case I.PBreak():
                    raise _Break()

    def _part(self, kind: str, val, after: str | None):
        if kind == "text":
            yield ("text", val)
        elif kind == "interp":
            yield ("data", value_text(lookup(tuple(val), self.env, self.loc)))
        elif kind == "call":
            yield ("data", self._tool(val))
        elif kind == "call_as":  # `{obs = call(...)}`: the result is also a name from here on
            call, name = val
            self.env[name] = self._tool(call)
            yield ("data", self.env[name])
        elif kind == "hole":
            yield ("hole", val, after or "")

    def _loop_items(self, it: I.Expr):
        """A loop's items; `range(...)` is bounded before it is built (its
        ints may come from parameters, checked only now)."""
        if not (isinstance(it, I.Call) and it.func == "range"):
            return self._eval(it)
        bounds = [self._eval(a) for a in it.args]
        if not all(type(b) is int for b in bounds):
            raise self._error(f"a prompt loop's range takes ints, got {bounds}")
        items = range(*bounds)
        if len(items) > MAX_PROMPT_LOOP:
            raise LmlangRuntimeError(
                f"a prompt loop over range({', '.join(map(str, bounds))}) runs {len(items)} times, "
                f"more than {MAX_PROMPT_LOOP}",
                span_of(it.loc),
                hint="pass a smaller bound: a prompt grows by one body per iteration",
            )
        return list(items)

    def _eval(self, e: I.Expr):
        gen = self.interp.expr(e, self.env)
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
        raise self._error("a prompt's condition cannot call a query")  # the checker refuses it

    def _tool(self, call: I.Call) -> str:
        try:
            args = [self._eval(a) for a in call.args]
        except LmlangError as e:  # an argument failed (an index out of range, ...): at the call
            if not e.span.line:
                e.span = span_of(call.loc)
                e.message = f"tool '{call.func}': {e.message}"
                e.args = (e.message,)
            raise
        try:
            return run_tool(call.func, args, self.functions)
        except ToolError:
            raise LmlangRuntimeError(
                f"unknown tool '{call.func}'",
                span_of(call.loc),  # the call's own position (the query's name is added by the run)
                hint="register it with program.register(name, fn) before running",
            ) from None

    def _error(self, message: str) -> LmlangRuntimeError:
        return LmlangRuntimeError(message, span_of(self.loc))


def hole_depths(parts: tuple) -> dict[str, int]:
    """Every hole of the prompt in order, with how many loops enclose it."""
    out: dict[str, int] = {}
    for kind, val in parts:
        if kind == "block":
            out.update((h, d) for h, d in _depths(val, 0).items() if h not in out)
        elif kind == "hole":
            out.setdefault(val, 0)
    return out


def _depths(stmts, level: int) -> dict[str, int]:
    """The holes of a block, with their loop depth (level: the loops around it)."""
    out: dict[str, int] = {}
    for st in stmts:
        if isinstance(st, I.PSeg):
            for kind, val in st.parts:
                if kind == "hole":
                    out.setdefault(val, level)
        elif isinstance(st, I.PFor):
            out.update((h, d) for h, d in _depths(st.body, level + 1).items() if h not in out)
        elif isinstance(st, I.PIf):
            for branch in (st.then, st.orelse):
                out.update((h, d) for h, d in _depths(branch, level).items() if h not in out)
    return out


def _current(values: list, depth: int) -> list:
    """The list this iteration appends to: the last item, depth - 1 levels down."""
    for _ in range(depth - 1):
        values = values[-1]
    return values


def join(pieces: list[Piece], offset: int = 0) -> tuple[str, tuple]:
    """Pieces -> one text and the spans of its values (shifted by offset)."""
    text, spans, size = [], [], offset
    for t, is_data in pieces:
        if is_data and t:
            spans.append((size, size + len(t)))
        text.append(t)
        size += len(t)
    return "".join(text), tuple(spans)
