"""How many CPU threads torch computes with: one setting for the CLI, the API
and the REPL.

torch's default is one intra-op thread per logical core. Its threads meet at a
barrier after every operator, so when other jobs hold some of the cores, every
matmul waits for its slowest, descheduled thread: on a 2-core machine shared
with other jobs, one sampling call measured 46.6 s at torch's default and
12.0 s at one thread. The default here therefore counts only the cores that
are idle now:

    threads = clamp(physical cores - floor(1-minute load average), 1, 4)

A whole unit of load is one busy core (the fraction is noise: an idle machine
shows a load of 0.1-0.6); at most 4, because a small model gains little beyond
that on CPU and a large one is better served by an explicit choice. An
explicit setting wins: `LMLANG_THREADS=N`, `--threads N`, `threads=N` on
the API. The choice is made once per process, at the first model load (a run
answered from the result cache never imports torch).

Torch-free at import: the CLI imports this to describe the setting.
"""

from __future__ import annotations

import os

from ..errors import LmlangRuntimeError

ENV = "LMLANG_THREADS"
MAX_DEFAULT = 4

_applied: int | None = None  # what lmlang last gave torch in this process (None: nothing yet)


def usable_cores() -> int:
    """Physical cores this process may run on (logical CPUs of the affinity
    mask, halved where /proc/cpuinfo shows hyper-threads)."""
    try:
        logical = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        logical = os.cpu_count() or 1
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            info = fh.read()
        siblings = [int(line.split(":")[1]) for line in info.splitlines() if line.startswith("siblings")]
        cores = [int(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu cores")]
        if siblings and cores and cores[0] and siblings[0] > cores[0]:
            return max(1, logical * cores[0] // siblings[0])
    except (OSError, ValueError, IndexError):
        pass
    return max(1, logical)


def default_threads(cores: int | None = None, load: float | None = None) -> int:
    """The idle physical cores, between 1 and MAX_DEFAULT (see the module docstring)."""
    cores = usable_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(MAX_DEFAULT, cores - int(load)))


def requested_threads(threads: int | None = None) -> int | None:
    """An explicit choice: `threads`, else LMLANG_THREADS, else None."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        return threads
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise LmlangRuntimeError(
            f"{ENV}={raw!r} is not a positive integer", hint=f"unset {ENV} or give it a number of threads"
        )
    return n


def apply_threads(threads: int | None = None) -> int:
    """Give torch its thread count. An explicit `threads` (or LMLANG_THREADS)
    is applied every time; otherwise the default is picked once per process
    and an earlier explicit choice is kept. Returns the count in effect."""
    global _applied
    import torch

    n = requested_threads(threads)
    if n is None:
        if _applied is not None:
            return _applied
        n = default_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    _applied = n
    return n
