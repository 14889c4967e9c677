"""The video partition's figures: events per hour counts the published events (those whose
clip was cut), which is what the publish gate watches."""

from __future__ import annotations

import polars as pl
import pytest

from flows.video import video_stats
from schemas.config import parse_config
from tasks.publish.commit import begin
from tasks.publish.gate import GateHeld, apply_gate
from tests.tasks.publish.test_gate import publish_fake


def _cfg(output: str):
    gate = {"enabled": True, "max_events_per_hour_change": 0.5}
    return parse_config({"dataset": "t", "output": output, "video": {"input": "x"}, "gate": gate})


def _tables(event_status: list[str]) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Two ok videos of 30 minutes (one hour in all), a quarantined one, and the events."""
    videos = pl.DataFrame(
        {
            "status": ["ok", "ok", "quarantined"],
            "duration_s": [1800.0, 1800.0, None],
            "error": [None, None, "truncated"],
        }
    )
    frames = pl.DataFrame(schema={"ood_cue": pl.String, "ood_flag": pl.Boolean})
    errors = [None if s == "ok" else "clip_error" for s in event_status]
    events = pl.DataFrame({"status": event_status, "error": errors})
    return videos, frames, events


def test_events_per_hour_counts_only_events_with_a_clip(tmp_path):
    """Defect: an event whose clip could not be cut still counted, so the gate's figure hid a
    night whose clips stopped cutting. Hand-worked: 4 events in 1 h, 1 clip failed: 3/h."""
    stats = video_stats(
        _cfg(str(tmp_path)), "2026-01-02", _tables(["ok"] * 3 + ["clip_error"]), [], {}
    )
    assert stats["video_hours"] == 1.0
    assert (stats["events"], stats["clips"], stats["clip_errors"]) == (4, 3, 1)
    assert stats["events_per_hour"] == 3.0


def test_gate_holds_a_night_whose_clips_could_not_be_cut(tmp_path):
    """The previous night published 4 events per hour; tonight the same 4 events are detected
    but no clip can be cut: nothing would be published, and the gate (bound 50%) holds it."""
    root = str(tmp_path / "out")
    cfg = _cfg(root)
    publish_fake(
        root, {}, "2026-01-01", video_stats(cfg, "2026-01-01", _tables(["ok"] * 4), [], {})
    )
    stats = video_stats(cfg, "2026-01-02", _tables(["clip_error"] * 4), [], {})
    with pytest.raises(GateHeld, match=r"events_per_hour 4\.0 -> 0\.0"):
        apply_gate(cfg, "video", stats, begin(f"{root}/t/video/2026-01-02", {}))


def test_report_says_the_rate_counts_published_events(tmp_path):
    from tasks.video.report import _rate_line

    tables = _tables(["ok"] * 3 + ["clip_error"])
    stats = video_stats(_cfg(str(tmp_path)), "2026-01-02", tables, [], {})
    assert _rate_line(stats, tables[0], tables[2]) == (
        "4 events in 1 h of video, 1 without a clip (could not be cut): "
        "**3 published events per hour**."
    )
