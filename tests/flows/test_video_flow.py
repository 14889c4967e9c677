"""The video flow end to end on generated videos, broken files included."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.helpers import published_dir

av = pytest.importorskip("av")  # import PyAV before decord (see tests/video_factory.py)
import decord  # noqa: E402
import polars as pl  # noqa: E402

from flows.video import run_video  # noqa: E402
from schemas.config import parse_config  # noqa: E402
from tasks.verify import verify_partition  # noqa: E402
from tests.video_factory import (  # noqa: E402
    frame_code,
    make_empty,
    make_not_video,
    make_truncated,
    make_video,
    write_sidecar,
)

PARTITION = "2026-02-03"


def video_config(tmp_path: Path, tiny_model: dict, **events) -> dict:
    return {
        "dataset": "fleet",
        "output": str(tmp_path / "out"),
        "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 16},
        "video": {
            "input": str(tmp_path / "in" / "*.mp4"),
            "sample_fps": 4,
            "chunk_frames": 8,
            "events": {"clip_before_s": 1.0, "clip_after_s": 1.0, **events},
        },
    }


@pytest.fixture
def videos(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    a = make_video(d / "cam_a.mp4", duration_s=6.0, fps=10, size=(96, 64))
    write_sidecar(a, {"vehicle_id": "truck-7", "start_time": "2026-02-03T08:00:00Z"})
    make_video(d / "cam_b.mp4", duration_s=3.0, fps=15, size=(64, 48))
    make_truncated(a, d / "cut.mp4", 0.5)
    make_empty(d / "empty.mp4")
    make_not_video(d / "text.mp4")
    return d


def test_video_flow_end_to_end(tmp_path, tiny_model, videos, prefect_harness):
    # thresholds at 0 make every sampled frame part of an event: clips are certain to exist
    cfg = parse_config(video_config(tmp_path, tiny_model, start=0.0, stop=0.0))
    result = run_video(cfg, PARTITION)
    final = tmp_path / "out" / "fleet" / "video" / PARTITION
    assert result["status"] == "published"
    assert verify_partition(str(final)) == []
    part = published_dir(final)

    vids = pl.read_parquet(part / "videos.parquet")
    assert vids.height == 5
    status = dict(
        zip(vids["video"].str.split("/").list.last(), vids["status"].cast(pl.String), strict=True)
    )
    assert status == {
        "cam_a.mp4": "ok",
        "cam_b.mp4": "ok",
        "cut.mp4": "recovered",  # its moov lost: rebuilt with cam_a's parameters
        "empty.mp4": "quarantined",
        "text.mp4": "quarantined",
    }
    assert vids.filter(pl.col("status") == "quarantined")["error"].null_count() == 0
    assert vids.filter(pl.col("video").str.ends_with("cam_a.mp4"))["vehicle_id"][0] == "truck-7"

    frames = pl.read_parquet(part / "frames.parquet")
    for row in vids.filter(pl.col("status") == "ok").iter_rows(named=True):
        f = frames.filter(pl.col("video") == row["video"])
        assert f["t_s"].min() >= 0 and f["t_s"].max() < row["duration_s"]
        assert abs(f.height - row["duration_s"] * 4) <= 1

    events = pl.read_parquet(part / "events.parquet")
    assert events.height >= 2  # at least one per ok video
    interval = {r["video"]: 1.0 / r["fps"] for r in vids.iter_rows(named=True) if r["fps"]}
    for tar_path in sorted((part / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            names = tar.getnames()
            for ev in events.filter(pl.col("shard") == tar_path.name).iter_rows(named=True):
                assert {f"{ev['key']}.{e}" for e in ("mp4", "jpg", "json")} <= set(names)
                clip = tar.extractfile(f"{ev['key']}.mp4").read()
                reader = decord.VideoReader(io.BytesIO(clip))
                length = len(reader) / reader.get_avg_fps()
                expected = ev["clip_end_s"] - ev["clip_start_s"]
                assert abs(length - expected) <= interval[ev["video"]] + 1e-6
                meta = json.loads(tar.extractfile(f"{ev['key']}.json").read())
                assert meta["model"]["checkpoint_sha256"] and meta["prompt_set_hash"]

    again = run_video(cfg, PARTITION)
    assert again["status"] == "skipped"


def test_vectorised_frame_preprocess_equals_open_clip(model_cfg):
    """The chunk-wise crop + normalise gives exactly what open_clip's preprocess gives."""
    import numpy as np
    import torch
    from PIL import Image

    from tasks.model.clip import load_model
    from tasks.video.score import pixels

    model = load_model(model_cfg)
    rng = np.random.default_rng(0)
    for h, w in ((64, 97), (115, 64), (64, 64)):  # short side = the model's input size (64)
        frames = rng.integers(0, 256, size=(5, h, w, 3), dtype=np.uint8)
        fast = pixels(model, frames)
        slow = torch.stack([model.preprocess(Image.fromarray(f)) for f in frames])
        assert fast.shape == slow.shape == (5, 3, 64, 64)
        assert torch.allclose(fast, slow, atol=1e-6), (h, w)


def test_a_changed_sidecar_republishes_without_decoding_again(
    tmp_path, tiny_model, videos, prefect_harness, monkeypatch
):
    """Defect: the sidecar was in neither the score cache key nor the run key, so a fixed
    vehicle id was never published (the partition counted as unchanged). It is part of the
    input's fingerprint now, and read at detect time: no video is decoded again."""
    cfg = parse_config(video_config(tmp_path, tiny_model))
    assert run_video(cfg, PARTITION)["status"] == "published"
    write_sidecar(tmp_path / "in" / "cam_a.mp4", {"vehicle_id": "truck-8"})

    def no_decode(*a, **k):
        raise AssertionError("a video was decoded again")

    monkeypatch.setattr("tasks.video.score.load_model", no_decode)
    assert run_video(cfg, PARTITION)["status"] == "published"
    part = published_dir(tmp_path / "out" / "fleet" / "video" / PARTITION)
    vids = pl.read_parquet(part / "videos.parquet")
    assert vids.filter(pl.col("video").str.ends_with("cam_a.mp4"))["vehicle_id"][0] == "truck-8"
    stats = json.loads((part / "stats.json").read_text())
    assert stats["videos_scored"] == 0 and stats["videos_cached"] == 5


def test_byte_identical_videos_are_processed_once(tmp_path, tiny_model, prefect_harness):
    import shutil

    d = tmp_path / "in"
    d.mkdir()
    a = make_video(d / "a_first.mp4", duration_s=2.0, fps=10, size=(64, 48))
    shutil.copyfile(a, d / "b_copy.mp4")  # same bytes, another name
    make_video(d / "c_other.mp4", duration_s=2.0, fps=10, size=(64, 48), moving_square=False)
    assert (d / "c_other.mp4").read_bytes() != a.read_bytes()
    result = run_video(parse_config(video_config(tmp_path, tiny_model)), PARTITION)
    assert verify_partition(result["uri"]) == []
    root = published_dir(result["uri"])
    vids = pl.read_parquet(root / "videos.parquet")
    rows = {Path(r["video"]).name: r for r in vids.iter_rows(named=True)}
    assert rows["b_copy.mp4"]["status"] == "duplicate"
    assert rows["b_copy.mp4"]["duplicate_of"] == str(d / "a_first.mp4")
    assert rows["b_copy.mp4"]["error"] == "duplicate:exact"
    assert {rows[n]["status"] for n in ("a_first.mp4", "c_other.mp4")} == {"ok"}
    stats = json.loads((root / "stats.json").read_text())
    assert stats["counts"] == {
        "input": 3,
        "ok": 2,
        "recovered": 0,
        "quarantined": 0,
        "duplicate": 1,
    }
    assert stats["videos_scored"] == 2  # the copy was never decoded
    frames = pl.read_parquet(root / "frames.parquet")
    assert str(d / "b_copy.mp4") not in set(frames["video"])


HARD = {  # files decord indexes wrongly (issue 20), each read another exact way now
    "h264.avi": {"container": "avi"},
    "h264_bframes.ts": {"container": "mpegts", "bframes": 2},
    "h264.mpg": {"container": "mpeg", "bframes": 2},
    "hevc_bframes.mp4": {"codec": "libx265", "bframes": 3},
    "intra_refresh.mp4": {"options": {"intra-refresh": "1"}},
}


def test_files_decord_indexes_wrongly_are_curated_with_the_pictures_at_their_times(
    tmp_path, tiny_model, prefect_harness, monkeypatch
):
    """Issue 20, part 1: H.264 AVI, MPEG-TS with B-frames, MPEG-PS, HEVC with B-frames and
    intra-refresh H.264 go through `curate run video` with status ok, their decoder
    recorded, and every frame the model saw is the picture at its `t_s` (the frames code
    their index). They were quarantined `unreliable_index` before."""
    import yaml

    from flows.cli import main
    from tasks.video import score

    d = tmp_path / "in"
    d.mkdir()
    for name, kw in HARD.items():
        make_video(d / name, 4.0, 30, (160, 120), **kw)
    seen: list[tuple[list[int], list[int]]] = []
    real = score.frames_in_helper

    def spy(*a, **k):  # the frames the decoding helper sends to the model
        probed, chunks = real(*a, **k)

        def seen_chunks():
            for idx, t, frames in chunks:
                seen.append((idx.tolist(), [frame_code(f) for f in frames]))
                yield idx, t, frames

        return probed, seen_chunks()

    monkeypatch.setattr(score, "frames_in_helper", spy)
    cfg = video_config(tmp_path, tiny_model)
    cfg["video"]["input"] = str(d / "*")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", "video", "-c", str(path), "--partition", PARTITION]) == 0

    part = published_dir(tmp_path / "out" / "fleet" / "video" / PARTITION)
    vids = pl.read_parquet(part / "videos.parquet")
    decoders = dict(zip(vids["video"].str.split("/").list.last(), vids["decoder"], strict=True))
    assert set(vids["status"].cast(pl.String)) == {"ok"}
    assert decoders == {
        "h264.avi": "decord_remux",
        "h264_bframes.ts": "decord_remux",
        "h264.mpg": "pyav",
        "hevc_bframes.mp4": "pyav",
        "intra_refresh.mp4": "pyav",
    }
    frames = pl.read_parquet(part / "frames.parquet")
    for video in vids["video"]:
        f = frames.filter(pl.col("video") == video)
        assert f["frame_index"].to_list() == [30 * k // 4 for k in range(16)]  # shown at k / 4 s
        assert f["t_s"].to_list() == pytest.approx((f["frame_index"] / 30).to_list(), abs=1e-3)
    assert sum(len(i) for i, _ in seen) == frames.height == 5 * 16
    assert all(codes == [i % 256 for i in idx] for idx, codes in seen)


def test_a_decoder_crash_costs_one_video_not_the_run(
    tmp_path, tiny_model, prefect_harness, monkeypatch
):
    """Issue 20, part 4: decord and FFmpeg run in helper processes. A decoder that crashes
    (here a planted SIGSEGV right after the probe of boom.mp4) quarantines that video
    `decoder_crash`; the run goes on and publishes the others."""
    d = tmp_path / "in"
    d.mkdir()
    make_video(d / "a.mp4", duration_s=2.0, fps=10, size=(64, 48))
    make_video(d / "boom.mp4", duration_s=2.0, fps=10, size=(96, 64))
    op = "tests.isolation_ops:frames_crashing_on_boom"
    monkeypatch.setattr("tasks.video.decoding.isolated.FRAMES_OP", op)
    result = run_video(parse_config(video_config(tmp_path, tiny_model)), PARTITION)
    assert result["status"] == "published" and verify_partition(result["uri"]) == []
    vids = pl.read_parquet(published_dir(result["uri"]) / "videos.parquet")
    rows = {Path(r["video"]).name: r for r in vids.iter_rows(named=True)}
    assert rows["a.mp4"]["status"] == "ok" and rows["a.mp4"]["sampled_frames"] == 8
    boom = rows["boom.mp4"]
    assert (boom["status"], boom["error"]) == ("quarantined", "decoder_crash")
    assert boom["error_detail"] == "the decoder process died of SIGSEGV"
