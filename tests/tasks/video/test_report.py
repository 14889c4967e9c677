"""Video report: tables, timelines, caps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from schemas.tables import EVENTS, FRAMES, VIDEOS, conform
from tasks.video import report as video_report
from tasks.video.report import write_video_report
from tests.report_helpers import assert_png, md_rows


def _video_tables() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    videos = pl.DataFrame(
        {
            "video": ["s3://fleet/a.mp4", "s3://fleet/b.mp4", "s3://fleet/c.mp4"],
            "status": ["ok", "quarantined", "ok"],
            "error": [None, "decode_error: moov atom | not found", None],
            "duration_s": [10.0, None, 8.0],
        }
    )
    videos = conform(
        videos.with_columns([pl.lit(None).alias(c) for c in VIDEOS if c not in videos.columns]),
        VIDEOS,
    )
    t = np.arange(0, 10, 0.5)
    score = np.where((t >= 2) & (t < 4), 0.9, 0.1)
    frames = pl.DataFrame(
        {
            "video": ["s3://fleet/a.mp4"] * len(t) + ["s3://fleet/c.mp4"] * 16,
            "t_s": np.concatenate([t, t[:16]]),
            "score": np.concatenate([score, np.full(16, 0.1)]),
            "smoothed": np.concatenate([score * 0.8, np.full(16, 0.1)]),
        }
    )
    frames = conform(
        frames.with_columns([pl.lit(None).alias(c) for c in FRAMES if c not in frames.columns]),
        FRAMES,
    )
    events = pl.DataFrame(
        {
            "event_id": ["e0"],
            "video": ["s3://fleet/a.mp4"],
            "start_s": [2.0],
            "end_s": [4.0],
            "peak_s": [2.5],
            "peak_score": [0.9],
            "key": ["e0"],
        }
    )
    events = conform(
        events.with_columns([pl.lit(None).alias(c) for c in EVENTS if c not in events.columns]),
        EVENTS,
    )
    return videos, frames, events


VIDEO_STATS = {
    "flow": "video",
    "dataset": "demo",
    "partition": "2024-05-01",
    "counts": {"input": 3, "ok": 2, "quarantined": 1},
    "reasons": {"decode_error": 1},
    "frames": 36,
    "events": 1,
    "video_hours": 0.005,
    "events_per_hour": 200.0,
    "timings": {"total_s": 1.0},
}


def test_video_report_tables_and_timelines(tmp_path: Path) -> None:
    videos, frames, events = _video_tables()
    written = write_video_report(
        videos, frames, events, VIDEO_STATS, {"start": 0.6, "stop": 0.4}, str(tmp_path)
    )
    assert sorted(written) == [
        "plots/timeline_0.png",
        "plots/timeline_1.png",
        "plots/video_status_counts.png",
        "report.md",
    ]
    assert sorted(
        p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()
    ) == sorted(written)
    for rel in written[:-1]:
        assert_png(tmp_path / rel)
    md = (tmp_path / "report.md").read_text()
    rows = md_rows(md, "#")
    assert [(r[1], r[3], r[5]) for r in rows] == [
        ("a.mp4", "ok", "1"),
        ("b.mp4", "quarantined", "0"),
        ("c.mp4", "ok", "0"),
    ]
    assert rows[1][4] == "decode_error: moov atom \\| not found"
    assert (
        rows[0][6] == "[plot](plots/timeline_0.png)"
        and rows[2][6] == "[plot](plots/timeline_1.png)"
    )
    assert "1 events in 0.005 h of video: **200 events per hour**." in md
    assert "Timelines for all 2 scored videos." in md
    counts = {r[0]: int(r[1]) for r in md_rows(md, "status")}
    assert counts["ok"] + counts["quarantined"] == counts["**input**"] == 3


def test_video_report_caps_timelines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(video_report, "MAX_TIMELINES", 1)
    videos, frames, events = _video_tables()
    stats = {k: v for k, v in VIDEO_STATS.items() if k not in ("video_hours", "events_per_hour")}
    written = write_video_report(
        videos, frames, events, stats, {"start": 0.6, "stop": 0.4}, str(tmp_path)
    )
    assert [w for w in written if "timeline" in w] == ["plots/timeline_0.png"]
    md = (tmp_path / "report.md").read_text()
    assert (
        "Timelines shown for 1 of 2 scored videos (capped; the videos with the most events first)."
        in md
    )
    assert "1 events in 0.005 h of video: **200 events per hour**." in md  # from the tables


def test_capped_timelines_show_the_videos_with_events_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(video_report, "MAX_TIMELINES", 1)
    videos, frames, events = _video_tables()
    events = events.with_columns(pl.lit("s3://fleet/c.mp4").alias("video"))  # the last ok one
    write_video_report(videos, frames, events, VIDEO_STATS, {"start": 0.6}, str(tmp_path))
    rows = md_rows((tmp_path / "report.md").read_text(), "#")
    assert [(r[1], r[5], r[6]) for r in rows] == [
        ("a.mp4", "0", ""),
        ("b.mp4", "0", ""),
        ("c.mp4", "1", "[plot](plots/timeline_0.png)"),
    ]
