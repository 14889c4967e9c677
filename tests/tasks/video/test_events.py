"""Event detection: each rule against hand-worked score series, plus invariants."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.config import EventsConfig
from tasks.video.events import Event, clip_window, detect_events, hysteresis, smooth

FPS = 4.0  # samples per second: sample k is at k / 4 s, exact in binary floating point


def cfg(**kw: float) -> EventsConfig:
    """Identity smoothing and every rule off, unless a test turns it on."""
    base = dict(
        median_window=1,
        ema_alpha=1.0,
        start=0.6,
        stop=0.4,
        min_duration_s=0.0,
        merge_gap_s=0.0,
        max_duration_s=100.0,
        nms_window_s=0.0,
    )
    return EventsConfig(**{**base, **kw})


def detect(scores: list[float], **kw: float) -> list[Event]:
    s = np.array(scores, dtype=np.float64)
    return detect_events(np.arange(len(s)) / FPS, s, cfg(**kw), FPS)


def test_smooth_median_removes_spike_and_keeps_edges() -> None:
    assert smooth(np.array([0, 0, 1, 0, 0.0]), 3, 1.0).tolist() == [0, 0, 0, 0, 0]
    assert smooth(np.array([1, 0, 0.0]), 3, 1.0).tolist() == [1, 0, 0]  # edge repeated
    assert smooth(np.array([0, 1, 1, 1, 0.0]), 3, 1.0).tolist() == [0, 1, 1, 1, 0]
    # even window: the sample before and the sample itself
    assert smooth(np.array([0, 1, 3.0]), 2, 1.0).tolist() == [0, 0.5, 2.0]


def test_smooth_ema_is_causal() -> None:
    out = smooth(np.array([0, 1, 1, 1.0]), 1, 0.5)
    assert out.tolist() == [0, 0.5, 0.75, 0.875]


def test_smooth_matches_naive_loop() -> None:
    rng = np.random.default_rng(0)
    x = rng.random(50)
    w, a = 5, 0.3
    padded = [x[0]] * 2 + list(x) + [x[-1]] * 2
    med = [float(np.median(padded[i : i + w])) for i in range(len(x))]
    ema, acc = [], med[0]
    for v in med:
        acc = a * v + (1 - a) * acc
        ema.append(acc)
    np.testing.assert_allclose(smooth(x, w, a), ema, rtol=0, atol=1e-12)


def test_hysteresis_starts_at_start_and_stops_below_stop() -> None:
    s = np.array([0.0, 0.6, 0.5, 0.4, 0.39, 0.5, 0.59, 0.65, 0.2])
    # 0.6 == start opens; 0.4 == stop continues; 0.39 closes; 0.5/0.59 do not reopen
    assert hysteresis(s, 0.6, 0.4) == [(1, 3), (7, 7)]


def test_event_times_peak_and_open_end() -> None:
    events = detect([0.0, 0.7, 0.9, 0.5, 0.1, 0.0, 0.8, 0.8])
    assert events == [
        Event(start_s=0.25, end_s=1.0, peak_s=0.5, peak_score=0.9),
        Event(start_s=1.5, end_s=2.0, peak_s=1.5, peak_score=0.8),  # still open: to last + dt
    ]


def test_min_duration_drops_short_events_at_exact_boundary() -> None:
    scores = [0.0, 0.9, 0.0, 0.0, 0.9, 0.9, 0.0, 0.9, 0.9, 0.9]
    events = detect(scores, min_duration_s=0.5)
    assert [(e.start_s, e.end_s) for e in events] == [(1.0, 1.5), (1.75, 2.5)]


def test_merge_joins_gaps_shorter_than_merge_gap() -> None:
    scores = [0.0, 0.9, 0.9, 0.0, 0.0, 0.7, 0.7, 0.0]  # runs [0.25, 0.75) and [1.25, 1.75)
    assert len(detect(scores, merge_gap_s=0.5)) == 2  # gap 0.5 is not shorter than 0.5
    merged = detect(scores, merge_gap_s=0.75)
    assert merged == [Event(0.25, 1.75, 0.25, 0.9)]


def test_merge_happens_before_min_duration() -> None:
    scores = [0.9, 0.0, 0.9, 0.0, 0.9, 0.0]  # three 0.25 s blips, 0.25 s apart
    assert detect(scores, min_duration_s=1.0) == []
    assert detect(scores, min_duration_s=1.0, merge_gap_s=0.5) == [Event(0.0, 1.25, 0.0, 0.9)]


@pytest.mark.parametrize(
    ("peak", "expected"),
    [(30, (5.5, 9.5)), (2, (0.0, 4.0)), (39, (6.0, 10.0))],  # centred; shifted to fit
)
def test_max_duration_truncates_around_peak(peak: int, expected: tuple[float, float]) -> None:
    scores = [0.8] * 40  # one 10 s event
    scores[peak] = 0.95
    (event,) = detect(scores, max_duration_s=4.0)
    assert (event.start_s, event.end_s) == expected
    assert event.peak_s == peak / FPS
    assert event.peak_score == 0.95


def test_nms_keeps_highest_peak_within_window() -> None:
    scores = np.zeros(30)
    scores[4], scores[10], scores[20] = 0.9, 0.95, 0.8  # peaks at 1.0, 2.5, 5.0 s
    events = detect(list(scores), nms_window_s=2.0)
    assert [e.peak_s for e in events] == [2.5, 5.0]
    # peaks exactly nms_window_s apart are not "within" it: both stay
    scores[4], scores[12] = 0.9, 0.95  # 1.0 s and 3.0 s
    scores[10] = 0.0
    assert [e.peak_s for e in detect(list(scores), nms_window_s=2.0)] == [1.0, 3.0, 5.0]


def test_detect_smooths_raw_scores_itself() -> None:
    rng = np.random.default_rng(1)
    raw = np.clip(np.sin(np.arange(200) / 9.0) + rng.normal(0, 0.3, 200), 0, 1)
    t = np.arange(200) / FPS
    full = EventsConfig()  # defaults: median 3, EMA 0.5, every rule on
    pre = smooth(raw, full.median_window, full.ema_alpha)
    identity = full.model_copy(update={"median_window": 1, "ema_alpha": 1.0})
    assert detect_events(t, raw, full, FPS) == detect_events(t, pre, identity, FPS)
    assert detect_events(t, raw, full, FPS) != detect_events(t, raw, identity, FPS)


def test_no_events_and_empty_series() -> None:
    assert detect([0.1, 0.5, 0.59]) == []
    assert detect([]) == []


def test_clip_window_clamps_to_video() -> None:
    c = cfg(clip_before_s=5.0, clip_after_s=3.0)
    assert clip_window(Event(2.0, 4.0, 3.0, 0.9), 20.0, c) == (0.0, 7.0)
    assert clip_window(Event(10.0, 19.0, 12.0, 0.9), 20.0, c) == (5.0, 20.0)


@settings(max_examples=200, deadline=None)
@given(
    scores=st.lists(st.floats(0, 1), min_size=0, max_size=120),
    min_d=st.sampled_from([0.0, 0.5, 1.0]),
    gap=st.sampled_from([0.0, 0.5, 1.5]),
    max_d=st.sampled_from([1.0, 2.5, 10.0]),
    nms=st.sampled_from([0.0, 1.0, 2.0]),
)
def test_invariants(scores: list[float], min_d: float, gap: float, max_d: float, nms: float):
    c = EventsConfig(min_duration_s=min_d, merge_gap_s=gap, max_duration_s=max_d, nms_window_s=nms)
    t = np.arange(len(scores)) / FPS
    events = detect_events(t, np.array(scores), c, FPS)
    assert events == detect_events(t, np.array(scores), c, FPS)
    end = len(scores) / FPS
    for e in events:
        assert 0 <= e.start_s <= e.peak_s < e.end_s <= end
        assert min(min_d, max_d) - 1e-9 <= e.end_s - e.start_s <= max_d + 1e-9
        assert e.peak_score >= c.start
    for a, b in itertools.pairwise(events):
        assert a.end_s <= b.start_s
        assert abs(a.peak_s - b.peak_s) >= nms - 1e-9
