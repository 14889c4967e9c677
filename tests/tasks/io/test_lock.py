"""`partition_lock`: one run per partition, locally and on S3 (moto), with stale-lock recovery."""

from __future__ import annotations

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
from helpers import ROOT

from tasks.io import storage
from tasks.io.lock import Holder, LockLost, PartitionLocked, assert_held, lock_url, partition_lock
from tasks.publish.commit import begin, commit

pytest_plugins = ["s3_fixture"]  # the `s3` and `bucket` fixtures
HOLDER = """
import json, sys
from tasks.io.lock import partition_lock
with partition_lock(sys.argv[1], json.loads(sys.argv[2]), lease_s=60):
    print("held", flush=True)
    sys.stdin.read()
"""


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


def test_waiter_gets_the_lock_when_the_holder_finishes(tmp_path):
    final = str(tmp_path / "p" / "2026-01-02")
    order = []

    def first() -> None:
        with partition_lock(final, timeout_s=0):
            order.append("first in")
            time.sleep(0.4)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    while not order:
        time.sleep(0.01)
    with partition_lock(final, timeout_s=10):
        order.append("second in")
    t.join()
    assert order == ["first in", "first out", "second in"]


def test_lease_expiry_takes_over_a_lock_from_another_host(tmp_path):
    final = str(tmp_path / "p" / "2026-01-02")
    write_lock(final, {}, other_holder(lease_s=30.0))
    who = r"run other-run \(elsewhere\.example pid 4242\)"
    with pytest.raises(PartitionLocked, match=who), partition_lock(final, timeout_s=0):
        pass
    old = time.time() - 31
    os.utime(lock_url(final), (old, old))  # no heartbeat for longer than its lease
    with partition_lock(final, timeout_s=0):
        assert read_holder(final, {}).pid == os.getpid()


@pytest.mark.s3
def test_lease_expiry_on_s3_uses_the_store_clock(s3, bucket):
    final, so = f"{bucket}/p/2026-01-02", s3.storage_options
    write_lock(final, so, other_holder(lease_s=1.0))
    with pytest.raises(PartitionLocked), partition_lock(final, so, timeout_s=0):
        pass
    time.sleep(2.1)  # S3's LastModified has a resolution of one second
    with partition_lock(final, so, timeout_s=0):
        assert read_holder(final, so).pid == os.getpid()


def test_reused_pid_is_stale_but_a_live_holder_is_not(tmp_path):
    final = str(tmp_path / "p" / "2026-01-02")
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    started = psutil.Process().create_time()
    write_lock(final, {}, other_holder(**me, pid_start=started))  # alive: another run in here
    with pytest.raises(PartitionLocked), partition_lock(final, timeout_s=0):
        pass
    write_lock(final, {}, other_holder(**me, pid_start=12345.0))  # same pid, other process
    with partition_lock(final, timeout_s=0):
        assert read_holder(final, {}).pid == os.getpid()


def test_unreadable_lock_waits_for_its_writer_then_is_taken_over(tmp_path):
    final = str(tmp_path / "p" / "2026-01-02")
    path = lock_url(final)
    os.makedirs(os.path.dirname(path))
    Path(path).write_bytes(b"")  # a writer killed between create and write
    with pytest.raises(PartitionLocked, match="unreadable"), partition_lock(final, timeout_s=0):
        pass
    os.utime(path, (time.time() - 60, time.time() - 60))
    with partition_lock(final, timeout_s=0):
        assert read_holder(final, {}).pid == os.getpid()


def test_heartbeat_keeps_a_long_run_locked(tmp_path):
    final = str(tmp_path / "p" / "2026-01-02")
    held, done = threading.Event(), threading.Event()

    def long_run() -> None:
        with partition_lock(final, timeout_s=0, lease_s=0.5):
            held.set()
            done.wait(10)

    t = threading.Thread(target=long_run)
    t.start()
    held.wait(5)
    time.sleep(1.6)  # more than three leases
    with pytest.raises(PartitionLocked), partition_lock(final, timeout_s=0):
        pass
    done.set()
    t.join()


def test_racing_runs_exactly_one_wins(target):
    final, so = target
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a stale lock of a dead process: every racer wants to take it over
    write_lock(final, so, other_holder(host=socket.gethostname(), pid=dead.pid))
    barrier, results = threading.Barrier(6), []

    def race() -> None:
        barrier.wait()
        try:
            with partition_lock(final, so, timeout_s=0):
                results.append("won")
                time.sleep(0.5)
        except PartitionLocked:
            results.append("locked")

    threads = [threading.Thread(target=race) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
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


def test_reentrant_in_one_thread_and_stale_staging_cleaned_only_under_the_lock(tmp_path):
    final = tmp_path / "p" / "2026-01-02"
    leftovers = [
        final.parent / f".{final.name}.staging-dead",
        final.parent / f".{final.name}.old-x",
    ]
    held = final.parent / f".{final.name}.held-abc"
    for d in [*leftovers, held]:
        d.mkdir(parents=True)
    write_lock(str(final), {}, other_holder())
    with pytest.raises(PartitionLocked), partition_lock(str(final), timeout_s=0):
        pass
    assert all(d.exists() for d in leftovers)  # not ours to clean while another run holds it
    os.remove(lock_url(str(final)))
    with partition_lock(str(final), timeout_s=0):
        assert not any(d.exists() for d in leftovers) and held.exists()
        with partition_lock(str(final), timeout_s=0):  # the same run again: no deadlock
            pass
        assert read_holder(str(final), {}).pid == os.getpid()
    assert not os.path.exists(lock_url(str(final)))


def test_cli_run_on_a_locked_partition_fails_with_one_line(
    tmp_path, tiny_model, prefect_harness, capsys, monkeypatch
):
    import yaml
    from pool_factory import make_samples, write_tar

    from flows.cli import main

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
    assert rc == 1
    assert last.startswith(f"curate: PartitionLocked: partition {final} is being written by run")
    assert f"pid {proc.pid}) since " in last
    assert sorted(os.listdir(tmp_path / "out" / "t" / "pool")) == [".2026-01-02.lock"]
