"""Sidecars: fleet metadata beside a video, by full file name, never shared by two videos."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import fsspec
import pytest

from tasks.video.sidecar import read_sidecar, sidecar_url, video_fingerprint
from tests.video_factory import write_sidecar


def test_sidecar(tmp_path: Path) -> None:
    video = tmp_path / "cam.mp4"
    assert read_sidecar(str(video)) == {"vehicle_id": None, "start_time": None}
    write_sidecar(video, {"vehicle_id": 17, "start_time": "2024-05-01T08:00:00Z", "x": 1})
    assert read_sidecar(str(video)) == {"vehicle_id": "17", "start_time": "2024-05-01T08:00:00Z"}
    fs = fsspec.filesystem("memory")
    fs.pipe("/side/cam.json", b'{"vehicle_id": "v9"}')
    assert read_sidecar("memory://side/cam.mp4") == {"vehicle_id": "v9", "start_time": None}


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\xff\xfe"])
def test_bad_sidecar_is_ignored_with_warning(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    video = tmp_path / "cam.mp4"
    write_sidecar(video, content)
    with caplog.at_level(logging.WARNING, logger="tasks.video.sidecar"):
        assert read_sidecar(str(video)) == {"vehicle_id": None, "start_time": None}
    assert "ignoring sidecar" in caplog.text


def test_two_videos_of_one_stem_never_share_a_sidecar(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 27, case 6: `cam01.mp4` and `cam01.mov` both read `cam01.json`, so one
    vehicle's metadata went to the other's video. A sidecar by full file name belongs to
    its video alone; `<stem>.json` only to a video no other input shares the stem with."""
    mp4, mov = str(tmp_path / "cam01.mp4"), str(tmp_path / "cam01.mov")
    inputs = [mp4, mov]
    for video in inputs:
        Path(video).write_bytes(b"a video")
    (tmp_path / "cam01.json").write_text(json.dumps({"vehicle_id": "shared?"}))
    with caplog.at_level(logging.WARNING, logger="tasks.video.sidecar"):
        assert read_sidecar(mp4, None, inputs)["vehicle_id"] is None
        assert read_sidecar(mov, None, inputs)["vehicle_id"] is None
    assert "share its name" in caplog.text
    assert video_fingerprint(mp4, None, inputs)["sidecar"] is None
    assert read_sidecar(mp4, None, [mp4])["vehicle_id"] == "shared?"  # alone: its own
    (tmp_path / "cam01.mp4.json").write_text(json.dumps({"vehicle_id": "truck-1"}))
    (tmp_path / "cam01.mov.json").write_text(json.dumps({"vehicle_id": "truck-2"}))
    assert read_sidecar(mp4, None, inputs)["vehicle_id"] == "truck-1"
    assert read_sidecar(mov, None, inputs)["vehicle_id"] == "truck-2"
    assert sidecar_url(mov, None, inputs) == f"{mov}.json"
    assert video_fingerprint(mov, None, inputs)["sidecar"]["url"].endswith("cam01.mov.json")
