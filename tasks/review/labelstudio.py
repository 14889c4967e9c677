"""Label Studio's own formats for reviewing near misses on a video timeline.

Tasks are Label Studio's JSON import format: `{"data": {...}, "predictions": [...]}`, one
per video, labelled with a `<TimelineLabels>` control on a `<Video>` object. The video
timeline counts frames from 1 at the frame rate the `<Video>` tag is given (`frameRate`,
here `$fps` from each task's data, the video's mean rate): frame `n` is the picture shown
during `[(n - 1) / fps, n / fps)`, and a region's range `{start: a, end: b}` covers frames a
to b, both included. Our events are `[start_s, end_s)` in seconds, so a span becomes the
frames it overlaps and a range becomes `[(a - 1) / fps, b / fps)`; the task carries its fps,
so import converts back with the rate export used, whatever the project config says.

Media are URLs as Label Studio's storages expect them: `s3://`, `gs://`, `http(s)://` as
they are (S3 cloud storage presigns them), local files as `/data/local-files/?d=PATH`
relative to the document root Label Studio serves (`LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`,
with a Local Storage on a folder above the files).

Import reads Label Studio's JSON export (a list of tasks with `annotations`). A task's
review is its ground-truth annotation, else its most recently updated one that was not
skipped (`was_cancelled`); a reviewed video is labelled throughout (the labels rule: time
no positive span covers is negative), so it gets a `normal` row over its whole duration
besides the spans the reviewer drew, added or moved.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from tasks.video.labels import COLUMNS, NEGATIVE, POSITIVE, LabelError, LabelRow

FROM_NAME, TO_NAME = "events", "video"
LABELS = ("near_miss", "collision", "normal")
LOCAL_FILES = "/data/local-files/?d="
REMOTE_SCHEMES = ("s3", "gs", "azure-blob", "http", "https")
EPS = 1e-6  # seconds * fps: float noise never moves a boundary to the next frame


def label_config(labels: Sequence[str] = LABELS) -> str:
    """The labelling config XML: a video and its timeline labels (rate from `$fps`)."""
    choices = "\n".join(f'    <Label value="{name}"/>' for name in labels)
    return (
        "<View>\n"
        f'  <Video name="{TO_NAME}" value="$video" frameRate="$fps" timelineHeight="120"/>\n'
        f'  <TimelineLabels name="{FROM_NAME}" toName="{TO_NAME}">\n'
        f"{choices}\n"
        "  </TimelineLabels>\n"
        "</View>\n"
    )


def span_to_frames(start_s: float, end_s: float, fps: float) -> tuple[int, int]:
    """The 1-based frames `[a, b]` (both included) that `[start_s, end_s)` overlaps."""
    first = math.floor(start_s * fps + EPS) + 1
    last = math.ceil(end_s * fps - EPS)
    return first, max(first, last)


def frames_to_span(first: float, last: float, fps: float) -> tuple[float, float]:
    """`[start_s, end_s)` of the 1-based frames `first..last` (both included)."""
    first, last = sorted((first, last))
    return (first - 1) / fps, last / fps


def media_url(url: str, local_root: str = "/") -> str:
    """How a Label Studio task names the video `url` (see the module docstring)."""
    parts = urlsplit(url)
    if parts.scheme in REMOTE_SCHEMES:
        return url
    path = unquote(parts.path) if parts.scheme == "file" else url
    root = local_root.rstrip("/") + "/"
    if not path.startswith(root):
        raise ValueError(
            f"{url} is not under the local files root {local_root} (set --local-root to the "
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT Label Studio serves)"
        )
    return LOCAL_FILES + quote(path[len(root) :], safe="/")


def timeline_result(start_s: float, end_s: float, fps: float, label: str) -> dict[str, Any]:
    first, last = span_to_frames(start_s, end_s, fps)
    return {
        "from_name": FROM_NAME,
        "to_name": TO_NAME,
        "type": "timelinelabels",
        "value": {"ranges": [{"start": first, "end": last}], "timelinelabels": [label]},
    }


def video_task(
    video: Mapping[str, Any],
    spans: Iterable[Mapping[str, Any]],
    local_root: str,
    model_version: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One task: the video (a videos.parquet row plus `partition`) and its spans
    (`start_s`, `end_s`, `score`, optional `label`) as one prediction."""
    fps = float(video["fps"])
    results, scores = [], []
    for s in spans:
        result = timeline_result(s["start_s"], s["end_s"], fps, s.get("label") or "near_miss")
        result["score"] = float(s["score"])
        results.append(result)
        scores.append(float(s["score"]))
    data = {
        "video": media_url(video["video"], local_root),
        "fps": fps,
        "source": video["video"],
        "partition": video.get("partition"),
        "duration_s": float(video["duration_s"]),
        **(extra or {}),
    }
    prediction = {"model_version": model_version, "score": max(scores, default=0.0)}
    return {"data": data, "predictions": [{**prediction, "result": results}]}


def chosen_annotation(task: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The task's review: its ground truth, else the latest annotation not skipped."""
    done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not done:
        return None
    return max(done, key=_review_order)


def _review_order(a: Mapping[str, Any]) -> tuple[bool, str, int]:
    return bool(a.get("ground_truth")), a.get("updated_at") or "", a.get("id") or 0


def task_rows(task: Mapping[str, Any], where: str) -> list[LabelRow]:
    """The labels rows of one exported task (none when it was not reviewed)."""
    annotation = chosen_annotation(task)
    if annotation is None:
        return []
    data = task.get("data") or {}
    try:
        video, fps, duration = data["source"], float(data["fps"]), float(data["duration_s"])
    except (KeyError, TypeError, ValueError):
        raise LabelError(f"{where}: task data lacks source, fps or duration_s") from None
    rows = [LabelRow(video, 0.0, duration, "normal")]
    for result in annotation.get("result") or []:
        if result.get("type") != "timelinelabels":
            continue
        value = result.get("value") or {}
        for label in value.get("timelinelabels") or []:
            if label not in POSITIVE | NEGATIVE:
                raise LabelError(f"{where}: unknown label {label!r}")
            for r in value.get("ranges") or []:
                start, end = frames_to_span(r["start"], r["end"], fps)
                rows.append(LabelRow(video, round(start, 6), round(end, 6), label))
    return rows


def export_rows(tasks: Sequence[Mapping[str, Any]], source: str = "export") -> list[LabelRow]:
    """Labels rows of every reviewed task of a Label Studio JSON export, in task order."""
    if not isinstance(tasks, list):
        raise LabelError(f"{source}: a Label Studio JSON export is a list of tasks")
    rows: list[LabelRow] = []
    for i, task in enumerate(tasks):
        rows += task_rows(task, f"{source} task {task.get('id', i)}")
    return rows


def labels_csv(rows: Iterable[LabelRow]) -> str:
    """The labels CSV `fit` and `eval` read."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([r.video, _num(r.start_s), _num(r.end_s), r.label])
    return buf.getvalue()


def _num(x: float) -> str:
    return repr(float(x))
