"""The flows on the real material in ../shared (skipped when it is absent)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import av  # noqa: F401  - PyAV before decord (see tests/video_factory.py)
import decord
import polars as pl
import pytest

from flows.pool import run_pool
from flows.video import run_video
from schemas.config import parse_config
from tasks.verify import verify_partition
from tests.helpers import published_dir, shared_path
from tests.video_factory import make_empty, make_truncated

pytestmark = pytest.mark.shared


def test_flickr_pool_publishes_and_rerun_is_a_noop(tmp_path, tiny_model, prefect_harness):
    import webdataset as wds

    images = shared_path("data", "images")
    cfg = parse_config(
        {
            "dataset": "flickr",
            "output": str(tmp_path / "out"),
            "model": {**tiny_model, "precision": "fp32", "batch_size": 64},
            "pool": {
                "input": str(images / "flickr8k-*.tar"),
                "clip_filter": {"top_fraction": 0.5},
                "shard": {"max_samples": 400},
            },
        }
    )
    first = run_pool(cfg, "2026-11-24")
    assert verify_partition(first["uri"]) == []
    part = published_dir(first["uri"])
    samples = pl.read_parquet(part / "samples.parquet")
    n_input = 0
    for p in images.glob("flickr8k-*.tar"):
        with tarfile.open(p) as tar:
            n_input += sum(1 for m in tar.getnames() if m.endswith(".jpg"))
    assert samples.height == n_input
    kept = samples.filter(pl.col("status") == "kept")
    read = list(
        wds.WebDataset(
            sorted(str(p) for p in (part / "shards").glob("*.tar")),
            shardshuffle=False,
            empty_check=False,
        )
    )
    assert [s["__key__"] for s in read] == kept["out_key"].to_list()
    before = (part / "samples.parquet").read_bytes()
    second = run_pool(cfg, "2026-11-24")
    assert second["status"] == "skipped"
    assert (part / "samples.parquet").read_bytes() == before


def test_shared_videos_with_broken_copies(tmp_path, tiny_model, prefect_harness):
    videos = shared_path("data", "videos")
    src = tmp_path / "in"
    src.mkdir()
    for p in sorted(videos.glob("*.mp4")):
        (src / p.name).symlink_to(p)
    make_truncated(videos / "dashcam_kb0.mp4", src / "truncated.mp4", 0.5)
    make_empty(src / "zero.mp4")
    cfg = parse_config(
        {
            "dataset": "fleet",
            "output": str(tmp_path / "out"),
            "model": {**tiny_model, "precision": "fp32", "batch_size": 64},
            # thresholds at 0: every frame is "near-miss", so clips are cut from every real video
            "video": {
                "input": str(src / "*.mp4"),
                "events": {"start": 0.0, "stop": 0.0},
                "ood": {"threshold": None},
            },  # every video gets events: a clip test
        }
    )
    result = run_video(cfg, "2026-11-24")
    assert verify_partition(result["uri"]) == []
    part = published_dir(result["uri"])
    vids = pl.read_parquet(part / "videos.parquet")
    n_real = len(list(videos.glob("*.mp4")))
    assert vids.height == n_real + 2
    bad = vids.filter(pl.col("status") == "quarantined")["video"].str.split("/").list.last()
    assert sorted(bad.to_list()) == ["zero.mp4"]
    cut = vids.filter(pl.col("video").str.ends_with("truncated.mp4")).row(0, named=True)
    # its moov lost; the healthy recordings are tried in name order, the first of the same
    # camera fits (those of other cameras are turned down: `tests/flows/test_shared_recovery`)
    assert (cut["status"], cut["reference"]) == ("recovered", str(src / "dashcam_kb0.mp4"))
    frames = pl.read_parquet(part / "frames.parquet")
    for row in vids.filter(pl.col("status") == "ok").iter_rows(named=True):
        f = frames.filter(pl.col("video") == row["video"])
        assert f["t_s"].min() >= 0 and f["t_s"].max() < row["duration_s"]
        assert abs(f.height - row["duration_s"] * 4) <= 2, row["video"]
    events = pl.read_parquet(part / "events.parquet")
    assert events["video"].n_unique() == n_real + 1  # the recovered one too
    fps = dict(zip(vids["video"], vids["fps"], strict=True))
    for tar_path in sorted((part / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for ev in events.filter(pl.col("shard") == tar_path.name).iter_rows(named=True):
                clip = tar.extractfile(f"{ev['key']}.mp4").read()
                reader = decord.VideoReader(io.BytesIO(clip))
                length = len(reader) / reader.get_avg_fps()
                expected = ev["clip_end_s"] - ev["clip_start_s"]
                assert abs(length - expected) <= 1.0 / fps[ev["video"]] + 1e-6
                assert json.loads(tar.extractfile(f"{ev['key']}.json").read())["event_id"]
    shutil.rmtree(tmp_path / "out")
