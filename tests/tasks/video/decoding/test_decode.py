"""Frame sampling and chunked decoding: right frames at the right times, bounded memory."""

from __future__ import annotations

import time
import tracemalloc
from fractions import Fraction
from pathlib import Path

import fsspec
import numpy as np
import pytest

from tasks.video.decoding.decode import jumps
from tasks.video.decoding.orientation import decode_size
from tasks.video.decoding.probe import iter_frame_chunks, probe_video
from tests.video_factory import frame_code, make_timed_video, make_video, segment_times

CONTAINERS = [("mkv", "matroska"), ("mov", "mov"), ("mp4", "mp4")]


def collect(url: str, sample_fps: float, size, chunk: int, **kw):
    chunks = list(iter_frame_chunks(url, kw.get("storage_options"), sample_fps, size, chunk))
    idx = np.concatenate([c[0] for c in chunks])
    t = np.concatenate([c[1] for c in chunks])
    frames = np.concatenate([c[2] for c in chunks])
    return chunks, idx, t, frames


def test_decode_size() -> None:
    assert decode_size(64, 48, 32) == (43, 32)  # landscape: short side is the height
    assert decode_size(48, 64, 32) == (32, 43)
    assert decode_size(1280, 720, 224) == (398, 224)
    assert decode_size(1280, 720, (100, 200)) == (200, 100)  # tuple is (height, width)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("dec") / "v.mp4", 3.0, 10, (64, 48), gop=10)


def test_decodes_requested_frames_at_requested_fps(video: Path) -> None:
    chunks, idx, t, frames = collect(str(video), 4.0, 32, 5)
    assert [len(c[0]) for c in chunks] == [5, 5, 2]  # 3 s * 4 fps = 12 frames
    # the pictures shown at 0, 0.25, 0.5, ...: frame floor(10 k / 4)
    assert idx.tolist() == [10 * k // 4 for k in range(12)]
    np.testing.assert_allclose(t, idx / 10.0)
    assert frames.dtype == np.uint8 and frames.shape == (12, 32, 43, 3)
    # each frame is the one asked for: the factory wrote its index into the pixels
    assert [frame_code(f) for f in frames] == idx.tolist()


def test_chunking_does_not_change_frames(video: Path) -> None:
    _, idx1, _, frames1 = collect(str(video), 2.5, (24, 40), 1)
    chunks, idx2, _, frames2 = collect(str(video), 2.5, (24, 40), 100)
    assert len(chunks) == 1
    assert frames1.shape[1:] == (24, 40, 3)
    np.testing.assert_array_equal(idx1, idx2)
    np.testing.assert_array_equal(frames1, frames2)


def test_remote_video_decodes_like_local(video: Path) -> None:
    fsspec.filesystem("memory").pipe("/dec/v.mp4", video.read_bytes())
    _, idx_r, _, frames_r = collect("memory://dec/v.mp4", 4.0, 32, 8)
    _, idx_l, _, frames_l = collect(str(video), 4.0, 32, 8)
    np.testing.assert_array_equal(idx_r, idx_l)
    np.testing.assert_array_equal(frames_r, frames_l)


def test_long_video_memory_is_bounded_by_chunk(tmp_path: Path) -> None:
    # 10 minutes at 2 fps: 1200 frames, all sampled; 16 per chunk
    long = make_video(tmp_path / "long.mp4", 600.0, 2, (64, 48), gop=20)
    frame_bytes = 48 * 64 * 3
    tracemalloc.start()
    try:
        n, largest = 0, 0
        for idx, t, frames in iter_frame_chunks(str(long), None, 2.0, 48, 16):
            assert len(idx) == len(t) == len(frames) <= 16
            n, largest = n + len(frames), max(largest, frames.nbytes)
            assert frame_code(frames[-1]) == idx[-1] % 256
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 1200
    assert largest == 16 * frame_bytes
    # holding every frame would take n * frame_bytes (11 MB); chunks keep the peak far below
    assert peak < n * frame_bytes / 8, peak


def test_rejects_bad_chunk_size(video: Path) -> None:
    with pytest.raises(ValueError):
        next(iter_frame_chunks(str(video), None, 2.0, 32, 0))


def test_decoder_is_idle_between_chunks(tmp_path: Path) -> None:
    """decord 0.6 went on decoding the rest of the file after each batch, on a core the
    model needed while it embedded that batch (a third of its speed on two cores). Between
    two chunks this process must use no CPU: the wait below is idle whatever its length
    (a busy decoder would use about as much CPU as the wait lasts)."""
    # 60 s at 30 fps: the rest of the file is far more than the wait's worth of decoding
    long = make_video(tmp_path / "long.mp4", 60.0, 30, (320, 240), gop=60)
    chunks = iter_frame_chunks(str(long), None, 1.0, 64, 2)
    idx, _, frames = next(chunks)
    assert [frame_code(f) for f in frames] == idx.tolist()
    wait_s = 0.5
    cpu0 = time.process_time()
    time.sleep(wait_s)
    used = time.process_time() - cpu0
    assert used < 0.2 * wait_s, f"{used:.3f}s of CPU while waiting {wait_s}s"
    rest = list(chunks)  # the next chunks are still the frames asked for
    assert sum(len(c[0]) for c in rest) == 58
    assert all(frame_code(f) == i % 256 for c in rest for i, f in zip(c[0], c[2], strict=True))


def test_jumps_only_where_decord_would_seek_anyway() -> None:
    keys = [0, 10, 20]
    assert not jumps(keys, 5, 9)  # same GOP, ahead: decodes on
    assert jumps(keys, 5, 10) and jumps(keys, 5, 25)  # another GOP
    assert not jumps(keys, 10, 15)  # position is itself a keyframe of the same GOP
    assert jumps(keys, 12, 11)  # behind
    assert jumps(keys, 12, None)  # nothing next: leave the reader idle
    assert not jumps([], 3, 900) and not jumps([0], 3, 900)  # one GOP: never


def test_sampling_every_frame_of_an_avi_returns_the_frames_asked_for(tmp_path: Path) -> None:
    """decord's jump to a keyframe lands on the wrong frame in AVI: a chunk that starts in
    the GOP where the previous one stopped must decode on, not jump (it did once, when every
    chunk ended with a seek: 536 of 600 frames of a 2 fps parking recording were wrong)."""
    avi = make_video(tmp_path / "parking.avi", 60.0, 2, (160, 120), gop=10, container="avi")
    _, idx, _, frames = collect(str(avi), 4.0, 64, 8)
    assert idx.tolist() == list(range(120))
    assert [frame_code(f) for f in frames] == idx.tolist()


def shown_at(times: list[float], targets: np.ndarray) -> list[int]:
    """The picture shown at each target: the last frame that started by then (independent
    of the code under test; `times` as stored, on the file's clock)."""
    return [max(i for i, t in enumerate(times) if t <= target + 1e-9) for target in targets]


@pytest.mark.parametrize(("ext", "fmt"), CONTAINERS)
def test_variable_frame_rate_samples_are_the_pictures_shown_at_their_times(
    tmp_path: Path, ext: str, fmt: str
) -> None:
    """Issue 27, case 1: 10 s at 30 fps, 10 s at 15, 10 s at 30 on a 1 ms clock. Frame 300
    shows at 10.0 s; a time by `index / average fps` put it at 12 s and sampled other
    pictures than those shown at the targets."""
    times = segment_times([(10, 30), (10, 15), (10, 30)])
    video = make_timed_video(
        tmp_path / f"vfr.{ext}", times, container=fmt, gop=30, time_base=Fraction(1, 1000)
    )
    stored = [round(t * 1000) / 1000 for t in times]  # the 1 ms clock
    duration = probe_video(str(video))["duration_s"]
    assert duration == pytest.approx(30.0, abs=0.01)  # the last packet lasts 1 / mean fps
    _, idx, t, frames = collect(str(video), 4.0, 32, 64)
    targets = np.arange(int(np.ceil(duration * 4))) / 4.0
    assert idx.tolist() == shown_at(stored, targets)
    np.testing.assert_allclose(t, [stored[i] for i in idx], atol=1e-9)
    assert [frame_code(f) for f in frames] == [i % 256 for i in idx]
    assert idx[40] == 300 and t[40] == pytest.approx(10.0)


@pytest.mark.parametrize(("ext", "fmt"), CONTAINERS)
@pytest.mark.parametrize("size", [(320, 180), (64, 48)])
def test_rotated_video_frames_are_upright_in_their_displayed_aspect(
    tmp_path: Path, ext: str, fmt: str, size: tuple[int, int]
) -> None:
    """Issue 27, case 3: a phone held upright stores landscape pictures with a 90-degree
    display matrix. The model gets the picture as a player shows it (portrait, its code
    readable), not squeezed into the coded landscape size or left on its side."""
    width, height = size[1], size[0]  # displayed portrait
    video = make_timed_video(
        tmp_path / f"rot.{ext}", [i / 10 for i in range(20)], (width, height), container=fmt,
        rotation=90,
    )  # fmt: skip
    _, idx, _, frames = collect(str(video), 5.0, 32, 8)
    assert frames.shape[1:] == (round(32 * height / width), 32, 3)  # short side 32, portrait
    assert [frame_code(f) for f in frames] == idx.tolist()
    row = probe_video(str(video))  # a 64 x 48 one was quarantined `unreadable`
    assert (row["status"], row["rotation"]) == ("ok", 90)
    assert (row["display_width"], row["display_height"]) == (width, height)


HARD = {
    "h264.avi": {"container": "avi"},
    "h264-bframes.ts": {"container": "mpegts", "bframes": 2},
    "h264.mpg": {"container": "mpeg", "bframes": 2},
    "mpeg2.mpg": {"container": "mpeg", "codec": "mpeg2video", "fps": 25, "gop": 12},
    "hevc-bframes.mp4": {"codec": "libx265", "bframes": 3},
    "intra-refresh.mp4": {"options": {"intra-refresh": "1"}},
    "intra-refresh.mkv": {"container": "matroska", "options": {"intra-refresh": "1"}},
}


def make_hard(path: Path) -> Path:
    """A file decord indexes wrongly (issue 20), 8 s at 30 fps unless said otherwise."""
    kw = {"fps": 30, **HARD[path.name.split("_", 1)[-1]]}
    return make_video(path, 8.0, size=(160, 120), **kw)


@pytest.mark.parametrize("name", sorted(HARD))
def test_files_decord_indexes_wrongly_are_read_exactly(tmp_path: Path, name: str) -> None:
    """decord maps frame indices to other pictures in these files (off by frames to
    seconds). The decoding layer reads them another way (a remux decord gets right, or
    PyAV in order), so every sampled frame is the picture asked for."""
    video = make_hard(tmp_path / name)
    row = probe_video(str(video))
    assert row["status"] == "ok", row
    assert row["decoder"] in ("decord_remux", "pyav")
    _, idx, t, frames = collect(str(video), 4.0, 64, 16)
    fps = 25 if "mpeg2" in name else 30
    assert idx.tolist() == [fps * k // 4 for k in range(32)]
    np.testing.assert_allclose(t, idx / fps, atol=1e-3)
    assert [frame_code(f) for f in frames] == [i % 256 for i in idx.tolist()]
