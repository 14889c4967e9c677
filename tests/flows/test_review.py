"""The review loop through the tools reviewers use: Label Studio tasks out and labels back,
on a partition the video flow published (generated videos, a fitted head)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

av = pytest.importorskip("av")  # PyAV before decord (see tests/video_factory.py)
import polars as pl  # noqa: E402

from flows.cli import main  # noqa: E402
from tasks.review.labelstudio import frames_to_span, span_to_frames  # noqa: E402
from tasks.video.labels import LabelRow, read_labels  # noqa: E402
from tests.flows.review_fleet import PARTITION, SPANS, build_fleet  # noqa: E402
from tests.helpers import published_dir  # noqa: E402


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, tiny_model, prefect_harness):
    return build_fleet(tmp_path_factory.mktemp("review"), tiny_model)


def published(fleet, name: str) -> pl.DataFrame:
    return pl.read_parquet(published_dir(fleet.dataset / "video" / PARTITION) / name)


def test_export_labelstudio_tasks_hold_every_video_and_its_events(fleet, tmp_path, capsys):
    out = tmp_path / "ls"
    args = ["export", "labelstudio", str(fleet.dataset), "--out", str(out)]
    assert main([*args, "--local-root", str(fleet.root)]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"] == len(SPANS)
    tasks = json.loads((out / "tasks.json").read_text())
    videos, events = published(fleet, "videos.parquet"), published(fleet, "events.parquet")
    assert events.height >= 2  # the head finds the red blocks
    assert [t["data"]["source"] for t in tasks] == sorted(videos["video"].to_list())
    for task in tasks:
        data = task["data"]
        url = data["source"]
        row = videos.filter(pl.col("video") == url).row(0, named=True)
        rel = url[len(str(fleet.root)) + 1 :]
        assert data["video"] == f"/data/local-files/?d={rel}"
        assert (data["fps"], data["duration_s"], data["partition"]) == (
            row["fps"], row["duration_s"], PARTITION)  # fmt: skip
        mine = events.filter(pl.col("video") == url).sort("start_s")
        (pred,) = task["predictions"]
        got = [(r["value"]["ranges"][0], r["score"]) for r in pred["result"]]
        want = []
        for e in mine.iter_rows(named=True):  # frames [a, b]: 1-based, both included
            a = int(e["start_s"] * row["fps"] + 1e-6) + 1
            b = -int(-(e["end_s"] * row["fps"] - 1e-6) // 1)
            want.append(({"start": a, "end": max(a, b)}, e["peak_score"]))
        assert got == want
        assert data["event_ids"] == mine["event_id"].to_list()
    config = ET.fromstring((out / "config.xml").read_text())
    assert config.find("Video").get("frameRate") == "$fps"


def test_import_labelstudio_gives_the_labels_csv_of_the_spans_reviewed(fleet, tmp_path):
    """A reviewer's export (as Label Studio writes it): one prediction accepted, one moved
    and a collision added, one task skipped; the CSV holds exactly those spans."""
    out = tmp_path / "ls"
    assert main(["export", "labelstudio", str(fleet.dataset), "--out", str(out)]) == 0
    tasks = json.loads((out / "tasks.json").read_text())
    by_name = {t["data"]["source"].rsplit("/", 1)[1]: t for t in tasks}
    fps = by_name["a.mp4"]["data"]["fps"]
    moved = {"ranges": [{"start": 9, "end": 30}], "timelinelabels": ["near_miss"]}
    added = {"ranges": [{"start": 40, "end": 44}], "timelinelabels": ["collision"]}

    def result(v: dict) -> dict:
        return {"from_name": "events", "to_name": "video", "type": "timelinelabels", "value": v}

    by_name["a.mp4"]["annotations"] = [{"id": 1, "result": [result(moved), result(added)]}]
    accepted = by_name["b.mp4"]["predictions"][0]["result"]
    by_name["b.mp4"]["annotations"] = [{"id": 2, "result": accepted}]
    by_name["c.mp4"]["annotations"] = [{"id": 3, "was_cancelled": True, "result": []}]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(list(by_name.values())))
    labels = tmp_path / "labels.csv"
    assert main(["import", "labelstudio", str(export), "--out", str(labels)]) == 0
    a, b = (by_name[n]["data"] for n in ("a.mp4", "b.mp4"))
    want = [
        LabelRow(a["source"], 0.0, a["duration_s"], "normal"),
        LabelRow(a["source"], 8 / fps, 30 / fps, "near_miss"),
        LabelRow(a["source"], 39 / fps, 44 / fps, "collision"),
        LabelRow(b["source"], 0.0, b["duration_s"], "normal"),
    ]
    for r in accepted:
        first, last = r["value"]["ranges"][0]["start"], r["value"]["ranges"][0]["end"]
        want.append(LabelRow(b["source"], *frames_to_span(first, last, b["fps"]), "near_miss"))
    got = read_labels(labels)
    assert [(r.video, r.label) for r in got] == [(r.video, r.label) for r in want]
    flat = lambda rows: [t for r in rows for t in (r.start_s, r.end_s)]  # noqa: E731
    assert flat(got) == pytest.approx(flat(want), abs=1e-6)
    # an accepted prediction comes back as the frames it covered: the event, to a frame
    ev = published(fleet, "events.parquet").filter(pl.col("video") == b["source"]).sort("start_s")
    for row, e in zip(got[4:], ev.iter_rows(named=True), strict=True):
        assert span_to_frames(row.start_s, row.end_s, b["fps"]) == span_to_frames(
            e["start_s"], e["end_s"], b["fps"])  # fmt: skip


def test_exports_that_cannot_be_made_fail_with_one_line(fleet, tmp_path, capsys):
    args = ["export", "labelstudio", str(fleet.dataset), "--out", str(tmp_path / "x")]
    assert main([*args, "--local-root", "/nowhere"]) == 3
    assert "not under the local files root /nowhere" in capsys.readouterr().err
    assert main(["export", "labelstudio", "--out", str(tmp_path / "y")]) == 3
    (tmp_path / "bad.json").write_text("{")
    assert main(["import", "labelstudio", str(tmp_path / "bad.json"), "--out", "l.csv"]) == 3
    assert "not a readable JSON export" in capsys.readouterr().err
