"""Issue 20, part 4: corrupt bytes never take a run down.

Corrupted copies of real inputs (`tests/fuzz.py`, a fixed seed: bits flipped in headers
and bodies, zeroed runs, truncations) join clean inputs in one partition. Each flow, run
through the CLI, exits 0, accounts for every input (a videos.parquet row per video; sample
rows or an `unreadable_shards` entry per pool shard), publishes a partition `curate verify`
accepts, and publishes for the clean inputs exactly what it publishes for them alone: the
same rows and the same clip and image bytes.

`test_small_fuzz` (default suite, generated inputs, runs everywhere: about 17 s) and
`test_fuzz_over_the_shared_data` (`slow`: 104 corrupted copies of the shared videos and
tars, about 8 minutes on two cores).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import polars as pl
import pytest
import yaml

pytest.importorskip("av")

from flows.cli import main
from tasks.verify import verify_partition
from tests.fuzz import corrupted_copies
from tests.helpers import published_dir, shared_path
from tests.pool_factory import make_samples, write_tar
from tests.video_factory import make_recording, make_video

PARTITION = "2026-07-01"


def run(flow: str, cfg: dict, tmp: Path, name: str) -> Path:
    """`curate run FLOW` on `cfg` (dataset `name`); asserts exit 0 and a clean verify."""
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = {**cfg, "dataset": name, "output": str(tmp / "out")}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", flow, "-c", str(path), "--partition", PARTITION]) == 0
    final = tmp / "out" / name / flow / PARTITION
    assert verify_partition(str(final)) == []
    return published_dir(final)


def members(part: Path) -> dict[str, bytes]:
    """{member name: bytes} of every published shard."""
    out = {}
    for tar_path in sorted((part / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                out[m.name] = tar.extractfile(m).read()
    return out


def check_videos(tmp: Path, model: dict, clean: list[Path], broken: list[Path]) -> None:
    video = {"sample_fps": 2, "chunk_frames": 32, "events": {"start": 0.0, "stop": 0.0}}
    cfg = {"model": model, "video": {**video, "input": [str(p) for p in clean + broken]}}
    everything = run("video", cfg, tmp, "fuzzed")
    alone = run(
        "video", {**cfg, "video": {**video, "input": [str(p) for p in clean]}}, tmp, "clean"
    )
    videos = pl.read_parquet(everything / "videos.parquet")
    assert sorted(videos["video"]) == sorted(str(p) for p in clean + broken)  # every input
    mine = pl.col("video").is_in([str(p) for p in clean])
    for table, drop in (("videos", []), ("frames", []), ("events", ["shard"])):
        a = pl.read_parquet(everything / f"{table}.parquet").filter(mine).drop(drop)
        b = pl.read_parquet(alone / f"{table}.parquet").drop(drop)
        assert a.sort(a.columns[:3]).equals(b.sort(b.columns[:3])), table
    keys = set(pl.read_parquet(alone / "events.parquet")["key"])
    got, want = members(everything), members(alone)
    assert want and {k: v for k, v in got.items() if k.split(".")[0] in keys} == want


def check_pool(tmp: Path, model: dict, clean: list[Path], broken: list[Path]) -> None:
    # A corrupted copy of a tar still holds copies of its samples: the first in input
    # order (sorted paths: the clean ones, `a-...` before `z...`) keeps its uid, and with
    # `keep: first` its dedup group (a flipped bit can score a copy higher).
    pool = {
        "clip_filter": {"threshold": 0.0},
        "shard": {"max_samples": 200},
        "dedup": {"keep": "first"},
    }
    cfg = {"model": model, "pool": {**pool, "input": [str(p) for p in clean + broken]}}
    everything = run("pool", cfg, tmp, "fuzzed")
    alone = run("pool", {**cfg, "pool": {**pool, "input": [str(p) for p in clean]}}, tmp, "clean")
    samples = pl.read_parquet(everything / "samples.parquet")
    unreadable = json.loads((everything / "stats.json").read_text())["unreadable_shards"]
    assert set(samples["source"]) | set(unreadable) == {str(p) for p in clean + broken}
    mine = pl.col("source").is_in([str(p) for p in clean])
    a = samples.filter(mine).drop("shard")
    b = pl.read_parquet(alone / "samples.parquet").drop("shard")
    assert a.equals(b)
    kept = set(b.filter(pl.col("status") == "kept")["out_key"])
    got, want = members(everything), members(alone)
    assert want and {k: v for k, v in got.items() if k.split(".")[0] in kept} == want


def test_small_fuzz(tmp_path, tiny_model, prefect_harness):
    model = {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 32}
    src = tmp_path / "src"
    src.mkdir()
    videos = [
        make_video(src / "a-plain.mp4", 3.0, 10, (64, 48)),
        make_recording(src / "a-dashcam.mp4", 3.0, 10),  # audio interleaved, moov last
    ]
    broken = corrupted_copies(videos, 8, 7, src, "z")
    check_videos(tmp_path / "v", model, videos, broken)
    tars = [
        write_tar(src / "a-0.tar", make_samples(24, seed=1)),
        write_tar(src / "a-1.tar", make_samples(24, seed=2)),
    ]
    check_pool(tmp_path / "p", model, tars, corrupted_copies(tars, 8, 8, src, "z"))


@pytest.mark.slow
def test_fuzz_over_the_shared_data(tmp_path, tiny_model, prefect_harness):
    model = {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 64}
    links = tmp_path / "a-clean"  # sorts before the corrupted copies (see check_pool)
    links.mkdir()
    clean_videos = []
    for p in sorted(shared_path("data", "videos").glob("*.mp4")):
        (links / f"a-{p.name}").symlink_to(p)
        clean_videos.append(links / f"a-{p.name}")
    broken_videos = corrupted_copies(clean_videos, 64, 20, tmp_path / "z-broken", "z")
    check_videos(tmp_path / "v", model, clean_videos, broken_videos)
    images = shared_path("data", "images")
    tars = [images / "flickr8k-orig-000000.tar", images / "flickr8k-small-000000.tar"]
    clean_tars = []
    for p in tars:
        (links / f"a-{p.name}").symlink_to(p)
        clean_tars.append(links / f"a-{p.name}")
    broken_tars = corrupted_copies(clean_tars, 40, 21, tmp_path / "z-broken", "z")
    assert len(broken_videos) + len(broken_tars) >= 100
    check_pool(tmp_path / "p", model, clean_tars, broken_tars)
