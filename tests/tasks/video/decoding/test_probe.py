"""Probe: metadata of good videos, one quarantine reason per kind of bad file, sidecars."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest

from schemas.tables import VIDEOS
from tasks.video.decoding.probe import probe_video
from tests.video_factory import (
    frame_code,
    make_audio_only,
    make_empty,
    make_no_frames,
    make_not_video,
    make_timed_video,
    make_truncated,
    make_video,
    make_zero_fps,
)

PROBE_KEYS = {"video", "status", "error", "duration_s", "fps", "width", "height", "codec"}


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("probe") / "good.mp4", 3.0, 10, (64, 48), gop=10)


def test_good_video_metadata(good: Path) -> None:
    row = probe_video(str(good))
    assert row == {
        "video": str(good),
        "status": "ok",
        "error": None,
        "error_detail": None,
        "duration_s": 3.0,
        "fps": 10.0,
        "width": 64,
        "height": 48,
        "codec": "h264",
        "n_frames": 30,
        "rotation": 0,
        "display_width": 64,
        "display_height": 48,
        "decoder": "decord",
        "reference": None,
    }
    assert set(row) <= set(VIDEOS) and set(row) >= PROBE_KEYS


def test_other_containers_and_codecs(tmp_path: Path) -> None:
    mkv = probe_video(str(make_video(tmp_path / "a.mkv", 2.0, 5, container="matroska")))
    mp4v = probe_video(str(make_video(tmp_path / "b.mp4", 2.0, 5, codec="mpeg4")))
    assert (mkv["status"], mkv["n_frames"], mkv["fps"]) == ("ok", 10, 5.0)
    assert (mp4v["status"], mp4v["codec"], mp4v["n_frames"]) == ("ok", "mpeg4", 10)


def quarantined(path: Path, **kw: float) -> str:
    """`code: detail` (or the bare code) of a quarantined video."""
    row = probe_video(str(path), **kw)
    assert row["status"] == "quarantined"
    assert set(row) <= set(VIDEOS)
    assert ":" not in row["error"]  # a code, never a sentence
    return f"{row['error']}: {row['error_detail']}" if row["error_detail"] else row["error"]


def test_empty_file(tmp_path: Path) -> None:
    assert quarantined(make_empty(tmp_path / "e.mp4")) == "empty_file"


def test_not_a_video(tmp_path: Path) -> None:
    assert quarantined(make_not_video(tmp_path / "t.mp4")).startswith("not_a_video: ")
    audio = make_audio_only(tmp_path / "a.mp4")
    assert quarantined(audio) == "not_a_video: no video stream"


def test_truncated_before_moov(good: Path, tmp_path: Path) -> None:
    # moov written last (the default): the first 60% has media data but no index
    error = quarantined(make_truncated(good, tmp_path / "cut.mp4", 0.6))
    assert error.startswith("truncated: container unreadable")


def recovered_prefix(path: Path) -> tuple[dict, list[int]]:
    """The probe row of a cut file and the picture codes its readable prefix decodes to."""
    from tasks.video.decoding.decode import iter_source_chunks
    from tasks.video.decoding.probe import open_video

    with open_video(str(path), str(path), 6 * 3600.0) as (row, source):
        assert source is not None, row
        chunks = list(iter_source_chunks(source, 10.0, (48, 64), 16))
    codes = [frame_code(f) for _, _, frames in chunks for f in frames]
    return row, codes


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.95])
def test_truncated_with_moov_first(tmp_path: Path, fraction: float) -> None:
    """Issue 20: moov first, the header opens fine and promises frames the file no longer
    holds; the frames before the cut are its readable prefix, published as `recovered`."""
    src = make_video(tmp_path / "fs.mp4", 10.0, 10, faststart=True, gop=10)
    assert probe_video(str(src))["status"] == "ok"
    cut = make_truncated(src, tmp_path / "cut.mp4", fraction)
    row, codes = recovered_prefix(cut)
    assert (row["status"], row["error"], row["reference"]) == ("recovered", "truncated", None)
    assert "frames in the file: the readable prefix" in row["error_detail"]
    assert codes == list(range(row["n_frames"]))  # frame k is picture k, at k / 10 s
    assert 10 * fraction - 2 <= row["n_frames"] <= 100 * fraction
    assert row["duration_s"] == pytest.approx(row["n_frames"] / 10)


@pytest.mark.parametrize("fraction", [0.3, 0.8])
def test_truncated_matroska_ends_early(tmp_path: Path, fraction: float) -> None:
    src = make_video(tmp_path / "v.mkv", 10.0, 10, container="matroska", gop=10)
    row, codes = recovered_prefix(make_truncated(src, tmp_path / "cut.mkv", fraction))
    assert (row["status"], row["error"]) == ("recovered", "truncated")
    assert "header says 10.00s: the readable prefix" in row["error_detail"]
    assert codes == list(range(row["n_frames"])) and row["n_frames"] >= 10 * fraction


def test_a_cut_file_without_a_whole_frame_stays_truncated(tmp_path: Path) -> None:
    src = make_video(tmp_path / "fs.mp4", 10.0, 10, faststart=True, gop=10)
    data = src.read_bytes()
    header_only = tmp_path / "cut.mp4"
    header_only.write_bytes(data[: data.index(b"mdat") + 20])  # the moov, 16 bytes of frame 0
    assert quarantined(header_only).startswith("truncated:")


def test_unsupported_codec(good: Path, tmp_path: Path) -> None:
    unknown = tmp_path / "zzzz.mp4"  # a codec tag FFmpeg does not know
    unknown.write_bytes(good.read_bytes().replace(b"avc1", b"zzzz"))
    assert quarantined(unknown) == "unsupported_codec: unknown codec"


def test_a_codec_decord_lacks_is_decoded_by_pyav(tmp_path: Path) -> None:
    # PyAV's FFmpeg encodes and decodes AV1; decord's older FFmpeg has no AV1 decoder
    av1 = make_video(tmp_path / "av1.mp4", 1.0, 10, codec="libsvtav1")
    row = probe_video(str(av1))
    assert (row["status"], row["codec"], row["decoder"]) == ("ok", "av1", "pyav")


def test_zero_fps(good: Path, tmp_path: Path) -> None:
    assert quarantined(make_zero_fps(good, tmp_path / "z.mp4")) == "zero_fps"


def test_no_frames(good: Path, tmp_path: Path) -> None:
    assert quarantined(make_no_frames(good, tmp_path / "n.mp4")) == "no_frames"


def test_absurd_duration(good: Path) -> None:
    assert quarantined(good, max_duration_s=2.5) == "absurd_duration: 3.0s > 2.5s"
    assert probe_video(str(good), max_duration_s=3.0)["status"] == "ok"


def test_missing_file(tmp_path: Path) -> None:
    assert quarantined(tmp_path / "nope.mp4").startswith("unreadable: ")


def test_remote_video(good: Path) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/probe/good.mp4", good.read_bytes())
    row = probe_video("memory://probe/good.mp4")
    assert row["video"] == "memory://probe/good.mp4"
    assert {k: v for k, v in row.items() if k != "video"} == {
        k: v for k, v in probe_video(str(good)).items() if k != "video"
    }


@pytest.mark.parametrize(
    ("name", "kw", "decoder"),
    [
        ("v.avi", {"container": "avi"}, "decord_remux"),
        ("v.ts", {"container": "mpegts", "bframes": 2}, "decord_remux"),
        ("v.mp4", {"codec": "libx265", "bframes": 3}, "pyav"),  # open GOPs
        ("v.mp4", {"options": {"intra-refresh": "1"}}, "pyav"),
    ],
)
def test_files_decord_indexes_wrongly_get_an_exact_decoder(
    tmp_path: Path, name: str, kw: dict, decoder: str
) -> None:
    """decord's index lands on other pictures in these files (`test_decode.py` shows the
    frames are right now): a stream-copy remux fixes AVI and TS, PyAV reads the others."""
    video = make_video(tmp_path / name, 8.0, 30, (160, 120), **kw)
    row = probe_video(str(video))
    assert (row["status"], row["decoder"]) == ("ok", decoder)


def test_decord_never_opens_an_mpeg_ts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """decord can hang for good on MPEG-TS with B-frames (issue 20's last closing note):
    the packet pass sends TS files to a remux before decord sees them."""
    import decord

    from tasks.video.decoding import gate

    opened: list[str] = []
    real = decord.VideoReader

    def reader(path: str, *a: object, **k: object) -> decord.VideoReader:
        opened.append(path)
        return real(path, *a, **k)

    monkeypatch.setattr(gate.decord, "VideoReader", reader)
    video = make_video(tmp_path / "v.ts", 4.0, 30, (160, 120), container="mpegts", bframes=2)
    assert probe_video(str(video))["decoder"] == "decord_remux"
    assert opened and all(p.endswith(".mp4") for p in opened)


CONTAINERS = [("mkv", "matroska"), ("mov", "mov"), ("mp4", "mp4"), ("ts", "mpegts")]


@pytest.mark.parametrize(("ext", "fmt"), CONTAINERS)
@pytest.mark.parametrize(("start_s", "audio_s"), [(1.2, None), (0.0, 4.0)])
def test_duration_is_the_video_streams_own(
    tmp_path: Path, ext: str, fmt: str, start_s: float, audio_s: float | None
) -> None:
    """Issue 27, case 2: a video whose first frame is at 1.2 s, and one whose audio runs
    2 s past its 2 s of video, are whole: the duration is the video stream's (first frame
    to the end of the last), not the container's, and neither is `truncated`."""
    times = [i / 30 for i in range(60)]
    video = make_timed_video(
        tmp_path / f"v.{ext}", times, container=fmt, start_s=start_s, audio_s=audio_s, gop=30
    )
    row = probe_video(str(video))
    assert (row["status"], row["error"]) == ("ok", None), row
    assert row["duration_s"] == pytest.approx(2.0, abs=1e-3)
    assert (row["n_frames"], row["fps"]) == (60, pytest.approx(30.0, abs=0.02))


@pytest.mark.parametrize(
    "kw",
    [{"bframes": 2}, {"container": "matroska"}, {"container": "mov", "bframes": 2}, {"gop": 3}],
)
def test_files_decord_indexes_right_pass_the_index_check(tmp_path: Path, kw: dict) -> None:
    video = make_video(tmp_path / "v.mp4", 8.0, 30, (160, 120), **kw)
    assert probe_video(str(video))["status"] == "ok"
