"""Clips hold exactly the pictures shown during their span, upright; thumbnails the picture
shown at their time."""

from __future__ import annotations

import io
import itertools
import math
from fractions import Fraction
from pathlib import Path

import av
import decord
import fsspec
import numpy as np
import pytest
from PIL import Image

from tasks.video.decoding.clips import clip_bytes, cut_clip, read_clock, thumbnail_jpeg
from tests.video_factory import (
    frame_code,
    make_timed_video,
    make_video,
    make_video_isolated,
    segment_times,
)

FPS = 10


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # keyframes every second (gop 10 at 10 fps), no B-frames
    return make_video(tmp_path_factory.mktemp("clips") / "v.mp4", 6.0, FPS, (160, 120), gop=10)


def read_clip(path: Path) -> tuple[int, float, list[int]]:
    reader = decord.VideoReader(str(path))
    frames = reader.get_batch(list(range(len(reader)))).asnumpy()
    return len(reader), float(reader.get_avg_fps()), [frame_code(f) for f in frames]


def shown_at(t: float, fps: float = FPS) -> int:
    """The frame shown at `t` in a constant-rate video (the last one started by then)."""
    return math.floor(t * fps + 1e-6)


def check(src: Path, out: Path, start: float, end: float, method: str) -> None:
    """The clip is the pictures shown during [start, end): from the one shown at `start`
    to the last that starts before `end`, with no gaps, at the source's rate."""
    info = cut_clip(str(src), None, start, end, str(out))
    n, fps, codes = read_clip(out)
    first, stop = shown_at(start), max(math.ceil(end * FPS - 1e-6), shown_at(start) + 1)
    assert info["method"] == method
    assert n == info["n_frames"] and fps == FPS
    assert info["duration_s"] == pytest.approx(n / fps)
    assert codes == list(range(first, stop))


@pytest.mark.parametrize(
    ("start", "end", "method"),
    [
        (1.0, 3.0, "copy"),  # starts on a keyframe
        (2.02, 3.5, "copy"),  # the picture shown at 2.02 s (frame 20) is a keyframe
        (1.23, 2.0, "reencode"),  # frame 12: between keyframes
        (4.27, 4.33, "reencode"),  # shorter than a frame: still one frame
        (0.55, 2.85, "reencode"),  # frames 5..28: shown at 0.55 s up to the last before 2.85
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


def test_b_frames_are_copied_only_as_whole_blocks(tmp_path: Path) -> None:
    """With B-frames the packets from a keyframe on are the clip's pictures only up to the
    next clean start: such a block is copied, a cut inside a B-frame group re-encoded."""
    src = make_video(tmp_path / "b.mp4", 4.0, FPS, (64, 48), gop=10, bframes=2)
    line, _ = read_clock(str(src), None)
    starts = np.flatnonzero(line.clean).tolist()  # x264 places keyframes by scene cut too

    def block(a: int, e: int) -> bool:  # frames [a, e) are the packets from a's on
        dp = line.decode_pos[a:e]
        return sorted(dp) == list(range(dp[0], dp[0] + e - a))

    a, b, cut = next(
        (a, b, e) for a, b in itertools.pairwise(starts) for e in range(a + 1, b) if not block(a, e)
    )
    check(src, tmp_path / "c.mp4", a / FPS, b / FPS, "copy")
    check(src, tmp_path / "c.mp4", a / FPS, cut / FPS, "reencode")


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
    from tasks.video.decoding.probe import iter_frame_chunks, probe_video
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
        # the pictures shown during the span: a partly covered first one included
        assert abs(len(clip) / row["fps"] - (end - start)) <= 1 / row["fps"] + 1e-6, src.name
        # the clip's first frame is the source frame at start_s, not a neighbour
        source = decord.VideoReader(str(src))
        first = clip[0].asnumpy().astype(np.float32)
        f0 = int(read_clock(str(src), None)[0].shown_at(start))
        err = [np.abs(first - source[k].asnumpy()).mean() for k in (f0 - 1, f0, f0 + 1)]
        assert err[1] <= min(err) + 0.5 and err[1] < 6, (src.name, info, err)


def played(data: bytes) -> list[np.ndarray]:
    """A clip's pictures as a player shows them: decoded, turned by their display matrix."""
    with av.open(io.BytesIO(data)) as container:
        return [
            np.rot90(f.to_ndarray(format="rgb24"), round(f.rotation / 90) % 4)
            for f in container.decode(video=0)
        ]


CONTAINERS = [("mkv", "matroska"), ("mov", "mov"), ("mp4", "mp4")]


@pytest.mark.parametrize(("ext", "fmt"), CONTAINERS)
def test_variable_frame_rate_clip_holds_the_pictures_shown_in_its_span(
    tmp_path: Path, ext: str, fmt: str
) -> None:
    """Issue 27, case 1: 10 s at 30 fps, 10 s at 15, 10 s at 30 (1 ms clock). [18, 19)
    lies in the 15 fps part: frames 420-434, not pictures from 14 s mapped by mean fps."""
    times = segment_times([(10, 30), (10, 15), (10, 30)])
    video = make_timed_video(
        tmp_path / f"vfr.{ext}", times, container=fmt, gop=15, time_base=Fraction(1, 1000)
    )
    data, info = clip_bytes(str(video), None, 18.0, 19.0)
    assert [frame_code(f) for f in played(data)] == [i % 256 for i in range(420, 435)]
    assert info["n_frames"] == 15 and info["duration_s"] == pytest.approx(1.0, abs=1e-3)
    thumb = Image.open(io.BytesIO(thumbnail_jpeg(str(video), None, 12.0)))
    assert frame_code(np.asarray(thumb.convert("RGB"))) == 330 % 256  # 300 + 2 s * 15


@pytest.mark.parametrize(("ext", "fmt"), CONTAINERS)
def test_clips_on_a_millisecond_clock_start_at_the_picture_shown(
    tmp_path: Path, ext: str, fmt: str
) -> None:
    """Issue 27, case 7: on a 1 ms clock (every MKV, many MP4s) frame 30 of a 30 fps video
    shows at 1000 ms and frame 2 at 67 ms; a clip starts with the picture shown at its
    start (from 0.05 s: frame 1, shown from 33 ms; not frame 2, the nearest) and holds
    every picture shown before its end (frame 5 shows from 167 ms, before 0.2 s)."""
    times = [i / 30 for i in range(120)]
    video = make_timed_video(
        tmp_path / f"v.{ext}", times, container=fmt, gop=12, time_base=Fraction(1, 1000)
    )
    cases = ((1.0, 2.0, 30, 30), (0.1, 0.5, 3, 12), (2.2, 2.3, 66, 3), (0.05, 0.2, 1, 5))
    for start, end, first, n in cases:
        data, _ = clip_bytes(str(video), None, start, end)
        assert [frame_code(f) for f in played(data)] == list(range(first, first + n))


@pytest.mark.parametrize(("ext", "fmt"), CONTAINERS)
def test_clips_and_thumbnails_of_a_rotated_video_play_upright(
    tmp_path: Path, ext: str, fmt: str
) -> None:
    """Issue 27, case 3: a portrait recording (landscape pictures, 90-degree display
    matrix). Copied or re-encoded, every clip plays upright in the displayed aspect, as
    does the thumbnail; a re-encode that dropped the matrix played the picture on its side."""
    video = make_timed_video(
        tmp_path / f"rot.{ext}", [i / 10 for i in range(40)], (120, 160), container=fmt,
        gop=10, rotation=90,
    )  # fmt: skip
    for start, end, first in ((1.0, 2.0, 10), (1.23, 2.0, 12)):  # on a keyframe, between
        pictures = played(clip_bytes(str(video), None, start, end)[0])
        assert {p.shape for p in pictures} == {(160, 120, 3)}, (start, end)
        assert [frame_code(p) for p in pictures] == list(range(first, first + len(pictures)))
    thumb = Image.open(io.BytesIO(thumbnail_jpeg(str(video), None, 2.34)))
    assert thumb.size == (120, 160)
    assert frame_code(np.asarray(thumb.convert("RGB"))) == 23
