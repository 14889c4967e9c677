"""`curate nearmiss suggest` on the real videos in ../shared (skipped when absent): the
requested count, nothing from a labelled video, the same table twice."""

from __future__ import annotations

import csv
import json

import av  # noqa: F401  - PyAV before decord (see tests/video_factory.py)
import polars as pl
import pytest
import yaml

from flows.cli import main
from tests.helpers import ROOT, shared_path

pytestmark = pytest.mark.shared
FIRST_ROUND = ("cctv_accident_af.mp4", "dashcam_kb0.mp4", "udacity_solidWhiteRight.mp4")


def test_suggest_on_the_shared_videos(tmp_path, tiny_model, prefect_harness, capsys):
    videos = shared_path("data", "videos")
    rows = list(csv.DictReader((ROOT / "tests" / "data" / "shared_videos_labels.csv").open()))
    labels = tmp_path / "round1.csv"
    with labels.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "start_s", "end_s", "label"])
        writer.writerows([r["video"], r["start_s"], r["end_s"], r["label"]]
                         for r in rows if r["video"] in FIRST_ROUND)  # fmt: skip
    cfg = {
        "dataset": "shared",
        "output": str(tmp_path / "out"),
        "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 64},
        "video": {"input": str(videos / "*.mp4")},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    args = ["nearmiss", "suggest", "-c", str(tmp_path / "c.yaml"), "--start", "2026-11-24"]
    args += ["--end", "2026-11-25", "--n", "6", "--labels", str(labels)]
    assert main([*args, "--out", str(tmp_path / "a.parquet")]) == 0
    summary = json.loads(capsys.readouterr().out)
    # the pattern has no {date}: the 8 videos of both dates count once
    assert summary["videos"] == 8 and summary["labelled_videos"] == 3
    assert main([*args, "--out", str(tmp_path / "b.parquet")]) == 0
    a, b = pl.read_parquet(tmp_path / "a.parquet"), pl.read_parquet(tmp_path / "b.parquet")
    assert a.height == 6 and a.equals(b)
    assert a["rank"].to_list() == list(range(1, 7))
    assert not set(a["video"].str.split("/").list.last()) & set(FIRST_ROUND)
    assert (a["end_s"] <= a["duration_s"] + 1e-9).all() and (a["frames"] > 0).all()
