"""Label Studio's formats: frames on its timeline, media URLs, tasks, and reading exports
back into labels rows (hand-worked examples)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from tasks.review import labelstudio as lsf
from tasks.video.labels import LabelError, LabelRow, parse_labels


@pytest.mark.parametrize(
    ("span", "fps", "frames", "back"),
    [
        ((1.5, 3.0), 8.0, (13, 24), (1.5, 3.0)),  # aligned: [12/8, 24/8) is frames 13..24
        ((0.1, 0.2), 10.0, (2, 2), (0.1, 0.2)),  # one frame: the second, [0.1, 0.2)
        ((0.05, 0.26), 10.0, (1, 3), (0.0, 0.3)),  # unaligned: every frame it overlaps
        ((0.0, 0.001), 30.0, (1, 1), (0.0, 1 / 30)),  # shorter than a frame: still one
    ],
)
def test_spans_and_timeline_frames(span, fps, frames, back):
    assert lsf.span_to_frames(*span, fps) == frames
    assert lsf.frames_to_span(*frames, fps) == pytest.approx(back, abs=1e-12)


def test_media_urls_follow_label_studio_storages():
    assert lsf.media_url("s3://fleet/raw/a b.mp4") == "s3://fleet/raw/a b.mp4"
    assert lsf.media_url("https://x.org/v.mp4") == "https://x.org/v.mp4"
    assert lsf.media_url("/data/fleet/cam 1/a.mp4", "/data") == (
        "/data/local-files/?d=fleet/cam%201/a.mp4"
    )
    assert lsf.media_url("file:///srv/v/a.mp4", "/srv") == "/data/local-files/?d=v/a.mp4"
    assert lsf.media_url("/srv/v/a.mp4") == "/data/local-files/?d=srv/v/a.mp4"
    with pytest.raises(ValueError, match="not under the local files root"):
        lsf.media_url("/elsewhere/a.mp4", "/srv")


def test_label_config_is_a_video_timeline_with_the_three_labels():
    root = ET.fromstring(lsf.label_config())
    video, timeline = root.find("Video"), root.find("TimelineLabels")
    assert video.get("value") == "$video" and video.get("frameRate") == "$fps"
    assert timeline.get("toName") == video.get("name") == lsf.TO_NAME
    assert timeline.get("name") == lsf.FROM_NAME
    assert [lab.get("value") for lab in timeline] == ["near_miss", "collision", "normal"]


def test_a_task_holds_the_video_and_its_events_as_frames():
    video = {"video": "/srv/v/a.mp4", "fps": 10.0, "duration_s": 6.0, "partition": "2026-01-02"}
    spans = [{"start_s": 1.0, "end_s": 2.05, "score": 0.7}, {"start_s": 4.0, "end_s": 4.5,
             "score": 0.9, "label": "collision"}]  # fmt: skip
    task = lsf.video_task(video, spans, "/srv", "2026-01-02/v1")
    assert task["data"] == {
        "video": "/data/local-files/?d=v/a.mp4",
        "fps": 10.0,
        "source": "/srv/v/a.mp4",
        "partition": "2026-01-02",
        "duration_s": 6.0,
    }
    (pred,) = task["predictions"]
    assert pred["model_version"] == "2026-01-02/v1" and pred["score"] == 0.9
    values = [(r["value"]["ranges"], r["value"]["timelinelabels"], r["score"])
              for r in pred["result"]]  # fmt: skip
    assert values == [
        ([{"start": 11, "end": 21}], ["near_miss"], 0.7),
        ([{"start": 41, "end": 45}], ["collision"], 0.9),
    ]
    assert {(r["from_name"], r["to_name"], r["type"]) for r in pred["result"]} == {
        ("events", "video", "timelinelabels")
    }


def _result(start: int, end: int, label: str) -> dict:
    value = {"ranges": [{"start": start, "end": end}], "timelinelabels": [label]}
    return {"from_name": "events", "to_name": "video", "type": "timelinelabels", "value": value}


def test_export_rows_take_each_tasks_review():
    data = {"source": "s3://f/a.mp4", "fps": 8.0, "duration_s": 6.0}
    tasks = [
        {  # the latest annotation wins over an older one; a skipped one never counts
            "id": 1,
            "data": data,
            "annotations": [
                {
                    "id": 1,
                    "updated_at": "2026-01-01T10:00:00Z",
                    "result": [_result(1, 8, "near_miss")],
                },
                {
                    "id": 2,
                    "updated_at": "2026-01-01T11:00:00Z",
                    "result": [_result(13, 24, "near_miss"), _result(41, 44, "collision")],
                },
                {
                    "id": 3,
                    "updated_at": "2026-01-02T11:00:00Z",
                    "was_cancelled": True,
                    "result": [_result(2, 3, "collision")],
                },
            ],
        },
        {  # ground truth wins over a later one; a reviewed video without spans is all normal
            "id": 2,
            "data": {**data, "source": "s3://f/b.mp4"},
            "annotations": [
                {"id": 4, "ground_truth": True, "updated_at": "2026-01-01T00:00:00Z", "result": []},
                {
                    "id": 5,
                    "updated_at": "2026-01-03T00:00:00Z",
                    "result": [_result(1, 2, "near_miss")],
                },
            ],
        },
        {"id": 3, "data": {**data, "source": "s3://f/c.mp4"}, "annotations": []},  # not reviewed
    ]
    rows = lsf.export_rows(tasks)
    assert rows == [
        LabelRow("s3://f/a.mp4", 0.0, 6.0, "normal"),
        LabelRow("s3://f/a.mp4", 1.5, 3.0, "near_miss"),
        LabelRow("s3://f/a.mp4", 5.0, 5.5, "collision"),
        LabelRow("s3://f/b.mp4", 0.0, 6.0, "normal"),
    ]
    assert parse_labels(lsf.labels_csv(rows)) == rows  # the CSV fit and eval read


def test_bad_exports_are_label_errors():
    with pytest.raises(LabelError, match="list of tasks"):
        lsf.export_rows({"tasks": []})  # type: ignore[arg-type]
    reviewed = {"annotations": [{"id": 1, "result": [_result(1, 2, "near_miss")]}]}
    with pytest.raises(LabelError, match="lacks source, fps or duration_s"):
        lsf.export_rows([{"id": 7, "data": {"video": "x"}, **reviewed}])
    data = {"source": "a.mp4", "fps": 8.0, "duration_s": 6.0}
    with pytest.raises(LabelError, match="unknown label 'crash'"):
        lsf.export_rows(
            [{"id": 8, "data": data, "annotations": [{"result": [_result(1, 2, "crash")]}]}]
        )
