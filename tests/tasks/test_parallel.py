"""run_forked: one forked process per range, results in range order, failures surfaced."""

from __future__ import annotations

import os
import signal

import pytest

from tasks.parallel import ranges, run_forked


def test_ranges_cover_input_without_empty_parts() -> None:
    assert ranges(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert ranges(2, 4) == [(0, 1), (1, 2)]
    assert ranges(0, 2) == []


def test_every_range_runs_in_its_own_process() -> None:
    """Each range but the first gets a child of its own (a pool could hand one worker two
    ranges and leave a core idle): the pids are distinct, the first is this process."""
    got = run_forked(lambda lo, hi: (os.getpid(), lo, hi), 10, 3)
    assert [(lo, hi) for _, lo, hi in got] == [(0, 3), (3, 6), (6, 10)]
    pids = [pid for pid, _, _ in got]
    assert pids[0] == os.getpid() and len(set(pids)) == 3


def test_a_child_that_dies_is_recomputed_here() -> None:
    parent = os.getpid()

    def fn(lo: int, hi: int) -> tuple[int, int]:
        if os.getpid() != parent and lo == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        return lo, hi

    assert run_forked(fn, 10, 2) == [(0, 5), (5, 10)]


def test_an_error_in_a_child_is_raised_here() -> None:
    parent = os.getpid()

    def fn(lo: int, hi: int) -> int:
        if os.getpid() != parent:
            raise ValueError("boom in child")
        return lo

    with pytest.raises(RuntimeError, match="boom in child"):
        run_forked(fn, 10, 2)
