"""Kill tests: `curate run pool` in a subprocess is SIGKILLed at a chosen point, then re-run.

The re-run must publish exactly what one uninterrupted run publishes (same samples.parquet,
same shard bytes), reusing the per-shard work that finished. No hook in the product picks the
point: a driver script (test code, run in the subprocess) wraps a product function so that
the run pauses right there and writes a marker file; the test waits for the marker and kills
the whole process group with SIGKILL, so nothing gets to clean up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import polars as pl
import pytest
import yaml
from helpers import ROOT
from pool_factory import make_samples, write_tar

from flows.pool import run_pool
from schemas.config import parse_config
from tasks.io import storage
from tasks.io.lock import Holder, lock_url
from tasks.publish.commit import read_manifest
from tasks.verify import verify_partition

pytest_plugins = ["s3_fixture"]  # the `s3` and `bucket` fixtures
PARTITION = "2026-04-05"
N_SHARDS = 4
DRIVER = r"""
import sys, time
from pathlib import Path

point, marker, config, partition = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]


def pause(tag):
    marker.write_text(tag)
    time.sleep(600)  # the test kills the process here


import flows.pool as flow
import tasks.publish.commit as publish
import tasks.publish.writer as shards

if point == "score":  # two input shards scored and cached, the others not
    score, done = flow.score_shard, []

    def score_shard(*a, **k):
        done.append(score(*a, **k))
        if len(done) == 2:
            pause(point)
        return done[-1]

    flow.score_shard = score_shard
elif point == "select":  # every shard scored, nothing selected yet
    flow.select = lambda *a, **k: pause(point)
elif point == "publish":  # first output tar staged, the second one half written
    write, writers = shards._HashingWriter.write, []

    def hashing_write(self, data):
        n = write(self, data)
        if self not in writers:
            writers.append(self)
        if len(writers) == 2 and self.bytes > 512:
            pause(point)
        return n

    shards._HashingWriter.write = hashing_write
elif point == "commit":  # the partition in place with its manifest, `_SUCCESS` not written
    swap, prune = publish._swap_local, publish._remove_stale
    publish._swap_local = lambda *a: (swap(*a), pause(point))
    publish._remove_stale = lambda *a: (prune(*a), pause(point))

from flows.cli import main

sys.exit(main(["run", "pool", "-c", config, "--partition", partition]))
"""


def pool_config(tiny_model: dict, inputs: str, output: str, so: dict | None = None) -> dict:
    return {
        "dataset": "k",
        "output": output,
        "storage_options": so or {},
        "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 4},
        "pool": {
            "input": inputs,
            "clip_filter": {"top_fraction": 0.6},
            "shard": {"max_samples": 5},
        },
        "runner": {"workers": 1},  # one task at a time: the kill points are exact
    }


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("kill") / "in"
    folder.mkdir()
    for i in range(N_SHARDS):
        write_tar(folder / f"{i:05d}.tar", make_samples(6, seed=10 + i))
    return folder


@pytest.fixture(scope="module")
def reference(pool, tiny_model, tmp_path_factory, prefect_harness) -> Path:
    """The partition one uninterrupted run publishes."""
    out = tmp_path_factory.mktemp("reference")
    run_pool(parse_config(pool_config(tiny_model, str(pool / "*.tar"), str(out))), PARTITION)
    return out / "k" / "pool" / PARTITION


def api_env() -> dict[str, str]:
    """The environment for the subprocess: this session's Prefect API (no server of its own)."""
    from prefect.settings import get_current_settings

    return {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}


def kill_at(point: str, config: dict, tmp_path: Path) -> int:
    """Run the pool flow in a subprocess, SIGKILL it at `point`; returns its pid."""
    cfg_path, marker, driver = tmp_path / "c.yaml", tmp_path / "marker", tmp_path / "driver.py"
    cfg_path.write_text(yaml.safe_dump(config))
    driver.write_text(DRIVER)
    args = [sys.executable, str(driver), point, str(marker), str(cfg_path), PARTITION]
    proc = subprocess.Popen(
        args, cwd=ROOT, env=api_env(), start_new_session=True, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 180
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before reaching {point}: {proc.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, f"never reached {point}"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return proc.pid


def tar_members(data: bytes) -> list[tuple[str, bytes]]:
    import io

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def assert_same_partition(uri: str, reference: Path, so: dict | None = None) -> None:
    """Same samples table and byte-identical shards (tar members and their bytes)."""
    samples = storage.read_parquet(storage.join(uri, "samples.parquet"), so)
    assert samples.equals(pl.read_parquet(reference / "samples.parquet"))
    names = sorted(p.name for p in (reference / "shards").iterdir())
    got = sorted(u.rsplit("/", 1)[-1] for u in storage.listdir(storage.join(uri, "shards"), so))
    assert got == names and any(n.endswith(".tar") for n in names)
    for name in names:
        data = storage.read_bytes(storage.join(uri, "shards", name), so)
        expected = (reference / "shards" / name).read_bytes()
        if name.endswith(".tar"):
            assert tar_members(data) == tar_members(expected)
        assert data == expected, name


def cached_scores(root: Path) -> int:
    return len(list((root / "k" / "_cache" / "pool" / "scores").glob("*.stats.json")))


def check_killed_state(point: str, out: Path, pid: int) -> None:
    """What a SIGKILL at `point` leaves behind: never a published partition."""
    parts = out / "k" / "pool"
    final = parts / PARTITION
    assert read_manifest(str(final)) is None
    holder = Holder.parse(Path(lock_url(str(final))).read_bytes())
    assert holder.pid == pid  # its lock stays behind: the holder is dead, nobody released it
    staging = [p for p in parts.iterdir() if ".staging-" in p.name]
    if point == "score":
        assert cached_scores(out) == 2 and not staging and not final.exists()
    elif point == "select":
        assert cached_scores(out) == N_SHARDS and not staging and not final.exists()
    elif point == "publish":
        [stage] = staging
        assert (stage / "shards" / "000000.tar").exists() and not final.exists()
        assert not (stage / "shards" / "000001.tar").exists()  # half-written under a temp name
        assert any(p.name.startswith(".000001.tar.") for p in (stage / "shards").iterdir())
    else:  # commit: in place with a manifest, yet not published
        assert (final / "manifest.json").exists() and not (final / "_SUCCESS").exists()
        assert verify_partition(str(final)) != []


def kill_and_resume(point, pool, reference, tiny_model, tmp_path) -> None:
    out = tmp_path / "out"
    config = pool_config(tiny_model, str(pool / "*.tar"), str(out))
    pid = kill_at(point, config, tmp_path)
    check_killed_state(point, out, pid)

    result = run_pool(parse_config(config), PARTITION)  # the re-run, in this process
    final = out / "k" / "pool" / PARTITION
    assert result["status"] == "published" and verify_partition(str(final)) == []
    assert_same_partition(str(final), reference)
    shards = json.loads((final / "stats.json").read_text())["shards"]
    reused = 2 if point == "score" else N_SHARDS
    assert (shards["cached"], shards["scored"]) == (reused, N_SHARDS - reused)
    leftovers = [p.name for p in final.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # stale staging cleaned, lock released


def test_kill_mid_publish_then_rerun(pool, reference, tiny_model, tmp_path):
    kill_and_resume("publish", pool, reference, tiny_model, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["score", "select", "commit"])
def test_kill_then_rerun(point, pool, reference, tiny_model, tmp_path):
    kill_and_resume(point, pool, reference, tiny_model, tmp_path)


@pytest.mark.s3
def test_s3_partition_killed_mid_publish_is_unpublished_until_rerun(
    pool, tiny_model, tmp_path, s3, bucket, prefect_harness
):
    """On S3 files are written in place: the killed run must have unpublished the old version
    first, and the re-run must replace every file of it."""
    s3.upload(str(pool), f"{bucket}/in")
    so = s3.storage_options
    inputs = f"{bucket}/in/*.tar"
    ref_cfg = pool_config(tiny_model, inputs, f"{bucket}/reference", so)
    run_pool(parse_config(ref_cfg), PARTITION)
    reference = tmp_path / "reference"
    s3.fs().get(f"{bucket}/reference/k/pool/{PARTITION}/", str(reference), recursive=True)

    config = pool_config(tiny_model, inputs, f"{bucket}/out", so)
    before = {**config, "pool": {**config["pool"], "clip_filter": {"top_fraction": 1.0}}}
    run_pool(parse_config(before), PARTITION)  # an older version, with more shards
    final = f"{bucket}/out/k/pool/{PARTITION}"
    old_files = {o["path"] for o in read_manifest(final, so)["outputs"]}

    pid = kill_at("publish", config, tmp_path)
    assert read_manifest(final, so) is None  # no `_SUCCESS`: not visible as published
    assert not storage.exists(f"{final}/_SUCCESS", so)
    assert verify_partition(final, so) != []
    assert Holder.parse(storage.read_bytes(lock_url(final), so)).pid == pid

    result = run_pool(parse_config(config), PARTITION)
    assert result["status"] == "published" and verify_partition(final, so) == []
    assert_same_partition(final, reference, so)
    manifest = read_manifest(final, so)
    listed = {o["path"] for o in manifest["outputs"]} | {"manifest.json", "_SUCCESS"}
    fs = s3.fs()
    present = {p.removeprefix(final.removeprefix("s3://") + "/") for p in fs.find(final)}
    assert old_files - listed  # the old version had shards the new one has not...
    assert present == listed  # ...and they are gone: only the manifest's files remain
    assert not storage.exists(lock_url(final), so)
