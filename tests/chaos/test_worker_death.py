"""A Dask or Ray worker killed (SIGKILL: the OOM killer, a preempted node) while it scores a
shard (issue 22, item 4).

Dask: the run joins a local cluster the test holds (`runner.address`), so the test can see
which worker is busy and kill exactly that one when the first shard's result comes back.
Dask's scheduler gives the lost worker's tasks to another worker (its nanny also starts a new
one). Ray: the run's own local instance; a busy worker is the process whose title names a
task (`ray::score-shard`, an idle one is `ray::IDLE`); Ray runs a task again when its worker
died (3 retries by default). Either way the run must publish the bytes of a run without the
kill: no sample lost, none twice.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from flows.pool import run_pool
from flows.progress import Progress
from schemas.config import parse_config
from tests.chaos.conftest import PARTITION, pool_config, published_digest


@pytest.fixture
def cluster():
    distributed = pytest.importorskip("distributed")
    pytest.importorskip("prefect_dask")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as c,
        distributed.Client(c) as client,
    ):
        yield c, client


def kill_a_busy_worker(client) -> str | None:
    """SIGKILL a worker that is running a task right now; its address (None if none is)."""
    busy = [w for w, keys in client.processing().items() if keys]
    if not busy:
        return None
    pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
    os.kill(pid, signal.SIGKILL)
    return busy[0]


def kill_a_busy_ray_worker() -> int | None:
    """SIGKILL a Ray worker process scoring a shard of this run; its pid (None if none is).

    Only this process's descendants (the local instance it started): never another's Ray."""
    import psutil

    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
        except psutil.Error:  # exited meanwhile
            continue
        if title.startswith("ray::score-shard"):  # Ray titles a worker by its task
            proc.send_signal(signal.SIGKILL)
            return proc.pid
    return None


def run(tiny_model, pool_inputs: Path, output: Path, **cfg) -> dict:
    config = pool_config(tiny_model, str(pool_inputs / "{date}" / "*.tar"), str(output))
    return run_pool(parse_config({**config, **cfg}), PARTITION)


def test_dask_worker_killed_while_scoring(
    cluster, tiny_model, pool_inputs, tmp_path, monkeypatch, prefect_harness
):
    c, client = cluster
    clean = run(tiny_model, pool_inputs, tmp_path / "clean")
    advance, killed = Progress.advance, []

    def advance_and_kill(self: Progress, units: float = 0.0) -> None:
        if not killed:
            victim = kill_a_busy_worker(client)
            if victim is not None:
                killed.append(victim)
        advance(self, units)

    monkeypatch.setattr(Progress, "advance", advance_and_kill)
    runner = {"kind": "dask", "address": c.scheduler_address}
    result = run(tiny_model, pool_inputs, tmp_path / "faulty", runner=runner)
    assert killed, "no worker was busy when a shard's result came back"
    assert result["status"] == "published"
    assert published_digest(result["uri"]) == published_digest(clean["uri"])


def test_ray_worker_killed_while_scoring(
    tiny_model, pool_inputs, tmp_path, monkeypatch, prefect_harness
):
    pytest.importorskip("ray")
    pytest.importorskip("prefect_ray")
    pytest.importorskip("psutil")
    clean = run(tiny_model, pool_inputs, tmp_path / "clean")
    advance, killed = Progress.advance, []

    def advance_and_kill(self: Progress, units: float = 0.0) -> None:
        if not killed:
            victim = kill_a_busy_ray_worker()
            if victim is not None:
                killed.append(victim)
        advance(self, units)

    monkeypatch.setattr(Progress, "advance", advance_and_kill)
    runner = {"kind": "ray", "workers": 2}
    result = run(tiny_model, pool_inputs, tmp_path / "faulty", runner=runner)
    assert killed, "no Ray worker was busy when a shard's result came back"
    assert result["status"] == "published"
    assert published_digest(result["uri"]) == published_digest(clean["uri"])
