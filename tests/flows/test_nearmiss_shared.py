"""`curate nearmiss fit` and `eval` on the real videos in ../shared with the labels in
tests/data (written by watching the videos; skipped when ../shared is absent)."""

from __future__ import annotations

import csv
import json

import av  # noqa: F401  - PyAV before decord (see tests/video_factory.py)
import pytest
import yaml

from flows.cli import main
from tests.helpers import ROOT, shared_path

pytestmark = pytest.mark.shared
LABELS = ROOT / "tests" / "data" / "shared_videos_labels.csv"
FROZEN = "udacity_project_video_lane_overlay.mp4"  # one picture for 50 s


def test_fit_and_eval_on_the_shared_videos(tmp_path, tiny_model, prefect_harness, capsys):
    from flows.common import cache_root
    from schemas.config import load_config
    from tasks.video.fit import picture_ood
    from tasks.video.score import cached_video_scores, load_video_scores

    videos = shared_path("data", "videos")
    names = sorted(p.name for p in videos.glob("*.mp4"))
    rows = list(csv.DictReader(LABELS.open()))
    assert sorted({r["video"] for r in rows}) == names  # every shared video is labelled
    positives = [r for r in rows if r["label"] in ("near_miss", "collision")]
    cfg = {
        "dataset": "shared",
        "output": str(tmp_path / "out"),
        "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 64},
        "video": {"input": str(videos / "*.mp4")},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    args = ["--labels", str(LABELS), "-c", str(tmp_path / "c.yaml"), "--partition", "2026-11-24"]
    head = tmp_path / "head.safetensors"
    assert main(["nearmiss", "fit", *args, "--out", str(head)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["videos"] == len(names) and summary["videos_scored"] == len(names)

    # the picture statistics cached by the score stage catch the frozen video, only it
    config = load_config(tmp_path / "c.yaml")
    flagged = {}
    for name in names:
        vs = cached_video_scores(str(videos / name), config.video, config.model, cache_root(config))
        table, _ = load_video_scores(vs, {})
        flagged[name] = picture_ood(table, config.video.ood.threshold).mean()
    assert flagged.pop(FROZEN) > 0.95 and max(flagged.values()) == 0.0
    assert summary["dropped_ood_frames"] > 190

    out = tmp_path / "eval"
    assert main(["nearmiss", "eval", *args, "--head", str(head), "--out", str(out)]) == 0
    assert "frame_auc" in capsys.readouterr().out
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["videos_evaluated"] == len(names) and doc["not_evaluated"] == []
    assert doc["positive_spans"] == len(positives) and doc["videos_cached"] == len(names)
    for variant in ("zero_shot", "with_head"):
        assert 0.0 <= doc[variant]["frame_auc"] <= 1.0
        rows = doc["per_video"][variant]
        assert sum(r["n_spans"] for r in rows) == len(positives)
    assert (out / "report.md").read_text().count("[plot](plots/video_") == 2 * len(names)
