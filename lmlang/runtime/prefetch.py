"""Parallel steps inside a row: make every query call whose arguments are
already known before the flow reaches it.

A flow runs statement by statement, so two calls that do not depend on each
other (four questions about one text, one call per item of a loop) would
decode one after the other. Queries are functions of their arguments (a
sampling query's seed derives from the call's position, not from the order
calls are made), so a call may be made early, as long as its arguments are
the values the flow will pass. The prefetch walk finds those calls:

* a variable is *dirty* where its value at that point of the walk may differ
  from its value when the flow gets there: assigned by a statement whose
  value the walk cannot compute, or (in a loop body) by an earlier iteration;
* an expression is *clean* when it reads no dirty variable and calls no
  registered Python function (those may have effects; builtins are pure);
* the walk goes through a block in order: a clean assignment is computed (as a
  task of its own, so it does not hold up the statements after it) and its
  variable becomes clean; every other statement makes the variables it writes
  dirty, after its clean sub-expressions that are always evaluated (never the
  right side of `and`/`or`) have been started; an `if` with a clean condition
  walks the branch it will take; a `for` over a clean list walks every
  iteration, each as a task, with the loop's own assignments dirty at the top
  of each iteration.

Each call made here is an ordinary QueryCall with the position the flow will
give it; the scheduler (schedule.py) keeps one slot per position, so when the
flow reaches the call it gets the result (or waits for it) instead of
decoding again. A prefetch task that fails (a bad index, a query error) just
ends: the flow meets the same error at the same point, in order.
"""

from __future__ import annotations

from ..errors import LmlangError
from ..graph import ir as I
from ..frozen import walk
from .flow import Future, Spawn, _truthy


class Prefetcher:
    def __init__(self, interp):
        self.interp = interp
        self._facts: dict[int, tuple] = {}  # id(expr) -> (variables read, calls a query, calls a function)
        self._writes: dict[int, frozenset] = {}  # id(stmt) -> variables it may assign
        self._keep: list = []  # nodes whose ids are cached (so ids are never reused)

    # ------------------------------------------------------------ static facts
    def facts(self, e: I.Expr) -> tuple:
        key = id(e)
        got = self._facts.get(key)
        if got is None:
            nodes = list(walk(e, I.Expr))
            reads = frozenset(n.name for n in nodes if isinstance(n, I.Var))
            funcs = {n.func for n in nodes if isinstance(n, I.Call)}
            queries = bool(funcs & self.interp.queries)
            effects = any(f in self.interp.functions or f in self.interp.defs for f in funcs)  # defs: run in order
            got = self._facts[key] = (reads, queries, effects)
            self._keep.append(e)
        return got

    def writes(self, s: I.Stmt) -> frozenset:
        key = id(s)
        got = self._writes.get(key)
        if got is None:
            got = self._writes[key] = I.effects(s).writes
            self._keep.append(s)
        return got

    def clean(self, e: I.Expr, dirty: frozenset) -> bool:
        reads, _, effects = self.facts(e)
        return not effects and not (reads & dirty)

    # ------------------------------------------------------------ the walk
    def block(self, stmts: tuple, env: dict, dirty: frozenset, path: tuple):
        """A task: start every clean call of `stmts` (run with `env`, where
        `dirty` variables cannot be trusted). Returns nothing."""
        for s in stmts:
            if isinstance(s, I.Assign):
                if self.clean(s.value, dirty):
                    value = yield from self._value(s.value, env, path)
                    if value is not _FAILED:
                        env[s.name] = value
                        dirty = dirty - {s.name}
                        continue
                else:
                    yield from self._parts(s.value, env, dirty, path)
            elif isinstance(s, I.If):
                if self.clean(s.cond, dirty):
                    yield Spawn(self._branch(s, dict(env), dirty, path))
                else:
                    yield from self._parts(s.cond, env, dirty, path)
            elif isinstance(s, I.For):
                if self.clean(s.iter, dirty):
                    yield Spawn(self._for(s, dict(env), dirty, path))
                else:
                    yield from self._parts(s.iter, env, dirty, path)
            elif isinstance(s, I.Emit):
                for _name, e in s.items:
                    yield from self._parts(e, env, dirty, path)
            dirty = dirty | self.writes(s)

    def loop(self, s: I.For, items: list | tuple, env: dict, path: tuple):
        """A task: the iterations of a loop the flow has just entered (its list known)."""
        inner = self.writes(s) - {s.var}
        for i, item in enumerate(items):
            e = dict(env)
            e[s.var] = item
            yield Spawn(self.block(s.body, e, inner, path + (i,)))

    def _for(self, s: I.For, env: dict, dirty: frozenset, path: tuple):
        try:
            items = yield from self.interp.expr(s.iter, env, path)
        except LmlangError:
            return
        if isinstance(items, (list, tuple)):
            inner = (dirty | self.writes(s)) - {s.var}
            for i, item in enumerate(items):
                e = dict(env)
                e[s.var] = item
                yield Spawn(self.block(s.body, e, inner, path + (i,)))

    def _branch(self, s: I.If, env: dict, dirty: frozenset, path: tuple):
        try:
            test = yield from self.interp.expr(s.cond, env, path)
        except LmlangError:
            return
        yield from self.block(s.then if _truthy(test) else s.orelse, env, dirty, path)

    def _value(self, e: I.Expr, env: dict, path: tuple):
        """A clean expression's value for the walk's environment: computed now
        when it needs no call, else a Future of a task computing it."""
        if not self.facts(e)[1] and not _has_future(e, env):
            try:
                return (yield from self.interp.expr(e, env, path))
            except LmlangError:
                return _FAILED
        task = yield Spawn(self._compute(e, env, path))
        return Future(task)

    def _compute(self, e: I.Expr, env: dict, path: tuple):
        return (yield from self.interp.expr(e, env, path))

    def _parts(self, e: I.Expr, env: dict, dirty: frozenset, path: tuple):
        """Start the clean sub-expressions of `e` that are always evaluated and call a query."""
        _, queries, _ = self.facts(e)
        if not queries:
            return
        if self.clean(e, dirty):
            yield Spawn(self._compute(e, env, path))
            return
        for child in _always_evaluated(e):
            yield from self._parts(child, env, dirty, path)


_FAILED = object()  # a clean value that could not be computed: the walk treats its variable as dirty


def _has_future(e: I.Expr, env: dict) -> bool:
    return any(isinstance(n, I.Var) and isinstance(env.get(n.name), Future) for n in walk(e, I.Expr))


def _always_evaluated(e: I.Expr) -> list:
    """The sub-expressions that evaluating `e` always evaluates."""
    if isinstance(e, I.Attr):
        return [e.obj]
    if isinstance(e, I.Index):
        return [e.obj, e.index]
    if isinstance(e, I.ListExpr):
        return list(e.items)
    if isinstance(e, I.Call):
        return list(e.args) + [v for _, v in e.kwargs]
    if isinstance(e, I.UnaryOp):
        return [e.operand]
    if isinstance(e, I.BinOp):
        return [e.left] if e.op in ("and", "or") else [e.left, e.right]
    return []
