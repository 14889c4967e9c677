"""Kill tests: `curate run pool` in a subprocess is SIGKILLed at a chosen point, then re-run.

Two promises are checked, locally and on S3 (moto):
- resume: the re-run publishes exactly what one uninterrupted run publishes (same
  samples.parquet, same shard bytes), reusing the per-shard work that finished;
- atomic re-publish: while a new version of a published partition is being written,
  committed or held by the gate, the previous version stays published, intact and
  `curate verify`-clean, until the new one replaces it in one step.

No hook in the product picks the point: a driver script (test code, run in the subprocess)
wraps a product function so that the run pauses right there and writes a marker file; the
test waits for the marker and kills the whole process group with SIGKILL, so nothing gets
to clean up.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from flows.pool import run_pool
from schemas.config import parse_config
from tasks.io import storage
from tasks.io.lock import Holder, lock_url
from tasks.publish.catalog import read_catalog
from tasks.publish.gate import GateHeld
from tasks.publish.manifest import read_manifest, read_published
from tasks.verify import verify_dataset, verify_partition
from tests.helpers import ROOT
from tests.pool_factory import make_samples, write_tar

pytest_plugins = ["tests.s3_fixture"]  # the `s3` and `bucket` fixtures
PARTITION = "2026-04-05"
N_SHARDS = 4
WAIT_S = 180  # generous: a cold start on a loaded 2-core machine
DRIVER = r"""
import sys, time
from pathlib import Path

point, marker, config, partition = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]


def pause(tag):
    marker.write_text(tag)
    time.sleep(600)  # the test kills the process here


def before(module, name, tag):
    real = getattr(module, name)

    def wrapped(*a, **k):
        pause(tag)
        return real(*a, **k)

    setattr(module, name, wrapped)


import flows.pool as flow
import tasks.publish.catalog as catalog
import tasks.publish.commit as commit
import tasks.publish.writer as writer

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
elif point == "publish":  # first output tar written, the second one half written
    write, writers = writer._HashingWriter.write, []

    def hashing_write(self, data):
        n = write(self, data)
        if self not in writers:
            writers.append(self)
        if len(writers) == 2 and self.bytes > 512:
            pause(point)
        return n

    writer._HashingWriter.write = hashing_write
elif point == "pointer":  # every file of the new version written, manifest not yet moved
    before(commit, "write_pointer", point)
elif point == "success":  # manifest moved, `_SUCCESS` not yet checked/written
    before(commit, "mark_success", point)
elif point == "prune":  # the new version published, older ones not yet removed
    before(commit, "prune", point)
elif point == "catalog":  # manifest moved, the catalog still holds the pending mark only
    before(catalog, "finish", point)

from flows.cli import main

sys.exit(main(["run", "pool", "-c", config, "--partition", partition]))
"""


def pool_config(
    tiny_model: dict, inputs: str, output: str, so: dict | None = None, top: float = 0.6
) -> dict:
    return {
        "dataset": "k",
        "output": output,
        "storage_options": so or {},
        "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 4},
        "pool": {
            "input": inputs,
            "clip_filter": {"top_fraction": top},
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
def reference(pool, tiny_model, tmp_path_factory, prefect_harness) -> str:
    """The partition one uninterrupted run publishes."""
    out = tmp_path_factory.mktemp("reference")
    run_pool(parse_config(pool_config(tiny_model, str(pool / "*.tar"), str(out))), PARTITION)
    return str(out / "k" / "pool" / PARTITION)


def api_env() -> dict[str, str]:
    """The environment for the subprocess: this session's Prefect API (no server of its own)."""
    from prefect.settings import get_current_settings

    return {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}


def kill_at(point: str, config: dict, tmp_path: Path) -> int:
    """Run the pool flow in a subprocess, SIGKILL it at `point`; returns its pid."""
    cfg_path, marker, driver = tmp_path / "c.yaml", tmp_path / "marker", tmp_path / "driver.py"
    marker.unlink(missing_ok=True)
    cfg_path.write_text(yaml.safe_dump(config))
    driver.write_text(DRIVER)
    args = [sys.executable, str(driver), point, str(marker), str(cfg_path), PARTITION]
    proc = subprocess.Popen(
        args, cwd=ROOT, env=api_env(), start_new_session=True, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + WAIT_S
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
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def assert_same_partition(uri: str, reference: str, so: dict | None = None) -> None:
    """Same samples table and byte-identical shards (tar members and their bytes)."""
    got, ref = read_published(uri, so), read_published(reference, so)
    samples = storage.read_parquet(got.url("samples.parquet"), so)
    assert samples.equals(storage.read_parquet(ref.url("samples.parquet"), so))
    names = sorted(n for n in ref.names() if n.startswith("shards/"))
    assert sorted(n for n in got.names() if n.startswith("shards/")) == names
    assert any(n.endswith(".tar") for n in names)
    for name in names:
        data = storage.read_bytes(got.url(name), so)
        expected = storage.read_bytes(ref.url(name), so)
        if name.endswith(".tar"):
            assert tar_members(data) == tar_members(expected)
        assert data == expected, name


def folder_names(final: str, so: dict | None) -> set[str]:
    return {u.rstrip("/").rsplit("/", 1)[-1] for u in storage.listdir(final, so)}


def cached_scores(root: Path) -> int:
    return len(list((root / "k" / "_cache" / "pool-scores").glob("*/done.json")))


def check_first_publish_killed(point: str, out: Path, pid: int) -> None:
    """What a SIGKILL at `point` of a first run leaves behind: never a published partition."""
    final = out / "k" / "pool" / PARTITION
    assert read_manifest(str(final)) is None
    holder = Holder.parse(Path(lock_url(str(final))).read_bytes())
    assert holder.pid == pid  # its lock stays behind: the holder is dead, nobody released it
    if point == "score":
        assert cached_scores(out) == 2 and not final.exists()
    elif point == "select":
        assert cached_scores(out) == N_SHARDS and not final.exists()
    elif point == "publish":
        [version] = final.iterdir()  # an unpublished version folder, nothing else
        assert (version / "shards" / "000000.tar").exists()
        assert not (version / "shards" / "000001.tar").exists()  # half-written: a temp name
        assert any(p.name.startswith(".000001.tar.") for p in (version / "shards").iterdir())
    else:  # success: the manifest is in place, `_SUCCESS` is not: not published
        assert (final / "manifest.json").exists() and not (final / "_SUCCESS").exists()
        assert verify_partition(str(final)) != []


def kill_and_resume(point, pool, reference, tiny_model, tmp_path) -> None:
    out = tmp_path / "out"
    config = pool_config(tiny_model, str(pool / "*.tar"), str(out))
    pid = kill_at(point, config, tmp_path)
    check_first_publish_killed(point, out, pid)

    result = run_pool(parse_config(config), PARTITION)  # the re-run, in this process
    final = str(out / "k" / "pool" / PARTITION)
    assert result["status"] == "published" and verify_partition(final) == []
    assert_same_partition(final, reference)
    published = read_published(final)
    shards = json.loads(Path(published.url("stats.json")).read_text())["shards"]
    reused = 2 if point == "score" else N_SHARDS
    assert (shards["cached"], shards["scored"]) == (reused, N_SHARDS - reused)
    # the killed run's version folder is gone, its lock released
    expected = {"manifest.json", "_SUCCESS", "README.md", published.version}
    assert folder_names(final, None) == expected
    assert not Path(lock_url(final)).exists()


def test_kill_mid_publish_then_rerun(pool, reference, tiny_model, tmp_path):
    kill_and_resume("publish", pool, reference, tiny_model, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["score", "select", "success"])
def test_kill_then_rerun(point, pool, reference, tiny_model, tmp_path):
    kill_and_resume(point, pool, reference, tiny_model, tmp_path)


@pytest.fixture(scope="module")
def s3_pool(request, pool, tiny_model, prefect_harness) -> tuple[str, str, dict, str]:
    """The pool uploaded to moto once, and the partition one clean run publishes from it
    (sources are s3:// URLs there, so an S3 run is compared with an S3 reference)."""
    s3 = request.getfixturevalue("s3")
    bucket = s3.create_bucket(f"resume-{uuid.uuid4().hex[:12]}")
    s3.upload(str(pool), f"{bucket}/in")
    inputs, so = f"{bucket}/in/*.tar", s3.storage_options
    run_pool(parse_config(pool_config(tiny_model, inputs, f"{bucket}/reference", so)), PARTITION)
    return inputs, bucket, so, f"{bucket}/reference/k/pool/{PARTITION}"


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request, pool, reference, tmp_path) -> tuple[str, str, dict, str]:
    """(inputs glob, output root, storage options, reference partition): local disk or S3."""
    if request.param == "local":
        return str(pool / "*.tar"), str(tmp_path / "out"), {}, reference
    inputs, bucket, so, ref = request.getfixturevalue("s3_pool")
    return inputs, f"{bucket}/out-{uuid.uuid4().hex[:8]}", so, ref


def publish_old_version(tiny_model, store) -> tuple[dict, str, dict]:
    """Publish a first version (all samples kept, so it has more shards than the new one)."""
    inputs, output, so, _ = store
    old = pool_config(tiny_model, inputs, output, so, top=1.0)
    run_pool(parse_config(old), PARTITION)
    final = f"{output}/k/pool/{PARTITION}"
    manifest = read_manifest(final, so)
    assert verify_partition(final, so) == []
    return old, final, manifest


@pytest.mark.parametrize("point", ["publish", "pointer", "catalog", "prune"])
def test_republish_killed_keeps_the_previous_version(
    point, store, tiny_model, tmp_path, prefect_harness
):
    """Killed while writing the new version or just before the pointer moves: readers still
    get the old version, whole. Killed after the pointer moved: they get the new one."""
    _, final, old = publish_old_version(tiny_model, store)
    inputs, output, so, reference = store
    config = pool_config(tiny_model, inputs, output, so)
    pid = kill_at(point, config, tmp_path)
    assert Holder.parse(storage.read_bytes(lock_url(final), so)).pid == pid
    now = read_manifest(final, so)
    moved = point in ("catalog", "prune")  # the pointer had moved: the new version is published
    if moved:
        assert now["version"] != old["version"] and now["previous_version"] == old["version"]
    else:
        assert now == old
    assert verify_partition(final, so) == []
    dataset = final.rsplit("/", 2)[0]  # {output}/k: its catalog equals the manifests
    assert verify_dataset(dataset, so) == []
    assert read_catalog(f"{dataset}/pool", so).entries[PARTITION]["version"] == now["version"]

    result = run_pool(parse_config(config), PARTITION)  # resume
    published = read_published(final, so)
    if moved:  # already published with this run key: nothing to do
        assert result["status"] == "skipped"
    else:
        assert result["status"] == "published"
        assert published.manifest["previous_version"] == old["version"]
    assert verify_partition(final, so) == []
    assert verify_dataset(dataset, so) == []
    assert_same_partition(final, reference, so)
    # the killed run's files are gone; the replaced version is kept for readers in flight
    expected = {"manifest.json", "_SUCCESS", "README.md", published.version, old["version"]}
    if moved:  # the skipped re-run touched nothing (not even the dead run's lock,
        assert expected <= folder_names(final, so)  # which the next run takes over)
    else:
        assert folder_names(final, so) == expected
        assert not storage.exists(lock_url(final), so)


def test_republish_held_by_the_gate_keeps_the_previous_version(store, tiny_model, prefect_harness):
    old_cfg, final, old = publish_old_version(tiny_model, store)
    so = store[2]
    held_cfg = {**old_cfg, "pool": {**old_cfg["pool"], "clip_filter": {"top_fraction": 0.2}}}
    held_cfg["gate"] = {"enabled": True}
    # the gate compares with the partition before: publish that one first (same figures)
    earlier = {**old_cfg, "gate": {"enabled": True}}
    run_pool(parse_config(earlier), "2026-04-04")
    with pytest.raises(GateHeld):
        run_pool(parse_config(held_cfg), PARTITION)
    assert read_manifest(final, so) == old
    assert verify_partition(final, so) == []
    held = [n for n in folder_names(final, so) if n.startswith("v-") and n != old["version"]]
    assert len(held) == 1 and storage.exists(f"{final}/{held[0]}/_HELD.json", so)
