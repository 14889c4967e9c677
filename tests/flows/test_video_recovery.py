"""Issue 20, part 2: a recording whose moov was lost is rebuilt with a sibling of the same
camera and published as `recovered` (scored, with events and clips); without a sibling it
is quarantined `no_reference`."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

av = pytest.importorskip("av")
import polars as pl  # noqa: E402

from flows.video import run_video  # noqa: E402
from schemas.config import parse_config  # noqa: E402
from tasks.verify import verify_partition  # noqa: E402
from tests.helpers import published_dir  # noqa: E402
from tests.video_factory import cut_at, frame_code, make_recording, write_sidecar  # noqa: E402

FPS = 15


def config(tmp_path: Path, tiny_model: dict, folder: str) -> dict:
    return {
        "dataset": "fleet",
        "output": str(tmp_path / "out"),
        "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 16},
        "video": {
            "input": str(tmp_path / folder / "*.mp4"),
            "sample_fps": 5,
            "chunk_frames": 16,
            # every frame is part of an event: clips are certain to exist
            "events": {"start": 0.0, "stop": 0.0, "clip_before_s": 1.0, "clip_after_s": 1.0},
        },
    }


def clip_codes(part: Path, key: str, shard: str) -> list[int]:
    with tarfile.open(part / "shards" / shard) as tar:
        data = tar.extractfile(f"{key}.mp4").read()
    with av.open(io.BytesIO(data)) as c:
        return [frame_code(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def test_a_lost_moov_is_rebuilt_with_a_sibling(tmp_path, tiny_model, prefect_harness):
    src, night = tmp_path / "src", tmp_path / "night"
    src.mkdir(), night.mkdir()
    original = make_recording(src / "cam1_0810.mp4", 8.0, FPS, first=50, seed=2)
    make_recording(night / "cam1_0800.mp4", 8.0, FPS, seed=1)
    make_recording(night / "cam2_0800.mp4", 3.0, FPS, size=(128, 96), seed=3)
    _, whole = cut_at(original, night / "cam1_0810.mp4", 0.6)
    for name, vehicle in (("cam1_0800", "v1"), ("cam1_0810", "v1"), ("cam2_0800", "v2")):
        write_sidecar(night / f"{name}.mp4", {"vehicle_id": vehicle})

    result = run_video(parse_config(config(tmp_path, tiny_model, "night")), "2026-03-01")
    final = tmp_path / "out" / "fleet" / "video" / "2026-03-01"
    assert result["status"] == "published" and verify_partition(str(final)) == []
    part = published_dir(final)
    videos = pl.read_parquet(part / "videos.parquet")
    lost = videos.filter(pl.col("video").str.ends_with("cam1_0810.mp4")).row(0, named=True)
    assert (lost["status"], lost["error"]) == ("recovered", "truncated")
    assert lost["reference"] == str(night / "cam1_0800.mp4")  # same vehicle, not cam2
    assert whole * 0.9 <= lost["n_frames"] <= whole
    assert lost["duration_s"] == pytest.approx(lost["n_frames"] / FPS)
    assert "moov lost" in lost["error_detail"]
    assert result["counts"] == {
        "input": 3,
        "ok": 2,
        "recovered": 1,
        "quarantined": 0,
        "duplicate": 0,
    }

    frames = pl.read_parquet(part / "frames.parquet").filter(pl.col("video") == lost["video"])
    assert frames.height == pytest.approx(lost["duration_s"] * 5, abs=1)
    events = pl.read_parquet(part / "events.parquet").filter(pl.col("video") == lost["video"])
    assert events.height >= 1 and (events["status"] == "ok").all()
    for ev in events.iter_rows(named=True):  # the clip holds the pictures shown then
        codes = clip_codes(part, ev["key"], ev["shard"])
        first = 50 + round(ev["clip_start_s"] * FPS)
        assert codes == list(range(first, first + len(codes)))
        assert len(codes) == round((ev["clip_end_s"] - ev["clip_start_s"]) * FPS)

    assert (
        run_video(parse_config(config(tmp_path, tiny_model, "night")), "2026-03-01")["status"]
        == "skipped"
    )


def test_without_a_sibling_the_lost_file_is_quarantined(tmp_path, tiny_model, prefect_harness):
    night = tmp_path / "alone"
    night.mkdir()
    original = make_recording(tmp_path / "cam1.mp4", 4.0, FPS, seed=2)
    cut_at(original, night / "cam1.mp4", 0.6)
    make_recording(night / "cam2.mp4", 2.0, FPS, size=(128, 96), seed=3)
    write_sidecar(night / "cam1.mp4", {"vehicle_id": "v1"})
    write_sidecar(night / "cam2.mp4", {"vehicle_id": "v2"})

    result = run_video(parse_config(config(tmp_path, tiny_model, "alone")), "2026-03-02")
    part = published_dir(tmp_path / "out" / "fleet" / "video" / "2026-03-02")
    videos = pl.read_parquet(part / "videos.parquet")
    lost = videos.filter(pl.col("video").str.ends_with("cam1.mp4")).row(0, named=True)
    assert (lost["status"], lost["error"]) == ("quarantined", "no_reference")
    assert lost["error_detail"] == (
        "moov lost and no healthy H.264 recording of vehicle v1 in the partition"
    )
    assert result["counts"]["quarantined"] == 1
