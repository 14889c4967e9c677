"""A disk that fills up: the output, the cache, and the dedup index's compaction (issue 22).

Each case runs `curate` in a subprocess on a real small filesystem (a size-limited tmpfs in a
private mount namespace, `tests/chaos/smalldisk.py`), so the kernel's own ENOSPC hits
whichever write does not fit. The sizes come from a reference run of the same partition on a
normal disk: the small disk holds what was there before plus about half of what the run
needs, so the run fails in the middle of its writing.

Promised and checked: the run fails with one line (exit 1), caches nothing partial (every
cache marker's files are whole, no attempt folder without one), leaves the previously
published version published and intact, and a re-run with room publishes the bytes a run
without the fault publishes, reusing the scores that were cached.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from flows.pool import run_pool
from schemas.config import parse_config
from tasks.dedup_index.compact import compact
from tasks.dedup_index.runs import read_pointer
from tasks.io import storage
from tasks.publish.manifest import read_published
from tasks.verify import verify_dataset, verify_partition
from tests.chaos import smalldisk
from tests.chaos.conftest import PARTITION, api_env, pool_config, published_digest
from tests.helpers import ROOT

EARLIER = "2026-05-05"
COMPACTION_DRIVER = r"""
import os, sys
import flows.pool as flow

ballast = sys.argv[1]
real = flow.compact


def compact_on_a_full_disk(*args, **kwargs):
    # another writer fills the disk right after the commit: every byte left is taken
    with open(ballast, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    return real(*args, **kwargs)


flow.compact = compact_on_a_full_disk
from flows.cli import main

sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(autouse=True)
def _needs_small_disk() -> None:
    why = smalldisk.available()
    if why:
        pytest.skip(f"no small filesystem here: {why}")


def cli(config: Path, partition: str = PARTITION, *extra: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "run", "pool", "-c", str(config),
            "--partition", partition, *extra]  # fmt: skip


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def on_disk(argv: list[str], disk: Path, size: int, seed: Path | None, after: Path):
    return smalldisk.run_on_small_disk(
        argv, mount=disk, size=size, seed=seed, after=after, env=api_env(), cwd=ROOT
    )


def one_line_failure(proc, kind: str) -> str:
    """The run's last stderr line, checked to be the one-line failure of `kind`."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"curate: {kind}") and "No space left on device" in last, last
    assert "Traceback" not in proc.stderr
    return last


def cache_state(cache: Path) -> dict[str, list[str]]:
    """{entry: its files} of every committed cache entry; fails on an attempt folder that no
    marker names (a failed computation's leftovers) or a marker whose files are missing."""
    state = {}
    for marker in sorted(cache.rglob("done.json")):
        entry = marker.parent
        files = json.loads(marker.read_text())["files"]
        for rel in files.values():
            assert (entry / rel).is_file(), f"{entry}: marker names a missing {rel}"
        named = {rel.split("/", 1)[0] for rel in files.values()}
        attempts = {p.name for p in entry.iterdir() if p.is_dir()}
        assert attempts == named, f"{entry}: attempt folders without a marker"
        state[str(entry.relative_to(cache))] = sorted(files.values())
    for entry in (p for p in cache.glob("*/*") if p.is_dir()):
        assert (entry / "done.json").exists() or not any(entry.iterdir()), f"orphan {entry}"
    return state


def no_temp_files(root: Path) -> None:
    assert [p for p in root.rglob("*.tmp")] == []


@pytest.fixture(scope="module")
def reference(pool_inputs, tiny_model, tmp_path_factory, prefect_harness) -> dict:
    """The partition with `top_fraction` 0.9, published on a normal disk: what it takes."""
    out = tmp_path_factory.mktemp("disk-reference")
    cfg = pool_config(tiny_model, str(pool_inputs / "{date}" / "*.tar"), str(out))
    cfg["pool"]["clip_filter"] = {"top_fraction": 0.9}
    run_pool(parse_config(cfg), PARTITION)
    final = str(out / "chaos" / "pool" / PARTITION)
    version = Path(read_published(final).base)
    return {
        "digest": published_digest(final),
        "version_bytes": smalldisk.disk_usage(version),
        "cache_bytes": smalldisk.disk_usage(out / "chaos" / "_cache"),
    }


def configs(tmp_path: Path, tiny_model: dict, pool_inputs: Path, output: Path, **extra) -> tuple:
    """The config that published first (top_fraction 0.3) and the one that fills the disk."""
    inputs = str(pool_inputs / "{date}" / "*.tar")
    first = pool_config(tiny_model, inputs, str(output), **extra)
    first["pool"]["clip_filter"] = {"top_fraction": 0.3}
    second = pool_config(tiny_model, inputs, str(output), **extra)
    second["pool"]["clip_filter"] = {"top_fraction": 0.9}
    return write_config(tmp_path / "first.yaml", first), write_config(
        tmp_path / "second.yaml", second
    )


def test_output_disk_fills_while_publishing(tmp_path, tiny_model, pool_inputs, reference):
    disk = tmp_path / "disk"
    first, second = configs(tmp_path, tiny_model, pool_inputs, disk)
    before, failed, rerun = tmp_path / "before", tmp_path / "failed", tmp_path / "rerun"
    big = 256 << 20
    proc = on_disk(cli(first), disk, big, None, before)
    assert proc.returncode == 0, proc.stderr[-3000:]

    size = smalldisk.disk_usage(before) + reference["version_bytes"] // 2
    proc = on_disk(cli(second), disk, size, before, failed)
    one_line_failure(proc, "I/O failure")
    final = failed / "chaos" / "pool" / PARTITION
    assert (final / "manifest.json").read_bytes() == (
        before / "chaos" / "pool" / PARTITION / "manifest.json"
    ).read_bytes()
    assert verify_partition(str(final)) == []
    published = read_published(str(final))
    assert {p.name for p in final.iterdir() if p.is_dir()} == {published.version}  # no debris
    no_temp_files(failed)
    assert cache_state(failed / "chaos" / "_cache") == cache_state(before / "chaos" / "_cache")

    proc = on_disk(cli(second), disk, big, failed, rerun)  # room again: the re-run publishes
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = str(rerun / "chaos" / "pool" / PARTITION)
    assert published_digest(final) == reference["digest"]
    stats = json.loads(Path(read_published(final).url("stats.json")).read_text())
    assert stats["shards"]["scored"] == 0  # every score came from the cache


def test_cache_disk_fills_while_scoring(tmp_path, tiny_model, pool_inputs, reference):
    out = tmp_path / "out"  # the output has room; the cache is on the small disk
    disk = tmp_path / "disk"
    first, second = configs(tmp_path, tiny_model, pool_inputs, out)
    run_pool(parse_config(yaml.safe_load(first.read_text())), PARTITION)  # its own cache
    final = out / "chaos" / "pool" / PARTITION
    manifest = (final / "manifest.json").read_bytes()

    config = yaml.safe_load(second.read_text())
    config["cache"] = str(disk / "cache")
    config["runner"] = {"workers": 1}  # shards one after another: some finish, one fails
    second = write_config(tmp_path / "second-cache.yaml", config)
    failed, rerun = tmp_path / "failed", tmp_path / "rerun"
    proc = on_disk(cli(second), disk, reference["cache_bytes"] // 2, None, failed)
    one_line_failure(proc, "I/O failure")
    assert (final / "manifest.json").read_bytes() == manifest and verify_partition(str(final)) == []
    finished = cache_state(failed / "cache")
    assert 0 < len(finished) < len(list((pool_inputs / PARTITION).glob("*.tar")))
    no_temp_files(failed)

    proc = on_disk(cli(second), disk, 256 << 20, failed, rerun)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert published_digest(str(final)) == reference["digest"]
    stats = json.loads(Path(read_published(str(final)).url("stats.json")).read_text())
    assert stats["shards"]["cached"] == len(finished)  # the re-run resumed from the cache


def test_disk_fills_during_compaction(tmp_path, tiny_model, pool_inputs, prefect_harness):
    """With `dedup.scope: dataset` a compaction follows the commit. The disk filling right
    then must not fail the run (the index is derived data) nor leave an index that is wrong:
    the pointer stays where it was, and the next compaction folds the partition in."""
    disk = tmp_path / "disk"
    dedup = {"dedup": {"scope": "dataset"}}
    cfg = pool_config(tiny_model, str(pool_inputs / "{date}" / "*.tar"), str(disk), **dedup)
    config = write_config(tmp_path / "dedup.yaml", cfg)
    before, failed = tmp_path / "before", tmp_path / "failed"
    proc = on_disk(cli(config, EARLIER), disk, 256 << 20, None, before)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = before / "chaos" / "pool"
    pointer = (folder / "_dedup" / "CURRENT.json").read_bytes()

    driver = tmp_path / "driver.py"
    driver.write_text(COMPACTION_DRIVER)
    argv = [sys.executable, str(driver), str(disk / "ballast"), "run", "pool", "-c", str(config),
            "--partition", PARTITION]  # fmt: skip
    proc = on_disk(argv, disk, 256 << 20, before, failed)
    assert proc.returncode == 0, proc.stderr[-3000:]  # published; the index waits a night
    assert "dedup index not compacted" in proc.stderr and "No space left" in proc.stderr
    (failed / "ballast").unlink()
    folder = failed / "chaos" / "pool"
    assert verify_partition(str(folder / PARTITION)) == []
    assert (folder / "_dedup" / "CURRENT.json").read_bytes() == pointer
    no_temp_files(failed)
    named = {r.id for r in read_pointer(str(folder), None)[0].runs}
    leftovers = {p.name for p in (folder / "_dedup" / "runs").iterdir()} - named
    assert all(not any((folder / "_dedup" / "runs" / n).iterdir()) for n in leftovers)

    done = compact(str(folder), None, semantic=False, max_distance=4)  # the next night's
    assert done["built"] >= 1
    assert verify_dataset(str(failed / "chaos")) == []
    runs = read_pointer(str(folder), None)[0].runs
    assert {p for r in runs for p in r.covers} == {EARLIER, PARTITION}
    # the failed compaction's (empty) folder is named by no pointer; GC removes such folders
    # once they are an hour old (`tasks.dedup_index.compact`), so it may still be there
    left = {p.name for p in (folder / "_dedup" / "runs").iterdir()} - {r.id for r in runs}
    assert left <= leftovers
    samples = storage.read_parquet(read_published(str(folder / PARTITION)).url("samples.parquet"))
    assert "duplicate:exact" in set(samples["error"].drop_nulls())  # copies of the earlier day
    shutil.rmtree(disk, ignore_errors=True)
