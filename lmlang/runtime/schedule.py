"""Runs the flows of many rows together, as tasks that wait on query calls.

Each row's flow is a generator (flow.py) and so is each prefetch task it
spawns (prefetch.py). A task runs until it yields a QueryCall (it then waits
for the result), a Spawn (a new task of the same row starts, and the handle
goes back at once) or a Join (it waits for that task's value). When no task
can go on, every call waiting anywhere, of every row, goes to `dispatch` in
one list, so calls batch across rows and across independent steps of one
row alike; their results wake the tasks up.

A row holds one slot per call position (query, call site, loop indices):
whoever makes a call at a position first starts it, and every later call at
that position with the same arguments shares its result. That is how the
flow picks up what its prefetch tasks started. A row ends when its flow
does; calls that only its unfinished prefetch tasks still wait for are then
dropped.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Callable

from ..errors import LmlangError
from .flow import Join, QueryCall, Spawn


class Task:
    __slots__ = ("gen", "row", "done", "value", "error", "waiters")

    def __init__(self, gen, row: "Row"):
        self.gen, self.row = gen, row
        self.done = False
        self.value = None
        self.error: LmlangError | None = None
        self.waiters: list[Task] = []


class Slot:
    """One call of one row (a position), waiting for or holding its result."""

    __slots__ = ("call", "row", "args_key", "done", "value", "error", "waiters")

    def __init__(self, call: QueryCall, row: "Row", args_key: str):
        self.call, self.row, self.args_key = call, row, args_key
        self.done = False
        self.value = None
        self.error: LmlangError | None = None
        self.waiters: list[Task] = []


class Row:
    __slots__ = ("index", "id", "root", "slots", "finished")

    def __init__(self, index: int, row_id):
        self.index, self.id = index, row_id
        self.root: Task | None = None
        self.slots: dict[tuple, Slot] = {}
        self.finished = False


def args_key(call: QueryCall) -> str:
    try:
        return json.dumps([call.args, call.kwargs], sort_keys=True, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):  # not JSON-able (circular): never shared
        return repr(id(call))


class Scheduler:
    """dispatch(slots) -> one result per slot: a dict, or the LmlangError of that call.
    on_finish(row_index, value, error) is called once per row."""

    def __init__(self, dispatch: Callable[[list[Slot]], list], on_finish: Callable[[int, object, object], None]):
        self.dispatch = dispatch
        self.on_finish = on_finish
        self.ready: deque = deque()  # (task, value, error) to resume
        self.queue: list[Slot] = []  # calls to dispatch

    def add_row(self, index: int, row_id, gen) -> None:
        row = Row(index, row_id)
        row.root = Task(gen, row)
        self.ready.append((row.root, None, None))

    def run(self) -> None:
        while self.ready or self.queue:
            while self.ready:
                self._step(*self.ready.popleft())
            if not self.queue:
                continue
            todo = [s for s in self.queue if not s.row.finished]
            self.queue = []
            if not todo:
                continue
            results = self.dispatch(todo)
            for slot, res in zip(todo, results):
                slot.done = True
                if isinstance(res, LmlangError):
                    slot.error = res
                else:
                    slot.value = res
                for t in slot.waiters:
                    self.ready.append((t, slot.value, slot.error))
                slot.waiters = []

    # ------------------------------------------------------------ one step of a task
    def _step(self, task: Task, value, error) -> None:
        row = task.row
        if row.finished:
            task.gen.close()
            return
        try:
            req = task.gen.throw(error) if error is not None else task.gen.send(value)
        except StopIteration as stop:
            self._end(task, stop.value, None)
            return
        except LmlangError as e:
            self._end(task, None, e)
            return
        if isinstance(req, QueryCall):
            self._call(task, req)
        elif isinstance(req, Spawn):
            child = Task(req.gen, row)
            self.ready.append((child, None, None))
            self.ready.append((task, child, None))
        elif isinstance(req, Join):
            other = req.task
            if other.done:
                self.ready.append((task, other.value, other.error))
            else:
                other.waiters.append(task)
        else:  # pragma: no cover - the interpreter yields nothing else
            raise TypeError(f"a flow task yielded {req!r}")

    def _call(self, task: Task, call: QueryCall) -> None:
        row, key = task.row, args_key(call)
        slot = row.slots.get(call.position)
        if slot is not None and slot.args_key == key:
            if slot.done:
                self.ready.append((task, slot.value, slot.error))
            else:
                slot.waiters.append(task)
            return
        slot = Slot(call, row, key)
        slot.waiters.append(task)
        row.slots[call.position] = slot
        self.queue.append(slot)

    def _end(self, task: Task, value, error) -> None:
        task.done, task.value, task.error = True, value, error
        for t in task.waiters:
            self.ready.append((t, value, error))
        task.waiters = []
        if task is task.row.root:
            task.row.finished = True
            task.row.slots.clear()
            self.on_finish(task.row.index, value, error)
