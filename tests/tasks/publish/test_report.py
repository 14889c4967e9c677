"""Pool and video reports: files written, tables that add up, valid PNGs."""

from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec
import numpy as np
import polars as pl
import pytest
from PIL import Image

from schemas.tables import EVENTS, FRAMES, SAMPLES, STATUSES, VIDEOS, conform, empty
from tasks.publish.report import (
    entry_distribution_summary,
    md_table,
    status_counts_table,
    write_pool_report,
)
from tasks.video import report as video_report
from tasks.video.report import write_video_report

POOL_STATS = {
    "flow": "pool",
    "dataset": "demo",
    "partition": "2024-05-01",
    "counts": {
        "input": 12,
        "kept": 5,
        "filtered_text": 2,
        "filtered_clip": 3,
        "filtered_balance": 0,
        "duplicate": 1,
        "quarantined": 1,
    },
    "reasons": {
        "text:too_few_words": 1,
        "text:filename_or_url": 1,
        "clip:below_threshold": 3,
        "duplicate": 1,
        "decompression_bomb": 1,
    },
    "shards": {"input": 1, "unreadable": 0, "empty": 0, "output": 1, "scored": 1, "cached": 0},
    "clip_score": {
        "quantiles": {
            "p01": 0.1,
            "p05": 0.11,
            "p25": 0.2,
            "p50": 0.29,
            "p75": 0.33,
            "p95": 0.37,
            "p99": 0.39,
        },
        "mode": "threshold",
        "threshold": 0.28,
    },
    "balance": {
        "t": 2,
        "metadata_sha256": "ef" * 32,
        "seed": 0,
        "entries": 5,
        "entries_hit_before": 4,
        "entries_hit_after": 4,
        "head_share_before": 0.75,
        "head_share_after": 0.6,
    },
    "timings": {"score_s": 2.0, "select_s": 0.5, "publish_s": 0.25, "total_s": 2.75},
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _samples(stats: dict) -> pl.DataFrame:
    """One row per counted status, scores spread around the cut."""
    statuses = [s for s in STATUSES for _ in range(stats["counts"][s])]
    scores = [
        None if s in ("quarantined", "filtered_text") else 0.1 + 0.025 * i
        for i, s in enumerate(statuses)
    ]
    df = pl.DataFrame(
        {"uid": [f"u{i}" for i in range(len(statuses))], "status": statuses, "clip_score": scores}
    )
    rest = [pl.lit(None).alias(c) for c in SAMPLES if c not in df.columns]
    return conform(df.with_columns(rest), SAMPLES)


def _table(md: str, header_first: str) -> list[list[str]]:
    """Body rows of the markdown table whose header starts with `| header_first |`."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header_first} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (600, 350)


def test_entry_distribution_summary_hand_worked() -> None:
    before = np.array([10, 5, 0, 3, 2])
    after = np.array([4, 5, 0, 3, 1])
    s = entry_distribution_summary(before, after, head=2)
    assert s["entries"] == 5
    assert (s["entries_hit_before"], s["entries_hit_after"]) == (4, 4)
    assert s["head_share_before"] == pytest.approx(15 / 20)
    assert s["head_share_after"] == pytest.approx(9 / 13)
    assert s["tail_share_after"] == pytest.approx(4 / 13)
    assert (s["matches_before"], s["matches_after"]) == (20, 13)
    zero = entry_distribution_summary(np.zeros(3, int), np.zeros(3, int))
    assert zero["head_share_before"] == zero["tail_share_after"] == 0.0
    assert zero["entries_hit_after"] == 0


def test_status_counts_table_adds_up_and_flags_mismatch() -> None:
    md = status_counts_table(POOL_STATS["counts"])
    rows = {r[0]: r for r in _table(md, "status")}
    assert sum(int(rows[s][1]) for s in STATUSES) == int(rows["**sum**"][1]) == 12
    assert rows["kept"][2] == "41.7%" and rows["**input**"][1] == "12"
    assert md.endswith("Check: sum of statuses = 12 = input ✓")
    bad = status_counts_table({"input": 3, "ok": 1, "quarantined": 1})
    assert "MISMATCH" in bad and "sum of statuses 2 ≠ input 3" in bad


def test_md_table_escapes_cells() -> None:
    md = md_table(["a", "b"], [["x|y\nz", 0.123456789], [None, 3]])
    assert md.splitlines()[2] == "| x\\|y z | 0.1235 |"
    assert md.splitlines()[3] == "| – | 3 |"


def test_pool_report_writes_what_it_says(tmp_path: Path) -> None:
    before, after = np.array([9, 4, 0, 2, 1]), np.array([2, 2, 0, 2, 1])
    written = write_pool_report(
        _samples(POOL_STATS), POOL_STATS, str(tmp_path), entry_counts=(before, after)
    )
    assert written[-1] == "report.md" and len(set(written)) == len(written) == 5
    assert sorted(
        p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()
    ) == sorted(written)
    for rel in written[:-1]:
        _assert_png(tmp_path / rel)
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# Pool report: demo / 2024-05-01\n")
    assert set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)) == set(written[:-1])
    rows = {r[0]: int(r[1]) for r in _table(md, "status")}
    assert sum(rows[s] for s in STATUSES) == rows["**input**"] == 12
    assert "Check: sum of statuses = 12 = input ✓" in md
    assert "samples.parquet agrees: 12 rows" in md
    reasons = _table(md, "reason")
    assert reasons[0][:2] == ["clip:below_threshold", "3"] and sum(int(r[1]) for r in reasons) == 7
    assert _table(md, "p01")[0] == ["0.1", "0.11", "0.2", "0.29", "0.33", "0.37", "0.39"]
    balance = {r[0]: r[1] for r in _table(md, "")}
    assert balance["metadata sha256"] == "ef" * 32 and balance["tail share after"] == "0.4"
    assert _table(md, "stage")[-1] == ["total_s", "2.75"]


def test_pool_report_without_balance_or_scores(tmp_path: Path) -> None:
    stats = {**POOL_STATS, "balance": None, "counts": {"input": 0, **dict.fromkeys(STATUSES, 0)}}
    stats["clip_score"] = {
        "quantiles": dict.fromkeys(POOL_STATS["clip_score"]["quantiles"]),
        "mode": None,
        "threshold": None,
    }
    written = write_pool_report(empty(SAMPLES), stats, str(tmp_path))
    assert "plots/metaclip_rank_counts.png" not in written and len(written) == 4
    md = (tmp_path / "report.md").read_text()
    assert "Balancing: not configured." in md and "Selection: none; threshold –." in md
    _assert_png(tmp_path / "plots" / "clip_score_hist.png")


def test_pool_report_flags_samples_disagreeing_with_stats(tmp_path: Path) -> None:
    samples = _samples(POOL_STATS).head(11)  # one quarantined row lost
    write_pool_report(samples, POOL_STATS, str(tmp_path))
    md = (tmp_path / "report.md").read_text()
    assert "samples.parquet **disagrees** (11 rows): quarantined 0 vs 1" in md


def test_pool_report_to_fsspec_url() -> None:
    url = f"memory://report-{uuid.uuid4().hex}/part"
    written = write_pool_report(_samples(POOL_STATS), POOL_STATS, url)
    fs = fsspec.filesystem("memory")
    for rel in written:
        assert fs.cat(f"{url}/{rel}")[: 8 if rel.endswith(".png") else 1] in (PNG_MAGIC, b"#")


# ---------------------------------------------------------------- video


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
        _assert_png(tmp_path / rel)
    md = (tmp_path / "report.md").read_text()
    rows = _table(md, "#")
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
    assert "Timelines for all 2 ok videos." in md
    counts = {r[0]: int(r[1]) for r in _table(md, "status")}
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
    assert "Timelines shown for the first 1 of 2 ok videos (capped)." in md
    assert "1 events in 0.005 h of video: **200 events per hour**." in md  # from the tables


def test_pool_report_is_byte_identical_across_runs_and_threads(tmp_path: Path) -> None:
    """Same inputs give the same bytes (stable manifest sha256s), also from worker threads."""
    samples = _samples(POOL_STATS)
    write_pool_report(samples, POOL_STATS, str(tmp_path / "seq"))
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda d: write_pool_report(samples, POOL_STATS, str(tmp_path / d)), "ab"))
    for p in (tmp_path / "seq").rglob("*.*"):
        rel = p.relative_to(tmp_path / "seq")
        assert (
            (tmp_path / "a" / rel).read_bytes()
            == p.read_bytes()
            == (tmp_path / "b" / rel).read_bytes()
        )
