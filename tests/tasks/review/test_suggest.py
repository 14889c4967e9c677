"""Choosing spans to review: uncertainty, windows, and k-center greedy against a brute
force written out here."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tasks.review import suggest as sg


def test_uncertainty_is_one_at_the_threshold_and_zero_at_the_far_end():
    s = np.array([0.0, 0.3, 0.6, 0.8, 1.0])
    assert sg.uncertainty(s, 0.6) == pytest.approx([0.0, 0.5, 1.0, 2 / 3, 1 / 3])
    assert sg.uncertainty(s, 0.5) == pytest.approx([0.0, 0.6, 0.8, 0.4, 0.0])


def test_windows_of_a_video_by_hand():
    t = np.arange(8) * 0.5  # 4 s at 2 samples/s, windows of 2 s: frames 0-3, 4-7
    frames = {
        "score": np.array([0.1, 0.55, 0.2, 0.1, 0.9, 0.95, 0.6, 0.7]),
        "p_near_miss": np.array([0.1, 0.5, 0.2, 0.1, 0.2, 0.3, 0.4, 0.5]),
        "p_head": np.array([0.1, 0.6, 0.2, 0.1, 0.9, 0.9, 0.9, 0.9]),
        "usable": np.array([True] * 6 + [False] * 2),  # the last two are OOD
    }
    emb = np.eye(8)[:, :4] + np.eye(8, 4, -4)  # frame i -> axis i % 4
    w = sg.video_windows({"video": "v", "partition": "p"}, t, frames, emb, 4.0, 2.0, 0.6)
    first, second = w.rows
    assert (first["start_s"], first["end_s"], first["frames"]) == (0.0, 2.0, 4)
    assert first["uncertainty"] == pytest.approx(1 - 0.05 / 0.6)  # 0.55
    assert first["disagreement"] == pytest.approx(0.1)
    assert first["priority"] == pytest.approx((1 - 0.05 / 0.6 + 0.1) / 2)
    # OOD frames 6, 7 left out: 0.9 and 0.95 are its frames
    assert second["frames"] == 2 and second["score_max"] == 0.95
    assert second["uncertainty"] == pytest.approx(1 - 0.3 / 0.6)
    assert second["disagreement"] == pytest.approx(0.7)
    assert w.emb[0] == pytest.approx([0.5, 0.5, 0.5, 0.5])
    assert w.emb[1] == pytest.approx([2**-0.5, 2**-0.5, 0, 0])


def brute_k_center(emb, centres, n):
    """Greedy farthest-first written with plain loops (first pick: index 0 without centres)."""
    chosen = [] if len(centres) else [0]
    anchors = [np.asarray(c) for c in centres] + [emb[i] for i in chosen]
    while len(chosen) < n:
        best, best_gap = None, -1.0
        for i, x in enumerate(emb):
            if i in chosen:
                continue
            gap = min(1.0 - float(np.dot(x, a)) for a in anchors)
            if gap > best_gap + 1e-12:
                best, best_gap = i, gap
        chosen.append(best)
        anchors.append(emb[best])
    return chosen


@pytest.mark.parametrize(("seed", "n_centres"), itertools.product(range(4), (0, 3)))
def test_k_center_equals_the_brute_force(seed, n_centres):
    rng = np.random.default_rng(seed)
    emb = sg.unit(rng.normal(size=(30, 5)))
    centres = sg.unit(rng.normal(size=(n_centres, 5))) if n_centres else np.zeros((0, 5))
    priority = np.zeros(30)  # no ties at random: priority never decides
    got = [i for i, _ in sg.k_center(emb, priority, centres, 8)]
    assert got == brute_k_center(emb, centres, 8)
    assert len(set(got)) == 8


def test_select_takes_uncertain_spans_spread_out_and_is_deterministic():
    """Three clusters; the most uncertain candidates all sit in one. The pool (4n) holds
    the top priorities; k-center spreads the picks over the clusters the pool reaches."""
    rows, vecs = [], []
    axes = np.eye(3)
    for k in range(12):
        cluster = 0 if k < 6 else (1 if k < 9 else 2)
        rows.append({"partition": "d", "video": f"v{k:02d}", "start_s": 0.0,
                     "priority": 1.0 - 0.01 * k})  # fmt: skip
        vecs.append(axes[cluster] + 0.01 * k * axes[(cluster + 1) % 3])
    cands = sg.Windows(rows, sg.unit(np.array(vecs)))
    picks = sg.select(cands, np.zeros((0, 3)), 3)
    # v00 first (best); cluster 1 is orthogonal to it (distance 1 for all three: the tie
    # goes to the higher priority, v06); then cluster 2's member least like v00 and v06
    assert [p["video"] for p in picks] == ["v00", "v06", "v09"]  # one per cluster
    assert [p["rank"] for p in picks] == [1, 2, 3]
    assert sg.select(cands, np.zeros((0, 3)), 3) == picks
    # a labelled centre on cluster 0: the first pick leaves that cluster; the pool of n=2 is
    # the 8 best (v00-v07, cluster 2 out of reach), so the second is cluster 0's farthest
    picks = sg.select(cands, sg.unit(axes[:1]), 2)
    assert [p["video"] for p in picks] == ["v06", "v05"]
