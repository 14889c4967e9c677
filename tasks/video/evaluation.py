"""`curate nearmiss eval`: the flow's frames and events against labels, as JSON and a report.

Input is what a run would publish (`frames.parquet`'s `score`, `events.parquet`) for the
labelled videos, once zero-shot alone and once with the head; the metrics are those of
`tasks.video.metrics`. Videos are keyed by their full URL (two `cam.mp4` in two folders
are two videos); the report shows the shortest path ends that tell them apart. A labelled
span that runs past its video's end is cut there, one that starts after it is dropped,
each with a warning and counted (`label_spans_clipped`): it cannot be detected, and
counting it as missed would lower the recall silently. A labelled video that was
quarantined has no frames: it is listed, not scored. NaN (a metric without its
denominator) is written as null.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from schemas.tables import SCORED_VIDEO
from tasks.publish.report import md_table, new_figure, save_figure, write_text
from tasks.video.labels import LabelRow, clip_spans, frame_labels, positive_spans
from tasks.video.metrics import VideoEval, evaluate
from tasks.video.report import ood_spans, short_names

logger = logging.getLogger(__name__)

METRICS = (
    "frame_auc",
    "frame_ap",
    "event_p_at_0.3",
    "event_r_at_0.3",
    "event_f1_at_0.3",
    "event_p_at_0.5",
    "event_r_at_0.5",
    "event_f1_at_0.5",
    "false_alarms_per_hour",
)
# zero-shot (+ motion) alone, with the head, with the telemetry cue, with both
VARIANTS = ("zero_shot", "with_head", "with_telemetry", "with_head_telemetry")
MAX_TIMELINES = 50
Tables = tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]  # videos, frames, events
Evals = list[tuple[str, VideoEval]]  # (input URL, its evaluation)


def video_evals(tables: Tables, labels: Sequence[LabelRow], sample_fps: float) -> Evals:
    """(URL, `VideoEval`) per ok video the labels name, in the videos table's order."""
    videos, frames, events = tables
    out: Evals = []
    scored = videos.filter(pl.col("status").cast(pl.String).is_in(SCORED_VIDEO))
    for row in scored.iter_rows(named=True):
        url, duration = row["video"], float(row["duration_s"])
        named = positive_spans(labels, url)
        if named is None:
            continue
        spans, clipped = clip_spans(named, duration)
        if clipped:
            logger.warning(
                "labels: %d span(s) past the end of %s (%.2fs) cut", clipped, url, duration
            )
        f = frames.filter(pl.col("video") == url).sort("t_s")
        rate = min(sample_fps, row["fps"])
        truth = np.asarray(frame_labels(labels, url, f["t_s"].to_numpy(), 1.0 / rate), bool)
        ev = events.filter(pl.col("video") == url).sort("start_s")
        predicted = [(float(s), float(e)) for s, e in ev.select("start_s", "end_s").iter_rows()]
        scores = f["score"].to_numpy().astype(np.float64)
        out.append((url, VideoEval(url, duration, spans, predicted, truth, scores, clipped)))
    return out


def clean(value: Any) -> Any:
    """JSON-safe: NaN and inf become null, numpy scalars plain numbers."""
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def metrics_document(evals: Mapping[str, Evals | None], extra: Mapping[str, Any]) -> dict[str, Any]:
    """metrics.json: a summary per variant (`VARIANTS`; all null for a variant that does
    not apply: no head, no telemetry), per-video rows under `per_video`, and `extra` (what
    was evaluated)."""
    doc: dict[str, Any] = {}
    per_video: dict[str, Any] = {}
    for variant in VARIANTS:
        videos = evals.get(variant)
        if videos is None:
            doc[variant] = dict.fromkeys(METRICS)
            continue
        summary, rows = evaluate([v for _, v in videos])
        doc[variant] = {k: summary[k] for k in METRICS}
        per_video[variant] = rows
    return clean({**doc, "per_video": per_video, **extra})


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


def summary_rows(doc: Mapping[str, Any]) -> list[list[str]]:
    return [[m, *(_fmt(doc[v][m]) for v in VARIANTS)] for m in METRICS]


def text_table(doc: Mapping[str, Any]) -> str:
    """The summary as fixed-width text (what the CLI prints)."""
    rows = [["metric", *VARIANTS], *summary_rows(doc)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def curve_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, ...]:
    """(fpr, tpr, recall, precision) at each distinct threshold, high to low (ties together)."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp = np.cumsum(y)[last].astype(np.float64)
    fp = (last + 1.0) - tp
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.r_[0, fp / n_neg], np.r_[0, tp / n_pos], tp / n_pos, tp / (last + 1.0)


def _plot_curves(evals: Mapping[str, Evals | None], out: str, so: dict | None) -> str:
    fig, _ = new_figure()
    fig.clf()
    fig.set_size_inches(10, 4)
    roc, pr = fig.subplots(1, 2)
    for variant, videos in evals.items():
        if not videos:
            continue
        y = np.concatenate([v.frame_truth for _, v in videos])
        s = np.concatenate([v.frame_scores for _, v in videos])
        if y.any() and (~y).any():
            fpr, tpr, rec, prec = curve_points(y, s)
            roc.plot(fpr, tpr, label=variant)
            pr.step(np.r_[0, rec], np.r_[prec[0], prec], where="post", label=variant)
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="frame ROC")
    pr.set(xlabel="recall", ylabel="precision", title="frame precision-recall")
    for ax in (roc, pr):
        ax.legend(fontsize=7)
    return save_figure(fig, out, "plots/frame_curves.png", so)


def _plot_video(
    name: str, variants: Mapping[str, tuple[pl.DataFrame, list]], spans: list, rel: str,
    out: str, so: dict | None,
) -> str:  # fmt: skip
    fig, ax = new_figure()
    for i, (s, e) in enumerate(spans):
        ax.axvspan(s, e, color="green", alpha=0.2, label="labelled positive" if i == 0 else None)
    for k, (variant, (f, predicted)) in enumerate(variants.items()):
        if k == 0:
            for i, (s, e) in enumerate(ood_spans(f)):
                ax.axvspan(s, e, color="grey", alpha=0.3, label="OOD" if i == 0 else None)
        line = ax.plot(f["t_s"].to_numpy(), f["score"].to_numpy(), label=f"score {variant}")
        for s, e in predicted:
            ax.hlines(1.02 + 0.04 * k, s, e, color=line[0].get_color(), linewidth=4)
    ax.set(xlabel="time (s)", ylabel="score (bars: events)", ylim=(0, 1.1 + 0.04 * k))
    ax.set_title(name, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, out, rel, so)


def write_eval(
    out: str,
    doc: Mapping[str, Any],
    evals: Mapping[str, Evals | None],
    frames: Mapping[str, pl.DataFrame],
    so: dict | None = None,
) -> list[str]:
    """DIR/metrics.json, DIR/report.md and DIR/plots/*.png; the relative paths written."""
    text = json.dumps(doc, indent=2, sort_keys=True, allow_nan=False)
    written = [write_text(out, "metrics.json", text + "\n", so), _plot_curves(evals, out, so)]
    shown = (evals.get("zero_shot") or [])[:MAX_TIMELINES]
    short = short_names([*(r["video"] for rows in doc["per_video"].values() for r in rows),
                         *(doc.get("not_evaluated") or [])])  # fmt: skip
    links: dict[str, str] = {}
    for n, (url, v) in enumerate(shown):
        variants = {}
        for variant, videos in evals.items():
            if videos:
                predicted = dict(videos)[url].predicted
                f = frames[variant].filter(pl.col("video") == url).sort("t_s")
                variants[variant] = (f, predicted)
        title = short.get(url, url)
        links[url] = _plot_video(title, variants, v.spans, f"plots/video_{n}.png", out, so)
    written += list(links.values())
    written.append(write_text(out, "report.md", _markdown(doc, links, short), so))
    return written


def _markdown(doc: Mapping[str, Any], links: Mapping[str, str], short: Mapping[str, str]) -> str:
    rows = []
    for variant, videos in doc["per_video"].items():
        for r in videos:
            link = f"[plot]({links[r['video']]})" if r["video"] in links else ""
            cells = [r["frame_auc"], r["frame_ap"], r["event_f1_at_0.3"], r["event_f1_at_0.5"]]
            counts = [r["n_frames"], r["n_spans"], r["n_pred"], r["false_alarms"]]
            name = short.get(r["video"], r["video"])
            rows.append([name, variant, *counts, *(_fmt(c) for c in cells), link])
    header = ["video", "variant", "frames", "spans", "events", "false alarms"]
    header += ["frame AUC", "frame AP", "F1@0.3", "F1@0.5", "timeline"]
    parts = [
        f"# Near-miss evaluation: {doc.get('dataset')} / {doc.get('partition')}",
        f"Labels `{doc.get('labels')}`: {doc.get('videos_evaluated')} video(s) evaluated, "
        f"{doc.get('positive_spans')} positive span(s); model `{doc.get('model_name')}`; "
        f"head `{(doc.get('head') or {}).get('path', 'none')}`.",
        "Frame metrics pool every sampled frame of the labelled videos (`frames.parquet`'s "
        "`score`); events are matched one-to-one by temporal IoU; false alarms per hour of "
        "video not covered by a positive span. Random or tiny model weights make these "
        "numbers meaningless.",
        "## Summary",
        md_table(["metric", *VARIANTS], summary_rows(doc)),
        "![frame ROC and precision-recall](plots/frame_curves.png)",
        "## Per video",
        md_table(header, rows) if rows else "No labelled video could be evaluated.",
    ]
    missing = doc.get("not_evaluated") or []
    if missing:
        parts += ["## Not evaluated", ", ".join(f"`{short.get(m, m)}`" for m in missing)]
    unknown = doc.get("unknown_videos") or []
    if unknown:
        parts += ["## Labelled videos not among the inputs", ", ".join(f"`{u}`" for u in unknown)]
    clipped = doc.get("label_spans_clipped") or 0
    if clipped:
        parts.append(f"{clipped} labelled span(s) ran past their video's end and were cut there.")
    return "\n\n".join(parts) + "\n"
