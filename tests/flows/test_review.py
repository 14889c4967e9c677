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


def test_fiftyone_video_export_holds_events_as_frames_and_frame_scores(fleet, tmp_path):
    out = tmp_path / "fo"
    args = ["export", "fiftyone", str(fleet.dataset), "--flow", "video", "--out", str(out)]
    assert main(args) == 0
    meta = json.loads((out / "video" / "metadata.json").read_text())
    samples = json.loads((out / "video" / "samples.json").read_text())["samples"]
    videos = published(fleet, "videos.parquet").sort("video")
    frames, events = published(fleet, "frames.parquet"), published(fleet, "events.parquet")
    assert meta["media_type"] == "video" and meta["frame_fields"]["score"].endswith("FloatField")
    assert [s["filepath"] for s in samples] == videos["video"].to_list()
    for s, v in zip(samples, videos.iter_rows(named=True), strict=True):
        assert (s["fps"], s["duration_s"], s["n_frames"]) == (v["fps"], v["duration_s"],
                                                              v["n_frames"])  # fmt: skip
        f = frames.filter(pl.col("video") == v["video"]).sort("t_s")
        doc = json.loads((out / "video" / s["frames"]).read_text())["frames"]
        assert sorted(map(int, doc)) == [i + 1 for i in f["frame_index"]]  # 1-based
        for row in f.iter_rows(named=True):
            got = doc[str(row["frame_index"] + 1)]
            assert (got["t_s"], got["score"], got["p_head"], got["ood_flag"]) == (
                row["t_s"], row["score"], row["p_head"], row["ood_flag"])  # fmt: skip
        ev = events.filter(pl.col("video") == v["video"]).sort("start_s")
        dets = s["events"]["detections"]
        assert [d["event_id"] for d in dets] == ev["event_id"].to_list()
        step = round(v["fps"] / 4)  # 8 fps sampled at 4/s: every other frame
        for d, e in zip(dets, ev.iter_rows(named=True), strict=True):
            first = round(e["start_s"] * v["fps"]) + 1  # a constant-rate video: t * fps
            last = min(round(e["end_s"] * v["fps"]), v["n_frames"])
            assert d["support"] == [first, last] and (last - first + 1) % step == 0
            assert (d["label"], d["confidence"], d["_cls"]) == (
                "near_miss", e["peak_score"], "TemporalDetection")  # fmt: skip
    assert sum(len(s["events"]["detections"]) for s in samples) == events.height >= 2


def test_suggest_picks_uncertain_unlabelled_spans_and_export_takes_exactly_those(
    fleet, tmp_path, capsys
):
    import numpy as np

    from tasks.review.suggest import uncertainty

    args = ["nearmiss", "suggest", "-c", str(fleet.config), "--start", PARTITION]
    args += ["--end", PARTITION, "--n", "3", "--labels", str(fleet.labels)]
    first, second = tmp_path / "r1.parquet", tmp_path / "r2.parquet"
    assert main([*args, "--out", str(first)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["videos_scored"] == 0 and summary["labelled_videos"] == 2
    assert main([*args, "--out", str(second)]) == 0
    review = pl.read_parquet(first)
    assert review.equals(pl.read_parquet(second))  # deterministic
    assert review["rank"].to_list() == [1, 2, 3]
    names = {u.rsplit("/", 1)[1] for u in review["video"]}
    assert names <= {"b.mp4", "d.mp4"}  # never a labelled video
    # each window's figures, recomputed from the frames the flow published with this head
    frames = published(fleet, "frames.parquet")
    thr = 0.6  # video.events.start
    for r in review.iter_rows(named=True):
        f = frames.filter((pl.col("video") == r["video"]) & (pl.col("t_s") >= r["start_s"])
                          & (pl.col("t_s") < r["end_s"]) & ~pl.col("ood_flag"))  # fmt: skip
        s = f["score"].to_numpy().astype(np.float64)
        d = np.abs(f["p_head"].to_numpy() - f["p_near_miss"].to_numpy()).astype(np.float64)
        assert r["frames"] == f.height and r["uncertainty"] == pytest.approx(
            uncertainty(s, thr).max(), abs=1e-6)  # fmt: skip
        assert r["disagreement"] == pytest.approx(d.max(), abs=1e-6)
        assert r["priority"] == pytest.approx((r["uncertainty"] + r["disagreement"]) / 2)
    out = tmp_path / "ls"
    assert main(["export", "labelstudio", "--from", str(first), "--out", str(out)]) == 0
    tasks = json.loads((out / "tasks.json").read_text())
    assert sorted(t["data"]["source"] for t in tasks) == sorted(set(review["video"]))
    ranges = [(t["data"]["source"], r["value"]["ranges"][0])
              for t in tasks for r in t["predictions"][0]["result"]]  # fmt: skip
    spans = sorted((url, (r["start"], r["end"])) for url, r in ranges)
    want = sorted((r["video"], span_to_frames(r["start_s"], r["end_s"], r["fps"]))
                  for r in review.iter_rows(named=True))  # fmt: skip
    assert spans == want


def test_eval_over_review_rounds_fits_a_head_per_round(fleet, tmp_path, capsys):
    """Round k trains on rounds 1..k, a video labelled again taking its latest rows (here
    a.mp4, named by another form of its path); each round equals fit + eval run by hand."""
    import numpy as np

    from tasks.model.heads import read_head_file
    from tests.flows.review_fleet import labels_text

    test = tmp_path / "test.csv"
    test.write_text(labels_text(("b.mp4", "d.mp4")))
    r1, r2, r3 = (tmp_path / f"r{k}.csv" for k in (1, 2, 3))
    r1.write_text(labels_text(("a.mp4",)))
    r2.write_text(labels_text(("c.mp4",)))
    r3.write_text("video,start_s,end_s,label\nin/a.mp4,0,6.0,normal\nin/a.mp4,1.0,3.0,near_miss\n")
    base = ["--labels", str(test), "-c", str(fleet.config), "--partition", PARTITION]
    out = tmp_path / "eval"
    rounds = ["--rounds", str(r1), str(r2), str(r3)]
    assert main(["nearmiss", "eval", *base, *rounds, "--out", str(out)]) == 0
    assert "frame_auc" in capsys.readouterr().out
    doc = json.loads((out / "metrics.json").read_text())
    table = doc["rounds"]
    assert [r["round"] for r in table] == [0, 1, 2, 3]
    assert table[0]["frame_auc"] == doc["zero_shot"]["frame_auc"]
    assert [r["videos"] for r in table[1:]] == [1, 2, 2]
    assert {r["test_overlap"] for r in table[1:]} == {0}
    a = str(fleet.root / "in" / "a.mp4")
    c = str(fleet.root / "in" / "c.mp4")
    by_hand = {  # round -> the training labels written out
        2: labels_text(("a.mp4", "c.mp4")),
        3: f"video,start_s,end_s,label\n{a},0,6.0,normal\n{a},1.0,3.0,near_miss\n"
        f"{c},0,6.0,normal\n",
    }
    for k, text in by_hand.items():
        (tmp_path / f"hand{k}.csv").write_text(text)
        head = tmp_path / f"hand{k}.safetensors"
        fit = ["nearmiss", "fit", "--labels", str(tmp_path / f"hand{k}.csv"), "-c",
               str(fleet.config), "--partition", PARTITION, "--out", str(head)]  # fmt: skip
        assert main(fit) == 0
        fitted = json.loads(capsys.readouterr().out)
        assert (table[k]["frames"], table[k]["alpha"]) == (fitted["frames"], fitted["alpha"])
        mine_head = read_head_file(out / "rounds" / str(k) / "head.safetensors")
        hand_head = read_head_file(head)  # (the bytes differ: safetensors orders metadata
        assert mine_head[1] == hand_head[1]  # keys at random, see the report)
        assert all(np.array_equal(mine_head[0][n], hand_head[0][n]) for n in hand_head[0])
        evaluated = tmp_path / f"eval{k}"
        assert main(["nearmiss", "eval", *base, "--head", str(head), "--out", str(evaluated)]) == 0
        capsys.readouterr()
        mine = json.loads((evaluated / "metrics.json").read_text())["with_head"]
        assert {m: table[k][m] for m in ("frame_auc", "frame_ap")} == {
            m: mine[m] for m in ("frame_auc", "frame_ap")}  # fmt: skip
    report = (out / "report.md").read_text()
    assert "## Review rounds" in report
    assert report.count(f"`{r3}`") == 1 and "| 0 | `zero-shot` |" in report
