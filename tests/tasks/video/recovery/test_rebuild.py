"""Moov-less recordings rebuilt from their media data with a sibling's parameters.

The recordings are dashcam-like (H.264 with noisy AAC interleaved frame by frame, moov
written last) and every picture codes its own index, so a rebuilt file is checked picture
by picture against the original: the same pictures at the same times, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from tasks.video.recovery.h264 import parse_sps
from tasks.video.recovery.mdat import media_region, top_level_boxes
from tasks.video.recovery.rebuild import Unrecoverable, parse_avcc, read_reference, rebuild
from tests.video_factory import cut_at, frame_code, make_recording

FPS = 15


def decoded(path: Path) -> list[tuple[float, np.ndarray]]:
    """(time after the first frame, RGB picture) of every frame, in display order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [(f.pts, f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
        tb = float(stream.time_base)
    return [((pts - frames[0][0]) * tb, rgb) for pts, rgb in frames]


@pytest.fixture(scope="module", params=[0, 2], ids=["no-bframes", "bframes"])
def recordings(request, tmp_path_factory) -> tuple[Path, Path, int]:
    """(a recording, another one of the same camera, B-frames)."""
    d = tmp_path_factory.mktemp(f"rec{request.param}")
    lost = make_recording(d / "lost.mp4", 8.0, FPS, bframes=request.param, seed=1)
    sibling = make_recording(d / "sibling.mp4", 4.0, FPS, bframes=request.param, first=100, seed=2)
    return lost, sibling, request.param


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_rebuilt_pictures_are_the_originals(recordings, tmp_path: Path, fraction: float) -> None:
    lost, sibling, _ = recordings
    cut, whole = cut_at(lost, tmp_path / "cut.mp4", fraction)
    with pytest.raises(av.FFmpegError):  # what the probe sees: no index, no container
        av.open(str(cut))
    info = rebuild(str(cut), read_reference(str(sibling)), str(tmp_path / "rebuilt.mp4"))
    got, original = decoded(tmp_path / "rebuilt.mp4"), decoded(lost)
    assert whole * 0.9 <= info["frames"] == len(got) <= whole
    assert info["skipped_bytes"] > 0  # the audio between the pictures
    for k, (t, rgb) in enumerate(got):
        t0, expected = original[k]
        assert abs(t - t0) < 1e-6 and abs(t - k / FPS) < 1e-6
        assert frame_code(rgb) == k
        assert np.array_equal(rgb, expected)  # the same bitstream, the same picture


@pytest.mark.parametrize("size", [(128, 96), (96, 80), (96, 48)])
def test_a_reference_of_another_size_is_turned_down(
    recordings, tmp_path: Path, size: tuple[int, int]
) -> None:
    """(96, 48): a macroblock row fewer than the lost file's 96x64. Decoding stops after the
    reference's macroblocks without an error unless FFmpeg checks the slice's end (it must,
    or the file would be rebuilt with its bottom rows cut off)."""
    lost, _, bframes = recordings
    other = make_recording(tmp_path / "other.mp4", 2.0, FPS, size=size, bframes=bframes)
    cut, _ = cut_at(lost, tmp_path / "cut.mp4", 0.6)
    with pytest.raises(Unrecoverable, match=r"do not fit|does not decode|taller than"):
        rebuild(str(cut), read_reference(str(other)), str(tmp_path / "rebuilt.mp4"))


def test_only_moov_less_files_have_a_media_region(recordings, tmp_path: Path) -> None:
    lost, _, _ = recordings
    cut, _ = cut_at(lost, tmp_path / "cut.mp4", 0.5)
    for path, expected in ((lost, False), (cut, True)):
        data = path.read_bytes()
        boxes = top_level_boxes(data[:4096], len(data), lambda o, n, d=data: d[o : o + n])
        assert [b[0] for b in boxes][:3] == [b"ftyp", b"free", b"mdat"]
        assert (media_region(boxes, len(data)) is not None) is expected


def test_sequence_parameter_set_gives_the_picture_size(tmp_path: Path) -> None:
    for size in ((96, 64), (130, 74)):  # 130x74: cropped from 144x80 macroblocks
        path = make_recording(tmp_path / f"{size[0]}.mp4", 1.0, FPS, size=size)
        with av.open(str(path)) as c:
            _, sps, _ = parse_avcc(bytes(c.streams.video[0].codec_context.extradata))
        parsed = parse_sps(sps[0])
        assert (parsed.width, parsed.height) == size


def test_nothing_of_the_stream_in_the_media_data(recordings, tmp_path: Path) -> None:
    lost, sibling, _ = recordings
    cut, _ = cut_at(lost, tmp_path / "cut.mp4", 0.6)
    data = bytearray(cut.read_bytes())
    rng = np.random.default_rng(0)
    data[64:] = rng.integers(0, 256, len(data) - 64, dtype=np.uint8).tobytes()  # noise
    cut.write_bytes(bytes(data))
    with pytest.raises(Unrecoverable, match="no picture"):
        rebuild(str(cut), read_reference(str(sibling)), str(tmp_path / "rebuilt.mp4"))
