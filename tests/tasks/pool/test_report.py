"""Pool report: files written, tables that add up, valid PNGs, byte-identical reruns."""

from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec
import numpy as np
import polars as pl
import pytest

from schemas.tables import SAMPLES, STATUSES, conform, empty
from tasks.pool.report import entry_distribution_summary, write_pool_report
from tests.report_helpers import PNG_MAGIC, assert_png, md_rows

POOL_STATS = {
    "flow": "pool",
    "dataset": "demo",
    "partition": "2024-05-01",
    "counts": {
        "input": 12,
        "kept": 5,
        "filtered_text": 2,
        "filtered_image": 0,
        "filtered_clip": 3,
        "filtered_head": 0,
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


def test_pool_report_writes_what_it_says(tmp_path: Path) -> None:
    before, after = np.array([9, 4, 0, 2, 1]), np.array([2, 2, 0, 2, 1])
    written = write_pool_report(
        _samples(POOL_STATS), POOL_STATS, str(tmp_path), entry_counts=(before, after)
    )
    assert written[-1] == "report.md" and len(set(written)) == len(written) == 6
    assert sorted(
        p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()
    ) == sorted(written)
    for rel in written[:-1]:
        assert_png(tmp_path / rel)
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# Pool report: demo / 2024-05-01\n")
    assert set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)) == set(written[:-1])
    rows = {r[0]: int(r[1]) for r in md_rows(md, "status")}
    assert sum(rows[s] for s in STATUSES) == rows["**input**"] == 12
    assert "Check: sum of statuses = 12 = input ✓" in md
    assert "samples.parquet agrees: 12 rows" in md
    reasons = md_rows(md, "reason")
    assert reasons[0][:2] == ["clip:below_threshold", "3"] and sum(int(r[1]) for r in reasons) == 7
    assert md_rows(md, "p01")[0] == ["0.1", "0.11", "0.2", "0.29", "0.33", "0.37", "0.39"]
    balance = {r[0]: r[1] for r in md_rows(md, "")}
    assert balance["metadata sha256"] == "ef" * 32 and balance["tail share after"] == "0.4"
    assert md_rows(md, "stage")[-1] == ["total_s", "2.75"]


def test_pool_report_without_balance_or_scores(tmp_path: Path) -> None:
    stats = {**POOL_STATS, "balance": None, "counts": {"input": 0, **dict.fromkeys(STATUSES, 0)}}
    stats["clip_score"] = {
        "quantiles": dict.fromkeys(POOL_STATS["clip_score"]["quantiles"]),
        "mode": None,
        "threshold": None,
    }
    written = write_pool_report(empty(SAMPLES), stats, str(tmp_path))
    assert "plots/metaclip_rank_counts.png" not in written and len(written) == 5
    md = (tmp_path / "report.md").read_text()
    assert "Balancing: not configured." in md and "Selection: none; threshold –." in md
    assert_png(tmp_path / "plots" / "clip_score_hist.png")


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
