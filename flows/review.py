"""`curate export labelstudio|fiftyone` and `curate import labelstudio`: the review loop's
hand-over to the tools reviewers use, from what a run published (or what `curate nearmiss
suggest` chose), and back to the labels CSV that `nearmiss fit` and `eval` read."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import polars as pl

import clip_curate as cc
from tasks.io import storage
from tasks.review import ReviewExportError
from tasks.review import labelstudio as lsf
from tasks.video.labels import LabelError

logger = logging.getLogger(__name__)


def _ok_videos(ds: cc.Dataset, start: str | None, end: str | None) -> pl.DataFrame:
    videos = ds.videos(start, end).collect()
    if videos.is_empty():
        raise ReviewExportError(f"{ds.uri}: no published video partition in the range")
    return videos.filter(pl.col("status") == "ok").sort("partition", "video")


def labelstudio_tasks(
    uri: str, start: str | None, end: str | None, local_root: str
) -> list[dict[str, Any]]:
    """One task per ok video of the published partitions, its events as the prediction."""
    ds = cc.open_dataset(uri)
    versions = {p.name: p.version for p in ds.partitions("video", start, end)}
    events = ds.events(start, end).collect()
    tasks = []
    for video in _ok_videos(ds, start, end).iter_rows(named=True):
        part = video["partition"]
        mine = events.filter((pl.col("partition") == part) & (pl.col("video") == video["video"]))
        spans = [
            {"start_s": e["start_s"], "end_s": e["end_s"], "score": e["peak_score"]}
            for e in mine.sort("start_s").iter_rows(named=True)
        ]
        extra = {"event_ids": mine.sort("start_s")["event_id"].to_list()}
        tasks.append(_task(video, spans, local_root, f"{part}/{versions.get(part)}", extra))
    return tasks


def suggested_tasks(review: str, local_root: str) -> list[dict[str, Any]]:
    """One task per video of `review.parquet` (`curate nearmiss suggest`), exactly its
    suggested spans as the prediction, in the order of their best rank."""
    table = storage.read_parquet(review)
    if table.is_empty():
        raise ReviewExportError(f"{review}: no suggestion to export")
    tasks = []
    order = table.group_by("partition", "video").agg(pl.col("rank").min()).sort("rank")
    for part, url, rank in order.iter_rows():
        rows = table.filter((pl.col("partition") == part) & (pl.col("video") == url)).sort("rank")
        first = rows.row(0, named=True)
        spans = [
            {"start_s": r["start_s"], "end_s": r["end_s"], "score": r["score_max"]}
            for r in rows.iter_rows(named=True)
        ]
        extra = {"review_rank": rank, "review_ranks": rows["rank"].to_list()}
        tasks.append(_task(first, spans, local_root, "curate-suggest", extra))
    return tasks


def _task(video: dict, spans: list, local_root: str, version: str, extra: dict) -> dict:
    try:
        return lsf.video_task(video, spans, local_root, version, extra)
    except ValueError as err:
        raise ReviewExportError(str(err)) from None


def export_labelstudio(
    uri: str | None,
    out: str,
    start: str | None = None,
    end: str | None = None,
    review: str | None = None,
    local_root: str = "/",
) -> dict[str, Any]:
    """DIR/tasks.json (Label Studio's import format) and DIR/config.xml (its labelling
    config); returns what was written."""
    if review:
        tasks = suggested_tasks(review, local_root)
    elif uri:
        tasks = labelstudio_tasks(uri, start, end, local_root)
    else:
        raise ReviewExportError("export labelstudio needs a dataset URI or --from review.parquet")
    text = json.dumps(tasks, indent=1, sort_keys=True, ensure_ascii=False)
    storage.write_bytes(storage.join(out, "tasks.json"), (text + "\n").encode())
    storage.write_bytes(storage.join(out, "config.xml"), lsf.label_config().encode())
    n_spans = sum(len(t["predictions"][0]["result"]) for t in tasks)
    local = sorted({t["data"]["video"] for t in tasks if t["data"]["video"].startswith("/data/")})
    return {"out": out, "tasks": len(tasks), "predicted_spans": n_spans, "local_files": len(local)}


def import_labelstudio(export: str, out: str) -> dict[str, Any]:
    """Label Studio's JSON export -> the labels CSV (`video,start_s,end_s,label`)."""
    try:
        tasks = json.loads(Path(export).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise LabelError(f"{export}: not a readable JSON export ({err})") from None
    rows = lsf.export_rows(tasks, export)
    storage.write_bytes(out, lsf.labels_csv(rows).encode())
    reviewed = len({r.video for r in rows})
    positive = sum(r.positive for r in rows)
    return {
        "out": out,
        "tasks": len(tasks),
        "reviewed_videos": reviewed,
        "positive_spans": positive,
    }


def export_command(args: Any) -> dict[str, Any]:
    """`curate export labelstudio|fiftyone` from its parsed arguments."""
    if args.format == "labelstudio":
        return export_labelstudio(
            args.uri, args.out, args.start, args.end, args.review, args.local_root
        )
    if not args.uri:
        raise ReviewExportError("export fiftyone needs a dataset URI")
    from flows.fiftyone_export import export_fiftyone

    return export_fiftyone(args.uri, args.out, args.start, args.end, args.flow)
