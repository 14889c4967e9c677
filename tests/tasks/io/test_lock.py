"""`partition_lock`: one run per partition, locally and on S3 (moto), with stale-lock recovery.

No test here waits for time to pass: ages are set in the store (a file's mtime, the moto
object's LastModified), heartbeats are driven through the lock's `clock`, and a test waiting
for another thread or process waits for a signal from it (an Event, a line, a condition).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tasks.io import lock as lock_module
from tasks.io import storage
from tasks.io.lock import (
    CORRUPT_GRACE_S,
    Clock,
    Holder,
    LockLost,
    PartitionLocked,
    assert_held,
    is_stale,
    lock_url,
    partition_lock,
)
from tasks.io.lock_backends import backend_for
from tasks.publish.commit import begin, commit
from tests.helpers import ROOT

pytest_plugins = ["tests.s3_fixture"]  # the `s3` and `bucket` fixtures
HOLDER = """
import json, sys
from tasks.io.lock import partition_lock
with partition_lock(sys.argv[1], json.loads(sys.argv[2]), lease_s=60):
    print("held", flush=True)
    sys.stdin.read()
"""
SIGNAL_S = 60.0  # how long a test waits for a signal from another thread or process


class DrivenClock(Clock):
    """The lock's clock, driven by the test.

    A heartbeat's wait runs out only when the test calls `beat()`, which returns once the
    heartbeat is back in its next wait (that beat done). A waiting run's poll sets `polled`,
    then sleeps for real (deadlines and polls stay real time).
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.waits = 0  # heartbeat waits begun
        self.beats = 0  # heartbeat waits let run out
        self.intervals: list[float] = []
        self.polled = threading.Event()

    def sleep(self, seconds: float) -> None:
        self.polled.set()
        super().sleep(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        with self.cond:
            self.waits += 1
            self.intervals.append(seconds)
            self.cond.notify_all()
            mine = self.waits
            while self.beats < mine:
                if event.is_set():
                    return True
                self.cond.wait(0.01)  # wake to see `event`, which is set without telling us
            return False

    def beat(self) -> None:
        with self.cond:
            self.beats += 1
            self.cond.notify_all()
            back = self.cond.wait_for(lambda: self.waits > self.beats, timeout=SIGNAL_S)
        assert back, "the heartbeat did not come back to its wait"


@pytest.fixture
def driven(monkeypatch) -> DrivenClock:
    """Swap the lock's clock for a DrivenClock for this test."""
    clock = DrivenClock()
    monkeypatch.setattr(lock_module, "clock", clock)
    return clock


def wait_until(ready, what: str) -> None:
    """Poll `ready()` until it is true; fail after SIGNAL_S (never a sleep that must suffice)."""
    deadline = time.monotonic() + SIGNAL_S
    while not ready():
        assert time.monotonic() < deadline, f"{what} within {SIGNAL_S:.0f} s"
        time.sleep(0.01)


def shift_mtime(path: str, seconds: float) -> float:
    """Move a local lock's mtime (its last heartbeat) by `seconds`; the new mtime."""
    mtime = os.stat(path).st_mtime + seconds
    os.utime(path, (mtime, mtime))
    return mtime


def age_in_store(url: str, seconds: float) -> None:
    """Make moto's S3 (a thread of this process) hold the object as written `seconds` earlier."""
    from moto.s3.models import s3_backends

    bucket, key = url.removeprefix("s3://").split("/", 1)
    partition, account = s3_backends.bucket_accounts[bucket]
    obj = s3_backends[account][partition].get_object(bucket, key)
    obj.last_modified -= dt.timedelta(seconds=seconds)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def target(request, tmp_path) -> tuple[str, dict]:
    """(partition URL, storage options) on local disk or in a fresh moto bucket."""
    if request.param == "local":
        return str(tmp_path / "out" / "ds" / "pool" / "2026-01-02"), {}
    s3 = request.getfixturevalue("s3")
    return f"{request.getfixturevalue('bucket')}/out/ds/pool/2026-01-02", s3.storage_options


def start_holder(final: str, so: dict) -> subprocess.Popen:
    """Another process holding the partition's lock (until its stdin closes)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, final, json.dumps(so)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def read_holder(final: str, so: dict) -> Holder:
    return Holder.parse(storage.read_bytes(lock_url(final), so))


def write_lock(final: str, so: dict, holder: Holder) -> None:
    storage.write_bytes(lock_url(final), holder.to_bytes(), so)


def other_holder(**fields) -> Holder:
    base = {
        "run": "other-run",
        "token": "t0",
        "host": "elsewhere.example",
        "pid": 4242,
        "pid_start": None,
        "started": "2026-01-02T03:04:05+00:00",
        "lease_s": 60.0,
    }
    return Holder(**{**base, **fields})


def test_second_run_fails_with_one_line_then_gets_the_lock_after_release(target):
    final, so = target
    proc = start_holder(final, so)
    try:
        holder = read_holder(final, so)
        assert holder.pid == proc.pid and holder.host == socket.gethostname()
        t0 = time.monotonic()
        with pytest.raises(PartitionLocked) as err, partition_lock(final, so, timeout_s=0.5):
            pass
        assert time.monotonic() - t0 >= 0.5  # it waited before giving up
        assert str(err.value) == (
            f"partition {final} is being written by run {holder.run} "
            f"({holder.host} pid {proc.pid}) since {holder.started}"
        )
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    assert not storage.exists(lock_url(final), so)  # released on exit
    with partition_lock(final, so, timeout_s=0):
        assert read_holder(final, so).pid == os.getpid()


def test_killed_holder_is_taken_over_at_once(target):
    final, so = target
    proc = start_holder(final, so)
    proc.kill()  # SIGKILL: no cleanup, the lock stays behind
    proc.wait()
    assert read_holder(final, so).pid == proc.pid
    with partition_lock(final, so, timeout_s=0):  # no waiting: the holder is dead on this host
        assert read_holder(final, so).pid == os.getpid()
    assert not storage.exists(lock_url(final), so)


def test_waiter_gets_the_lock_when_the_holder_finishes(tmp_path, driven):
    final = str(tmp_path / "p" / "2026-01-02")
    order, first_in, waiter_seen = [], threading.Event(), []

    def first() -> None:
        with partition_lock(final, timeout_s=0):
            order.append("first in")
            first_in.set()
            waiter_seen.append(driven.polled.wait(SIGNAL_S))  # the second run is waiting
            order.append("first out")

    t = threading.Thread(target=first, daemon=True)
    t.start()
    assert first_in.wait(SIGNAL_S)
    with partition_lock(final, timeout_s=SIGNAL_S):
        order.append("second in")
    t.join(SIGNAL_S)
    assert waiter_seen == [True]  # it found the lock held and waited for it
    assert order == ["first in", "first out", "second in"]


def test_lease_expiry_takes_over_a_lock_from_another_host(tmp_path):
    final = str(tmp_path / "p" / "2026-01-02")
    write_lock(final, {}, other_holder(lease_s=600.0))  # a lease no slow machine outlives
    who = r"run other-run \(elsewhere\.example pid 4242\)"
    with pytest.raises(PartitionLocked, match=who), partition_lock(final, timeout_s=0):
        pass
    old = time.time() - 601
    os.utime(lock_url(final), (old, old))  # no heartbeat for longer than its lease
    with partition_lock(final, timeout_s=0):
        assert read_holder(final, {}).pid == os.getpid()


@pytest.mark.s3
def test_lease_expiry_on_s3_uses_the_store_clock(s3, bucket):
    final, so = f"{bucket}/p/2026-01-02", s3.storage_options
    write_lock(final, so, other_holder(lease_s=600.0))
    with pytest.raises(PartitionLocked), partition_lock(final, so, timeout_s=0):
        pass
    age_in_store(lock_url(final), 601)  # the store last saw it written 601 s ago
    assert backend_for(lock_url(final), so).read()[1] >= 601  # the age is the store's
    with partition_lock(final, so, timeout_s=0):
        assert read_holder(final, so).pid == os.getpid()


def test_reused_pid_is_stale_but_a_live_holder_is_not(tmp_path):
    final = str(tmp_path / "p" / "2026-01-02")
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    entered, leave = threading.Event(), threading.Event()

    def other_run_in_here() -> None:  # alive: another run of this process holds it
        with partition_lock(final):
            entered.set()
            leave.wait(120)

    thread = threading.Thread(target=other_run_in_here)
    thread.start()
    try:
        assert entered.wait(120)
        with pytest.raises(PartitionLocked), partition_lock(final, timeout_s=0):
            pass
    finally:
        leave.set()
        thread.join()
    write_lock(final, {}, other_holder(**me, pid_start=12345.0))  # same pid, other process
    with partition_lock(final, timeout_s=0):
        assert read_holder(final, {}).pid == os.getpid()


def test_a_lock_this_process_left_behind_is_taken_over_at_once(tmp_path):
    """Defect: a run whose release failed (the store was down) left its lock; the re-run in
    the same process (`curate serve`, a backfill, a notebook) judged it alive, waited
    CURATE_LOCK_TIMEOUT_S and failed with "being written by" naming itself."""
    final = str(tmp_path / "p" / "2026-01-02")
    started = psutil.Process().create_time()
    left = other_holder(host=socket.gethostname(), pid=os.getpid(), pid_start=started)
    write_lock(final, {}, left)  # this pid and start time, but no live run of it holds it
    with partition_lock(final, timeout_s=0):
        assert read_holder(final, {}).token != left.token


def test_stale_rule_by_age():
    elsewhere = other_holder(lease_s=30.0)  # on another host: only its lease can tell
    assert not is_stale(elsewhere, 0.0) and not is_stale(elsewhere, 30.0)
    assert is_stale(elsewhere, 30.1)
    assert not is_stale(None, 0.0) and not is_stale(None, CORRUPT_GRACE_S)  # being written
    assert is_stale(None, CORRUPT_GRACE_S + 0.1)


def test_unreadable_lock_waits_for_its_writer_then_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(lock_module, "CORRUPT_GRACE_S", 600.0)  # no slow machine outlives it
    final = str(tmp_path / "p" / "2026-01-02")
    path = lock_url(final)
    os.makedirs(os.path.dirname(path))
    Path(path).write_bytes(b"")  # a writer killed between create and write
    with pytest.raises(PartitionLocked, match="unreadable"), partition_lock(final, timeout_s=0):
        pass
    os.utime(path, (time.time() - 601, time.time() - 601))
    with partition_lock(final, timeout_s=0):
        assert read_holder(final, {}).pid == os.getpid()


def test_heartbeat_keeps_a_long_run_locked(tmp_path, driven):
    final = str(tmp_path / "p" / "2026-01-02")
    path = lock_url(final)
    held, done = threading.Event(), threading.Event()

    def long_run() -> None:
        with partition_lock(final, timeout_s=0, lease_s=60):
            held.set()
            done.wait(SIGNAL_S)

    t = threading.Thread(target=long_run, daemon=True)
    t.start()
    try:
        assert held.wait(SIGNAL_S)
        for _ in range(13):  # 13 quarter leases: more than three leases without a release
            aged = shift_mtime(path, -15)  # a quarter lease passes in the store...
            driven.beat()  # ...and the heartbeat's interval runs out: it refreshes the lock
            assert os.stat(path).st_mtime > aged
        with pytest.raises(PartitionLocked), partition_lock(final, timeout_s=0):
            pass  # (195 s old by now without the heartbeat, lease 60 s: taken over)
    finally:
        done.set()
        t.join(SIGNAL_S)
    assert not t.is_alive()
    assert driven.intervals == [15.0] * 14  # a beat every lease / 4, then the stop


def test_heartbeat_refreshes_the_lease_in_real_time(tmp_path):
    final = str(tmp_path / "p" / "2026-01-02")
    with partition_lock(final, timeout_s=0, lease_s=0.2):  # the real clock: a beat every 0.05 s
        path = lock_url(final)
        aged = shift_mtime(path, -3600)
        wait_until(lambda: os.stat(path).st_mtime > aged, "a heartbeat refreshed the lock")
        assert_held(final)


def test_racing_runs_exactly_one_wins(target):
    final, so = target
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a stale lock of a dead process: every racer wants to take it over
    write_lock(final, so, other_holder(host=socket.gethostname(), pid=dead.pid))
    barrier, results, tried = threading.Barrier(6, timeout=SIGNAL_S), [], threading.Condition()

    def race() -> None:
        barrier.wait()
        try:
            with partition_lock(final, so, timeout_s=0), tried:
                results.append("won")
                tried.notify_all()
                # hold the lock until every racer has had its try, however slow they are
                tried.wait_for(lambda: len(results) == 6, timeout=SIGNAL_S)
        except PartitionLocked:
            with tried:
                results.append("locked")
                tried.notify_all()

    threads = [threading.Thread(target=race, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * SIGNAL_S)
    assert not any(t.is_alive() for t in threads)
    assert sorted(results) == ["locked"] * 5 + ["won"]


def test_a_run_that_lost_its_lock_does_not_publish(target):
    final, so = target
    with partition_lock(final, so, timeout_s=0):
        stage = begin(final, so)
        storage.write_bytes(stage.url("a.txt"), b"a", so)
        assert_held(final)
        write_lock(final, so, other_holder())  # its lease ran out and another run took over
        with pytest.raises(LockLost):
            commit(stage, {"flow": "pool"}, [])
    assert not storage.exists(storage.join(final, "_SUCCESS"), so)
    assert read_holder(final, so).run == "other-run"  # the new holder's lock is left alone


def test_reentrant_in_one_thread(tmp_path):
    final = tmp_path / "p" / "2026-01-02"
    write_lock(str(final), {}, other_holder())
    with pytest.raises(PartitionLocked), partition_lock(str(final), timeout_s=0):
        pass
    os.remove(lock_url(str(final)))
    with partition_lock(str(final), timeout_s=0):
        with partition_lock(str(final), timeout_s=0):  # the same run again: no deadlock
            pass
        assert read_holder(str(final), {}).pid == os.getpid()
    assert not os.path.exists(lock_url(str(final)))


def test_cli_run_on_a_locked_partition_fails_with_one_line(
    tmp_path, tiny_model, prefect_harness, capsys, monkeypatch
):
    import yaml

    from flows.cli import main
    from tests.pool_factory import make_samples, write_tar

    (tmp_path / "in").mkdir()
    write_tar(tmp_path / "in" / "0.tar", make_samples(4, seed=1))
    cfg = {
        "dataset": "t",
        "output": str(tmp_path / "out"),
        "model": {**tiny_model, "precision": "fp32", "device": "cpu"},
        "pool": {"input": str(tmp_path / "in" / "*.tar")},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    final = str(tmp_path / "out" / "t" / "pool" / "2026-01-02")
    proc = start_holder(final, {})
    monkeypatch.setenv("CURATE_LOCK_TIMEOUT_S", "0.3")
    try:
        rc = main(["run", "pool", "-c", str(tmp_path / "c.yaml"), "--partition", "2026-01-02"])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 5  # the documented exit status of a locked partition
    assert last.startswith(f"curate: PartitionLocked: partition {final} is being written by run")
    assert f"pid {proc.pid}) since " in last
    assert sorted(os.listdir(tmp_path / "out" / "t" / "pool")) == [".2026-01-02.lock"]
