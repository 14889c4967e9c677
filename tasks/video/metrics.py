"""Evaluation of near-miss scores and events against labels: frame- and event-level.

Frame level (pooled over the frames of all labelled videos):

- `frame_auc`: ROC-AUC as the Mann-Whitney statistic, ties counted half (average ranks);
- `frame_ap`: average precision as scikit-learn defines it, `sum_n (R_n - R_{n-1}) P_n` over
  the distinct score thresholds, high to low (tied scores enter together), with R_0 = 0.
  AUC is NaN when the frames hold only one class, AP when they hold no positive.

Event level, per video: temporal IoU of `[start, end)` intervals; predictions and positive
spans are matched one-to-one, greedily by IoU (highest first; ties: earlier prediction,
then earlier span), only pairs with IoU >= the threshold. Over all videos (micro: counts
summed), precision = matched / predictions, recall = matched / spans (NaN when there are
none), F1 = 2 matched / (predictions + spans), which is 0 with no predictions but positives.
A false alarm is a prediction whose IoU with every positive span of its video is < 0.3 (a
duplicate near a matched event is not one); `false_alarms_per_hour` divides their count by
the hours of labelled video not covered by positive spans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Span = tuple[float, float]
IOU_THRESHOLDS = (0.3, 0.5)
FALSE_ALARM_IOU = 0.3


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a random positive > a random negative), ties counting 1/2."""
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = _average_ranks(s)[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Step-wise area under the precision-recall curve (no interpolation)."""
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # end of each tie group
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1.0)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def temporal_iou(a: Span, b: Span) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def match_events(
    predicted: Sequence[Span], truth: Sequence[Span], min_iou: float
) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matches `(prediction index, span index, iou)` with iou >= min_iou."""
    pairs = [
        (iou, p[0], t[0], i, j)
        for i, p in enumerate(predicted)
        for j, t in enumerate(truth)
        if (iou := temporal_iou(p, t)) >= min_iou and iou > 0
    ]
    pairs.sort(key=lambda q: (-q[0], q[1], q[2], q[3], q[4]))
    used_p: set[int] = set()
    used_t: set[int] = set()
    matches: list[tuple[int, int, float]] = []
    for iou, _, _, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            matches.append((i, j, iou))
    return matches


def _uncovered_s(spans: Sequence[Span], duration_s: float) -> float:
    """Seconds of [0, duration_s) that no span covers."""
    covered, reach = 0.0, 0.0
    for start, end in sorted(spans):
        start, end = max(start, reach, 0.0), min(end, duration_s)
        if end > start:
            covered += end - start
        reach = max(reach, end)
    return max(0.0, duration_s - covered)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else float("nan")


@dataclass
class VideoEval:
    """One labelled video: its length, positive spans (within the video), detected events
    and frame scores."""

    video: str  # the input's URL
    duration_s: float
    spans: list[Span]
    predicted: list[Span]
    frame_truth: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    frame_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    spans_clipped: int = 0  # labelled spans that ran past the video's end (cut or dropped)


def _event_counts(v: VideoEval) -> dict[str, float]:
    counts: dict[str, float] = {"n_pred": len(v.predicted), "n_spans": len(v.spans)}
    for thr in IOU_THRESHOLDS:
        counts[f"matched_at_{thr}"] = len(match_events(v.predicted, v.spans, thr))
    counts["false_alarms"] = sum(
        all(temporal_iou(p, t) < FALSE_ALARM_IOU for t in v.spans) for p in v.predicted
    )
    counts["negative_s"] = _uncovered_s(v.spans, v.duration_s)
    counts["label_spans_clipped"] = v.spans_clipped
    return counts


def _rates(c: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for thr in IOU_THRESHOLDS:
        m = c[f"matched_at_{thr}"]
        out[f"event_p_at_{thr}"] = _ratio(m, c["n_pred"])
        out[f"event_r_at_{thr}"] = _ratio(m, c["n_spans"])
        out[f"event_f1_at_{thr}"] = _ratio(2 * m, c["n_pred"] + c["n_spans"])
    out["false_alarms_per_hour"] = _ratio(c["false_alarms"], c["negative_s"] / 3600.0)
    return out


def evaluate(videos: Sequence[VideoEval]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(summary, one row per video) with the metric names listed in the module docstring.

    Rows also carry the raw counts (`n_pred`, `n_spans`, `matched_at_0.3`, ...,
    `false_alarms`, `negative_s`, `n_frames`, `label_spans_clipped`), so summaries can be
    re-aggregated.
    """
    rows: list[dict[str, Any]] = []
    total: dict[str, float] = {}
    for v in videos:
        y, s = np.asarray(v.frame_truth, dtype=bool), np.asarray(v.frame_scores, np.float64)
        if y.shape != s.shape:
            raise ValueError(f"{v.video}: {y.shape[0]} frame labels but {s.shape[0]} scores")
        counts = _event_counts(v)
        for key, value in counts.items():
            total[key] = total.get(key, 0.0) + value
        row: dict[str, Any] = {"video": v.video, "n_frames": int(y.size)}
        row.update(frame_auc=roc_auc(y, s), frame_ap=average_precision(y, s))
        row.update(_rates(counts))
        row.update(counts)
        rows.append(row)
    ys = [np.asarray(v.frame_truth, dtype=bool) for v in videos]
    ss = [np.asarray(v.frame_scores, dtype=np.float64) for v in videos]
    y_all = np.concatenate(ys) if ys else np.zeros(0, dtype=bool)
    s_all = np.concatenate(ss) if ss else np.zeros(0)
    summary = {"frame_auc": roc_auc(y_all, s_all), "frame_ap": average_precision(y_all, s_all)}
    if not total:
        total = {k: 0.0 for k in ("n_pred", "n_spans", "false_alarms", "negative_s")}
        total["label_spans_clipped"] = 0.0
        total.update({f"matched_at_{thr}": 0.0 for thr in IOU_THRESHOLDS})
    summary.update(_rates(total))
    return summary, rows
