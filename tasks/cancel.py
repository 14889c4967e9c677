"""Cooperative cancellation: a run that stops waiting tells its in-flight tasks to stop.

A SIGTERM (a scheduler, `prefect` cancellation) or Ctrl-C interrupts the thread that waits
on a run's tasks, but tasks already running on other threads would otherwise finish their
whole shard first (minutes). Long loops call `check(token)` between batches, so a cancelled
run ends within one batch; what they leave unfinished is never cached (the error policy).
Tokens are plain strings, so they travel as task parameters.
"""

from __future__ import annotations

import threading
import uuid

from tasks.errors import Cancelled

_lock = threading.Lock()
_cancelled: set[str] = set()
_all = threading.Event()


def new_token() -> str:
    return uuid.uuid4().hex


def cancel(token: str) -> None:
    """Ask every task holding `token` to stop at its next check."""
    with _lock:
        _cancelled.add(token)


def cancel_all() -> None:
    """Stop every run of this process (the process is being terminated)."""
    _all.set()


def forget(token: str) -> None:
    """Drop a finished run's token."""
    with _lock:
        _cancelled.discard(token)


def is_cancelled(token: str | None) -> bool:
    return _all.is_set() or (token is not None and token in _cancelled)


def check(token: str | None) -> None:
    """Raise `Cancelled` when the run holding `token` (or the whole process) was cancelled."""
    if is_cancelled(token):
        raise Cancelled("run cancelled: in-flight work stopped, nothing of it was cached")
