"""Split CPU-bound pure-Python work over forked processes, one contiguous range each.

The Python parts of MetaCLIP matching and hashing hold the GIL, so only processes scale.
Each range but the first runs in its own forked child (exactly one range per process, so
`workers` ranges really use `workers` cores), which inherits `fn` through fork: nothing big
is pickled, only the results (numpy arrays) come back through a pipe.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import os
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")


def ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous, non-empty ranges covering `range(n)` (fewer when n < parts)."""
    cuts = [n * i // parts for i in range(parts + 1)]
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def cpu_count() -> int:
    """Cores this process may run on (its affinity: a container's share), not the host's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def score_sizing(cores: int, device: str) -> tuple[int, int]:
    """(score tasks at once per process, decode threads per task), sized together.

    One model per process, one forward at a time: the model is the bottleneck when it never
    waits for a batch. Two tasks keep it fed (one task's batch is in the model while the
    other decodes; each task also decodes ahead in a producer thread). On a CPU the model
    itself wants the cores (torch's intra-op threads), so decoding gets a small share that
    grows with the machine; on a GPU decoding is what the CPU cores are for.
    """
    tasks = 2
    share = cores if device == "cuda" else cores // 4
    return tasks, max(1, min(16, share // tasks))


def can_fork() -> bool:
    return "fork" in mp.get_all_start_methods() and not mp.current_process().daemon


def _child(fn: Callable[[int, int], Any], lo: int, hi: int, out: Connection) -> None:
    try:
        out.send(("ok", fn(lo, hi)))
    except BaseException:
        out.send(("error", traceback.format_exc(limit=5)))
    finally:
        out.close()
        os._exit(0)  # skip atexit handlers and inherited threads' cleanup


def run_forked(fn: Callable[[int, int], T], n: int, workers: int) -> list[T]:
    """`[fn(lo, hi) for each of `workers` ranges of range(n)]`, in range order.

    The first range runs in this process, every other one in a child forked for it. `fn`
    must not use polars or logging: locks held by other threads at fork time do not survive
    it. A child that dies (out of memory, killed) has its range recomputed here; an
    exception in `fn` is raised here. Without fork (or in a daemon process) every range
    runs here.
    """
    parts = ranges(n, workers)
    if len(parts) < 2 or not can_fork():
        return [fn(a, b) for a, b in parts]
    ctx = mp.get_context("fork")
    children = []
    for a, b in parts[1:]:
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(fn, a, b, send), daemon=True)
        proc.start()
        send.close()
        children.append((proc, recv, (a, b)))
    results = [fn(*parts[0])]
    for proc, recv, (a, b) in children:
        try:
            status, value = recv.recv()
        except EOFError:  # the child died before answering
            logger.warning("forked worker for rows %d-%d died; computing them here", a, b)
            status, value = "ok", fn(a, b)
        finally:
            recv.close()
            proc.join()
        if status != "ok":
            raise RuntimeError(f"forked worker for rows {a}-{b} failed:\n{value}")
        results.append(value)
    return results
