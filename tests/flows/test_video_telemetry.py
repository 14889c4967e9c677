"""Issue 20, part 3: the telemetry cue in the video flow. A hard brake in a video's
telemetry lifts its frames' scores into an event; a video without telemetry scores exactly
as it did without the cue."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

pytest.importorskip("av")

from flows.video import run_video
from schemas.config import parse_config
from tasks.verify import verify_partition
from tasks.video.zero_shot import _sigmoid
from tests.helpers import published_dir
from tests.telemetry_factory import drive, write_csv
from tests.video_factory import make_video

PARTITION = "2026-05-04"


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("telemetry") / "in"
    d.mkdir()
    make_video(d / "braking.mp4", duration_s=30.0, fps=5, size=(64, 48))
    write_csv(d / "braking.csv", drive(32, brakes=((12.0, 1.5, 6.0),), seed=1))
    make_video(d / "plain.mp4", duration_s=20.0, fps=5, size=(64, 48), moving_square=False)
    return d


def publish(tmp: Path, night: Path, tiny_model: dict, name: str, **fusion: float) -> Path:
    cfg = {
        "dataset": name,
        "output": str(tmp / "out"),
        "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 16},
        "video": {"input": str(night / "*.mp4"), "sample_fps": 2, "fusion": fusion},
    }
    result = run_video(parse_config(cfg), PARTITION)
    assert verify_partition(result["uri"]) == []
    return published_dir(result["uri"])


def rows(part: Path, table: str, video: str) -> pl.DataFrame:
    df = pl.read_parquet(part / f"{table}.parquet")
    return df.filter(pl.col("video").str.ends_with(video))


def test_the_cue_joins_the_fusion_only_where_there_is_telemetry(
    tmp_path, night, tiny_model, prefect_harness
):
    on = publish(tmp_path, night, tiny_model, "on", telemetry_weight=0.5)
    off = publish(tmp_path, night, tiny_model, "off", telemetry_weight=0.0)
    # a video without telemetry: the same rows, byte for byte, whatever the cue's weight
    for table in ("frames", "events"):
        assert rows(on, table, "plain.mp4").equals(rows(off, table, "plain.mp4"))
    plain = rows(on, "frames", "plain.mp4")
    assert plain["telemetry"].is_null().all() and plain["speed"].is_null().all()
    expected = 0.8 * plain["p_near_miss"] + 0.2 * _sigmoid(plain["motion"].to_numpy())
    assert np.allclose(plain["score"].to_numpy(), expected.to_numpy(), atol=1e-6)

    braking = rows(on, "frames", "braking.mp4")
    z = braking["telemetry"].to_numpy()
    assert not np.isnan(z).any() and 11.5 <= braking["t_s"][int(np.argmax(z))] <= 13.5
    assert braking.filter(pl.col("t_s").is_between(12.5, 13.0))["accel_long"].max() < -5
    fused = (
        0.8 * braking["p_near_miss"].to_numpy()
        + 0.2 * _sigmoid(braking["motion"].to_numpy())
        + 0.5 * _sigmoid(z - 2.0)  # the defaults: offset 2, scale 1
    ) / 1.5
    assert np.allclose(braking["score"].to_numpy(), fused, atol=1e-6)
    assert not np.allclose(braking["score"], rows(off, "frames", "braking.mp4")["score"])


def test_the_cue_alone_finds_the_hard_brake(tmp_path, night, tiny_model, prefect_harness):
    part = publish(
        tmp_path, night, tiny_model, "alone",
        zero_shot_weight=0.0, motion_weight=0.0, telemetry_weight=1.0,
    )  # fmt: skip
    events = rows(part, "events", "braking.mp4")
    assert events.height == 1
    ev = events.row(0, named=True)
    assert ev["start_s"] <= 12.5 and ev["end_s"] >= 13.0 and ev["end_s"] - ev["start_s"] < 5


def test_nearmiss_eval_with_and_without_the_cue(tmp_path, night, tiny_model, prefect_harness):
    from flows.nearmiss import evaluate

    labels = tmp_path / "labels.csv"
    labels.write_text("video,start_s,end_s,label\nbraking.mp4,12.0,14.0,near_miss\n")
    cfg = parse_config(
        {
            "dataset": "eval",
            "output": str(tmp_path / "out"),
            "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 16},
            "video": {"input": str(night / "*.mp4"), "sample_fps": 2},
        }
    )
    doc = evaluate(cfg, str(labels), PARTITION, None, str(tmp_path / "eval"))
    assert doc["with_head"]["frame_auc"] is None  # no head
    assert doc["with_head_telemetry"]["frame_auc"] is None
    with_cue, without = doc["with_telemetry"], doc["zero_shot"]
    assert with_cue["frame_auc"] > 0.95 > without["frame_auc"]  # the brake, in the frames
    rows = {r["video"]: r for r in doc["per_video"]["with_telemetry"]}
    assert rows[str(night / "braking.mp4")]["n_spans"] == 1
    assert "with_telemetry" in (tmp_path / "eval" / "report.md").read_text()
