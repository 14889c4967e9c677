"""Clips decode with decord, start at the right frame and last (end - start) within a frame."""

from __future__ import annotations

import io
from pathlib import Path

import decord
import fsspec
import numpy as np
import pytest
from PIL import Image

from tasks.video.clips import clip_bytes, cut_clip, thumbnail_jpeg
from tasks.video.decode import frame_at
from tests.video_factory import frame_code, make_video, make_video_isolated

FPS = 10


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # keyframes every second (gop 10 at 10 fps), no B-frames
    return make_video(tmp_path_factory.mktemp("clips") / "v.mp4", 6.0, FPS, (160, 120), gop=10)


def read_clip(path: Path) -> tuple[int, float, list[int]]:
    reader = decord.VideoReader(str(path))
    frames = reader.get_batch(list(range(len(reader)))).asnumpy()
    return len(reader), float(reader.get_avg_fps()), [frame_code(f) for f in frames]


def check(src: Path, out: Path, start: float, end: float, method: str) -> None:
    info = cut_clip(str(src), None, start, end, str(out))
    n, fps, codes = read_clip(out)
    first = frame_at(start, FPS)
    assert info["method"] == method
    assert n == info["n_frames"] and fps == FPS
    assert abs(n / fps - (end - start)) < 1 / FPS
    assert info["duration_s"] == pytest.approx(n / fps)
    assert codes == list(range(first, first + n))  # starts exactly at start_s, no gaps


@pytest.mark.parametrize(
    ("start", "end", "method"),
    [
        (1.0, 3.0, "copy"),  # starts on a keyframe
        (2.02, 3.5, "copy"),  # nearest frame (20) is a keyframe
        (1.23, 2.0, "reencode"),  # frame 12: between keyframes
        (4.27, 4.33, "reencode"),  # shorter than a frame: still one frame
        (0.55, 2.85, "reencode"),  # halves round up: frames 6..28
    ],
)
def test_clip_exact(video: Path, tmp_path: Path, start: float, end: float, method: str) -> None:
    check(video, tmp_path / "c.mp4", start, end, method)


def test_clip_clamped_to_video(video: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.mp4"
    info = cut_clip(str(video), None, 5.5, 9.0, str(out))
    assert (info["n_frames"], read_clip(out)[2]) == (5, [55, 56, 57, 58, 59])
    info = cut_clip(str(video), None, -2.0, 0.5, str(out))
    assert (info["method"], read_clip(out)[2]) == ("copy", [0, 1, 2, 3, 4])
    with pytest.raises(ValueError):
        cut_clip(str(video), None, 2.0, 2.0, str(out))


def test_b_frames_are_reencoded(tmp_path: Path) -> None:
    src = make_video(tmp_path / "b.mp4", 4.0, FPS, (64, 48), gop=10, bframes=2)
    check(src, tmp_path / "c.mp4", 1.0, 2.5, "reencode")  # keyframe start, but B-frames


def test_odd_size_mpeg4_source(tmp_path: Path) -> None:
    src = make_video(tmp_path / "m.mp4", 3.0, FPS, (65, 49), codec="mpeg4", gop=10)
    check(src, tmp_path / "c.mp4", 0.4, 1.9, "reencode")  # scaled to 64x48 for yuv420p
    check(src, tmp_path / "c.mp4", 1.0, 1.9, "copy")


def test_vp8_matroska_source_is_reencoded(tmp_path: Path) -> None:
    kw = {"duration_s": 3.0, "fps": FPS, "codec": "libvpx", "container": "matroska"}
    src = make_video_isolated(tmp_path / "v.mkv", **kw)
    check(src, tmp_path / "c.mp4", 0.0, 1.5, "reencode")  # mp4 cannot hold VP8 as is


def test_remote_in_and_out(video: Path) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/clips/v.mp4", video.read_bytes())
    info = cut_clip("memory://clips/v.mp4", None, 1.23, 2.0, "memory://clips/out/c.mp4")
    local, _ = clip_bytes(str(video), None, 1.23, 2.0)
    assert info["n_frames"] == 8
    assert fs.cat("/clips/out/c.mp4") == local


def test_thumbnail(video: Path) -> None:
    jpeg = thumbnail_jpeg(str(video), None, 2.34, max_side=80)
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and image.size == (80, 60)
    assert frame_code(np.asarray(image.convert("RGB"))) == 23
    big = Image.open(io.BytesIO(thumbnail_jpeg(str(video), None, 99.0)))
    assert big.size == (160, 120)  # never upscaled; time clamped to the last frame
    assert frame_code(np.asarray(big.convert("RGB"))) == 59


@pytest.mark.shared
def test_real_videos_probe_decode_and_clip(tmp_path: Path) -> None:
    from tasks.video.decode import iter_frame_chunks
    from tasks.video.probe import probe_video
    from tests.helpers import shared_path

    videos = sorted(shared_path("data", "videos").glob("*.mp4"))
    assert videos
    for src in videos:
        row = probe_video(str(src))
        assert row["status"] == "ok", row
        n = sum(len(c[0]) for c in iter_frame_chunks(str(src), None, 2.0, 224, 32))
        assert abs(n - row["duration_s"] * 2.0) <= 1
        start = round(row["duration_s"] / 2, 2) - 0.013
        end = min(start + 1.0, row["duration_s"])
        out = tmp_path / f"{src.stem}.mp4"
        info = cut_clip(str(src), None, start, end, str(out))
        clip = decord.VideoReader(str(out))
        assert abs(len(clip) / row["fps"] - (end - start)) < 1 / row["fps"], src.name
        # the clip's first frame is the source frame at start_s, not a neighbour
        source = decord.VideoReader(str(src))
        first = clip[0].asnumpy().astype(np.float32)
        f0 = frame_at(start, row["fps"])
        err = [np.abs(first - source[k].asnumpy()).mean() for k in (f0 - 1, f0, f0 + 1)]
        assert err[1] <= min(err) + 0.5 and err[1] < 6, (src.name, info, err)
