"""One run per partition at a time: a lock beside the partition, held under a lease.

The lock is `.{partition}.lock` next to the partition folder: locally a file created with
`O_CREAT|O_EXCL`, on S3 an object written with a conditional put (`If-None-Match: *`), so
exactly one of two racing runs creates it. It records who holds it (run, host, pid, process
start time, since when). The holder refreshes it while it runs (heartbeat); a lock is taken
over when its holder is certainly gone (same host, pid dead or reused) or its lease ran out.
A second run waits up to a timeout, then fails with one line naming the holder. `commit`
calls `assert_held` so that a run which lost its lock never publishes over the new holder.

Every wait (the second run's deadline and polls, the heartbeat's interval) goes through the
module-level `clock`, so tests can drive time by hand; a lock's age always comes from its
store (the file's mtime, the S3 object's LastModified against the response's Date).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import psutil

from tasks.io import storage
from tasks.io.lock_backends import Backend, backend_for

logger = logging.getLogger(__name__)

TIMEOUT_ENV, LEASE_ENV = "CURATE_LOCK_TIMEOUT_S", "CURATE_LOCK_LEASE_S"
DEFAULT_TIMEOUT_S = 60.0  # how long a second run waits for the partition
DEFAULT_LEASE_S = 120.0  # how long a silent holder keeps the lock (heartbeat: lease / 4)
CORRUPT_GRACE_S = 5.0  # an unreadable lock younger than this may still be being written


class Clock:
    """Real time, as the lock waits on it: looked up as `clock` at each use (a test seam)."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait up to `seconds` for `event`; whether it is set."""
        return event.wait(seconds)


clock = Clock()


class PartitionLocked(RuntimeError):
    """Another run holds the partition and did not let go within the timeout."""


class LockLost(RuntimeError):
    """This run's lock expired or was taken over: it must not publish."""


@dataclass(frozen=True)
class Holder:
    """What a lock says about its holder."""

    run: str
    token: str
    host: str
    pid: int
    pid_start: float | None
    started: str
    lease_s: float
    heartbeat: str = ""

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def parse(cls, data: bytes) -> Holder | None:
        try:
            fields = json.loads(data)
            return cls(**{k: fields[k] for k in cls.__dataclass_fields__ if k in fields})
        except (ValueError, TypeError, KeyError):
            return None


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _run_id() -> str:
    """The Prefect flow run id when inside one (what an operator can look up), else random."""
    if "prefect" in sys.modules:  # never import Prefect just for this (seconds)
        try:
            from prefect.runtime import flow_run

            if flow_run.id:
                return str(flow_run.id)
        except Exception:  # no flow run context: a plain call
            pass
    return uuid.uuid4().hex[:12]


def _process_start(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def holder_alive(holder: Holder) -> bool | None:
    """True/False when this host can tell (same host), None when the holder is elsewhere.

    A lock of this very process is alive only while this process holds it: one left behind
    by an earlier run here (its release failed, e.g. while the store was down) is dead.
    """
    if holder.host != socket.gethostname():
        return None
    if holder.pid == os.getpid():  # this process (or a dead one whose pid it reuses)
        with _HELD_GUARD:
            return holder.token in _LIVE_TOKENS
    try:
        proc = psutil.Process(holder.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = proc.create_time()
    except psutil.NoSuchProcess:  # gone (zombies included)
        return False
    except psutil.Error:  # exists but not ours to inspect: let the lease decide
        return None
    return holder.pid_start is None or abs(started - holder.pid_start) < 1.0


def is_stale(holder: Holder | None, age_s: float) -> bool:
    """A lock that nobody can still be using: holder dead, or lease (or grace) run out."""
    if holder is None:
        return age_s > CORRUPT_GRACE_S
    return holder_alive(holder) is False or age_s > holder.lease_s


def locked_message(final: str, holder: Holder | None) -> str:
    if holder is None:
        return f"partition {final} is locked by an unreadable lock file (retry shortly)"
    who = f"run {holder.run} ({holder.host} pid {holder.pid})"
    return f"partition {final} is being written by {who} since {holder.started}"


def lock_url(final: str) -> str:
    """`.{partition}.lock` beside the partition folder (never inside: commit replaces that)."""
    parent, _, name = final.rstrip("/").rpartition("/")
    return storage.join(parent, f".{name}.lock") if parent else f".{name}.lock"


@dataclass
class _Held:
    """A lock this process holds: what it wrote, its current version, who entered it."""

    final: str
    backend: Backend
    holder: Holder
    version: Any
    thread: int
    depth: int = 1
    lost: bool = False
    guard: threading.Lock = field(default_factory=threading.Lock)


_HELD: dict[str, _Held] = {}
_LIVE_TOKENS: set[str] = set()  # tokens of locks this process holds or is taking right now
_HELD_GUARD = threading.Lock()


def _acquire(backend: Backend, me: Holder, final: str, timeout_s: float) -> Any:
    """Create the lock, taking over a stale one; wait up to `timeout_s` for a live one."""
    deadline = clock.monotonic() + timeout_s
    poll = min(1.0, max(0.05, timeout_s / 20))
    while True:
        version = backend.create(me.to_bytes())
        if version is not None:
            return version
        found = backend.read()
        holder = None
        if found is not None:
            data, age_s, seen = found
            holder = Holder.parse(data)
            if is_stale(holder, age_s):
                logger.warning("taking over a stale lock: %s", locked_message(final, holder))
                version = backend.take_over(seen, me.to_bytes())
                if version is not None:
                    return version
                continue
        if clock.monotonic() >= deadline:
            raise PartitionLocked(locked_message(final, holder))
        clock.sleep(poll)


def _heartbeat(held: _Held, stop: threading.Event, every_s: float) -> None:
    """Refresh the lease while the run goes on; flag the lock lost if someone took it."""
    while not clock.wait(stop, every_s):
        with held.guard:
            try:
                beat = replace(held.holder, heartbeat=_now())
                version = held.backend.refresh(held.version, beat.to_bytes())
            except Exception as err:  # a flaky store: the lease leaves room for a few misses
                logger.warning("lock heartbeat for %s failed: %s", held.final, err)
                continue
            if version is None:
                held.lost = True
                logger.error("lock of %s was taken over: this run will not publish", held.final)
                return
            held.holder, held.version = beat, version


def _reenter(key: str) -> _Held | None:
    """The lock this thread already holds on `key` (its depth counted up), else None."""
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is None or held.thread != threading.get_ident():
            return None
        held.depth += 1
        return held


def _take(final: str, so: dict[str, Any] | None, timeout_s: float, lease_s: float) -> _Held:
    backend = backend_for(lock_url(final), so)
    pid = os.getpid()
    me = Holder(
        _run_id(), uuid.uuid4().hex, socket.gethostname(), pid, _process_start(pid), _now(), lease_s
    )
    with _HELD_GUARD:  # live before the lock exists: no thread here may take it for dead
        _LIVE_TOKENS.add(me.token)
    try:
        version = _acquire(backend, me, final, timeout_s)
    except BaseException:
        with _HELD_GUARD:
            _LIVE_TOKENS.discard(me.token)
        raise
    held = _Held(final, backend, me, version, threading.get_ident())
    with _HELD_GUARD:
        _HELD[final.rstrip("/")] = held
    return held


def _release(held: _Held) -> None:
    with _HELD_GUARD:
        _HELD.pop(held.final.rstrip("/"), None)
        _LIVE_TOKENS.discard(held.holder.token)
    if held.lost:
        return
    try:
        held.backend.release(held.version)
    except Exception as err:  # the lease expires on its own
        logger.warning("could not release the lock of %s: %s", held.final, err)


@contextmanager
def partition_lock(
    final: str,
    storage_options: dict[str, Any] | None = None,
    *,
    timeout_s: float | None = None,
    lease_s: float | None = None,
) -> Iterator[None]:
    """Hold the partition's lock for the block; a second holder waits, then fails clearly.

    `timeout_s`/`lease_s` default to $CURATE_LOCK_TIMEOUT_S (60) and $CURATE_LOCK_LEASE_S
    (120). Re-entering from the same thread is allowed.
    """
    again = _reenter(final.rstrip("/"))
    if again is not None:
        try:
            yield
        finally:
            again.depth -= 1
        return
    timeout_s = _env_float(TIMEOUT_ENV, DEFAULT_TIMEOUT_S) if timeout_s is None else timeout_s
    lease_s = _env_float(LEASE_ENV, DEFAULT_LEASE_S) if lease_s is None else lease_s
    held = _take(final, storage_options, timeout_s, lease_s)
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(held, stop, lease_s / 4), name="lock-heartbeat", daemon=True
    )
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        _release(held)


def assert_held(final: str) -> None:
    """Raise LockLost when this process locked `final` and no longer holds it.

    A no-op for partitions this process never locked (direct calls in tests and tools).
    """
    held = _HELD.get(final.rstrip("/"))
    if held is None:
        return
    with held.guard:
        if held.lost or not held.backend.holds(held.version):
            held.lost = True
            raise LockLost(f"partition {final}: this run's lock expired or was taken over")
