"""Frame and event metrics: hand-worked cases and brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.video.metrics import (
    VideoEval,
    average_precision,
    evaluate,
    match_events,
    roc_auc,
    temporal_iou,
)

NAMES = [
    "frame_auc",
    "frame_ap",
    "event_p_at_0.3",
    "event_r_at_0.3",
    "event_f1_at_0.3",
    "event_p_at_0.5",
    "event_r_at_0.5",
    "event_f1_at_0.5",
    "false_alarms_per_hour",
]


def brute_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y], s[~y]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def brute_ap(y: np.ndarray, s: np.ndarray) -> float:
    ap, prev_recall = 0.0, 0.0
    for thr in sorted(set(s.tolist()), reverse=True):
        chosen = s >= thr
        recall = (chosen & y).sum() / y.sum()
        ap += (recall - prev_recall) * (chosen & y).sum() / chosen.sum()
        prev_recall = recall
    return ap


def test_auc_ap_hand_worked_with_ties() -> None:
    y = np.array([True, False, True, False])
    s = np.array([0.8, 0.8, 0.4, 0.2])
    # pairs (pos, neg): (.8,.8) 1/2, (.8,.2) 1, (.4,.8) 0, (.4,.2) 1 -> 2.5 / 4
    assert roc_auc(y, s) == pytest.approx(0.625)
    # thresholds .8: P 1/2 R 1/2; .4: P 2/3 R 1; .2: R unchanged
    assert average_precision(y, s) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)


def test_auc_ap_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 60))
        y = rng.random(n) < 0.3
        y[0], y[1] = True, False
        s = np.round(rng.random(n) + 0.5 * y, 1)  # rounding makes many ties
        assert roc_auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)
        assert average_precision(y, s) == pytest.approx(brute_ap(y, s), abs=1e-12)


def test_auc_ap_degenerate() -> None:
    assert math.isnan(roc_auc(np.array([True, True]), np.array([0.1, 0.2])))
    assert math.isnan(average_precision(np.array([False, False]), np.array([0.1, 0.2])))
    assert average_precision(np.array([True, True]), np.array([0.1, 0.2])) == 1.0
    assert roc_auc(np.array([True, False]), np.array([0.5, 0.5])) == 0.5


def test_temporal_iou() -> None:
    assert temporal_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert temporal_iou((0, 1), (1, 2)) == 0.0
    assert temporal_iou((2, 4), (0, 10)) == pytest.approx(0.2)


def test_match_greedy_and_tie_breaks() -> None:
    truth = [(0.0, 10.0), (20.0, 30.0)]
    preds = [(0.0, 3.5), (6.0, 10.0), (21.0, 29.0), (40.0, 45.0)]  # IoU .35, .4, .8, 0
    m3 = match_events(preds, truth, 0.3)
    assert [(i, j) for i, j, _ in m3] == [(2, 1), (1, 0)]  # (0, 0) loses to the .4 pair
    assert [(i, j) for i, j, _ in match_events(preds, truth, 0.5)] == [(2, 1)]
    # equal IoU (8 / 12 both): the earlier prediction wins; then the earlier span
    assert match_events([(12.0, 22.0), (8.0, 18.0)], [(10.0, 20.0)], 0.3)[0][:2] == (1, 0)
    assert match_events([(10.0, 20.0)], [(12.0, 22.0), (8.0, 18.0)], 0.3)[0][:2] == (0, 1)
    assert match_events([], truth, 0.3) == [] and match_events(preds, [], 0.3) == []


def test_evaluate_hand_worked() -> None:
    a = VideoEval(
        "a.mp4",
        100.0,
        spans=[(0.0, 10.0), (20.0, 30.0)],
        predicted=[(0.0, 3.5), (6.0, 10.0), (21.0, 29.0), (40.0, 45.0)],
        frame_truth=np.array([True, False, True, False]),
        frame_scores=np.array([0.8, 0.8, 0.4, 0.2]),
    )
    quiet = VideoEval(  # no positives: its one prediction is a false alarm
        "b.mp4", 360.0, spans=[], predicted=[(1.0, 2.0)],
        frame_truth=np.array([False, False]), frame_scores=np.array([0.9, 0.1]),
    )  # fmt: skip
    missed = VideoEval("c.mp4", 20.0, spans=[(5.0, 10.0)], predicted=[])  # empty predictions
    summary, rows = evaluate([a, quiet, missed])
    assert list(summary) == NAMES
    ra, rb, rc = rows
    assert (ra["event_p_at_0.3"], ra["event_r_at_0.3"], ra["event_f1_at_0.3"]) == (0.5, 1, 4 / 6)
    assert (ra["event_p_at_0.5"], ra["event_r_at_0.5"]) == (0.25, 0.5)
    assert ra["event_f1_at_0.5"] == pytest.approx(2 / 6)
    # only (40, 45) has IoU < .3 with every span; 80 s of negative time
    assert ra["false_alarms"] == 1 and ra["false_alarms_per_hour"] == pytest.approx(45.0)
    assert ra["frame_auc"] == pytest.approx(0.625)
    assert rb["event_p_at_0.3"] == 0.0 and math.isnan(rb["event_r_at_0.3"])
    assert rb["event_f1_at_0.3"] == 0.0 and rb["false_alarms_per_hour"] == pytest.approx(10.0)
    assert math.isnan(rb["frame_auc"]) and math.isnan(rb["frame_ap"])
    assert math.isnan(rc["event_p_at_0.5"]) and rc["event_r_at_0.5"] == 0.0
    assert rc["event_f1_at_0.5"] == 0.0 and rc["false_alarms_per_hour"] == 0.0
    # micro totals: 5 predictions, 3 spans; matched 2 at .3, 1 at .5; 2 false alarms in
    # (80 + 360 + 15) s of negative time; frames pooled (6 frames)
    assert summary["event_p_at_0.3"] == 2 / 5 and summary["event_r_at_0.3"] == 2 / 3
    assert summary["event_f1_at_0.5"] == pytest.approx(2 / 8)
    assert summary["false_alarms_per_hour"] == pytest.approx(2 / (455 / 3600))
    y = np.array([True, False, True, False, False, False])
    s = np.array([0.8, 0.8, 0.4, 0.2, 0.9, 0.1])
    assert summary["frame_auc"] == pytest.approx(brute_auc(y, s))
    assert summary["frame_ap"] == pytest.approx(brute_ap(y, s))


def test_evaluate_overlapping_spans_and_empty() -> None:
    # spans past the end of the video or overlapping count once against negative time
    v = VideoEval("v", 3600.0, spans=[(0.0, 1800.0), (900.0, 2700.0)], predicted=[(3000, 3010)])
    _, rows = evaluate([v])
    assert rows[0]["negative_s"] == pytest.approx(900.0)
    assert rows[0]["false_alarms_per_hour"] == pytest.approx(4.0)
    summary, rows = evaluate([])
    assert rows == [] and all(math.isnan(summary[k]) for k in NAMES)
    with pytest.raises(ValueError, match="2 frame labels but 1 scores"):
        evaluate([VideoEval("x", 1.0, [], [], np.zeros(2, bool), np.zeros(1))])
