"""Cancellation: SIGTERM ends a run within one batch, and a killed run leaves no server behind.

`curate run pool` runs in a subprocess whose model is slowed down (a driver script wraps the
image encoder), so that scoring one shard takes far longer than the bound checked here: a
run that waited for its in-flight shards to finish would blow it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tasks.io import storage
from tasks.io.lock import lock_url
from tasks.publish.manifest import read_manifest
from tests.helpers import ROOT
from tests.pool_factory import make_samples, write_tar

PARTITION = "2026-05-06"
WAIT_S = 180.0  # generous: reaching the marker includes imports and model loading
BATCH_SLEEP_S = 0.5
DRIVER = r"""
import sys, time
from pathlib import Path

marker = Path(sys.argv[1])
import tasks.model.clip as clip

encode = clip.ClipModel.encode_images


def slow_encode(self, pixels):
    marker.write_text("scoring")
    time.sleep(float(sys.argv[2]))
    return encode(self, pixels)


clip.ClipModel.encode_images = slow_encode
from flows.cli import main

sys.exit(main(["run", "pool", "-c", sys.argv[3], "--partition", sys.argv[4]]))
"""


@pytest.fixture
def slow_run(tmp_path: Path, tiny_model: dict):
    """Start the slowed run; yields (process, partition folder, cache folder)."""
    (tmp_path / "in").mkdir()
    for i in range(2):  # 60 batches of 2 per shard: about 30 s of scoring each
        write_tar(tmp_path / "in" / f"{i}.tar", make_samples(120, seed=i))
    cfg = {
        "dataset": "c",
        "output": str(tmp_path / "out"),
        "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 2},
        "pool": {"input": str(tmp_path / "in" / "*.tar")},
        "runner": {"workers": 2},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "driver.py").write_text(DRIVER)
    procs: list[subprocess.Popen] = []

    def start(env: dict[str, str]) -> subprocess.Popen:
        marker = tmp_path / "marker"
        args = [
            sys.executable,
            str(tmp_path / "driver.py"),
            str(marker),
            str(BATCH_SLEEP_S),
            str(tmp_path / "c.yaml"),
            PARTITION,
        ]
        proc = subprocess.Popen(
            args, cwd=ROOT, env=env, start_new_session=True, stderr=subprocess.PIPE, text=True
        )
        procs.append(proc)
        deadline = time.monotonic() + WAIT_S
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"the run ended before scoring: {proc.stderr.read()[-2000:]}")
            assert time.monotonic() < deadline, "the run never started scoring"
            time.sleep(0.05)
        return proc

    yield start, tmp_path / "out" / "c" / "pool" / PARTITION, tmp_path / "out" / "c" / "_cache"
    for proc in procs:  # whatever happened, leave nothing running
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()


def test_sigterm_stops_in_flight_scoring_at_once(slow_run, prefect_harness):
    from prefect.settings import get_current_settings

    start, final, cache = slow_run
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}
    proc = start(env)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    elapsed = time.monotonic() - t0
    err = proc.stderr.read()
    assert elapsed < 15, f"took {elapsed:.1f}s to stop: {err[-1500:]}"
    assert proc.returncode != 0
    assert "terminated (SIGTERM)" in err.strip().splitlines()[-1]
    assert read_manifest(str(final)) is None  # nothing published
    assert not storage.exists(lock_url(str(final)))  # the lock was released on the way out
    # the cache is consistent: no shard finished, so no entry was committed
    assert list(cache.glob("pool-scores/*/done.json")) == []


def test_a_killed_run_leaves_no_prefect_server_behind(slow_run):
    start, _, _ = slow_run
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = start(env)  # no API configured: the run started a temporary server of its own
    servers = [
        p
        for p in psutil.Process(proc.pid).children(recursive=True)
        if "infra.server_child" in " ".join(p.cmdline())
    ]
    assert len(servers) == 1
    os.kill(proc.pid, signal.SIGKILL)  # the run only: nothing gets to clean up
    proc.wait()
    _, alive = psutil.wait_procs(servers, timeout=60)
    try:
        assert alive == [], "the temporary Prefect server outlived its run"
    finally:
        for p in alive:
            os.killpg(p.pid, signal.SIGKILL)
