"""Near-miss events from a per-frame score series: exact and deterministic.

The rules apply in this order (each one documented at its function):

1. `smooth`: centred median, then causal EMA.
2. hysteresis: an event starts at a sample with smoothed >= `start` and runs until the
   first sample with smoothed < `stop`.
3. merge: events separated by a gap shorter than `merge_gap_s` become one (before the
   minimum-duration rule, so a flickering detection can add up to a real event).
4. minimum duration: events shorter than `min_duration_s` are dropped.
5. maximum duration: a longer event is truncated to `max_duration_s` around its peak.
6. temporal NMS: of events whose peaks are less than `nms_window_s` apart, only the one
   with the highest peak is kept.

Each sample stands for `1 / sample_fps` seconds: an event over samples `i..j` spans
`[t[i], t[j] + 1 / sample_fps)` (the flow clamps the end to the video's end,
`tasks.video.publish.video_events`). The peak is the highest smoothed sample (the first one on
ties), and `peak_score` is that smoothed value.

Samples marked invalid (out-of-distribution frames, `tasks.video.ood`) take no part: rules
1-5 run on each stretch of consecutive valid samples on its own (so no event contains an
invalid sample, and events on either side of one are never merged), rule 6 on all events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schemas.config import EventsConfig

EPS = 1e-9


@dataclass(frozen=True)
class Event:
    start_s: float
    end_s: float
    peak_s: float
    peak_score: float


def smooth(scores: np.ndarray, median_window: int, ema_alpha: float) -> np.ndarray:
    """Median over a centred window (edges repeat the end values), then a causal EMA.

    The median removes single-frame spikes without shifting edges; the EMA,
    `y[i] = a * x[i] + (1 - a) * y[i-1]` from `y[0] = x[0]`, then damps flicker but delays
    rises by about `(1 - a) / a` samples. `median_window=1, ema_alpha=1` is the identity.
    An even window covers `w // 2` samples before and `w // 2 - 1` after.
    """
    x = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0)
    if x.size == 0 or median_window < 1:
        return x.copy()
    before, after = median_window // 2, median_window - 1 - median_window // 2
    padded = np.pad(x, (before, after), mode="edge")
    med = np.median(np.lib.stride_tricks.sliding_window_view(padded, median_window), axis=1)
    out = np.empty_like(med)
    acc = med[0]
    for i, value in enumerate(med):
        acc = ema_alpha * value + (1.0 - ema_alpha) * acc
        out[i] = acc
    return out


def hysteresis(smoothed: np.ndarray, start: float, stop: float) -> list[tuple[int, int]]:
    """Inclusive sample ranges `(i, j)` that rise to >= start and stay >= stop."""
    runs: list[tuple[int, int]] = []
    first: int | None = None
    for i, value in enumerate(smoothed):
        if first is None and value >= start:
            first = i
        elif first is not None and value < stop:
            runs.append((first, i - 1))
            first = None
    if first is not None:
        runs.append((first, len(smoothed) - 1))
    return runs


def _merge(runs: list[tuple[int, int]], t: np.ndarray, dt: float, gap_s: float):
    """Join runs whose gap (next start minus previous end) is shorter than `gap_s`."""
    merged: list[tuple[int, int]] = []
    for run in runs:
        if merged and t[run[0]] - (t[merged[-1][1]] + dt) < gap_s - EPS:
            merged[-1] = (merged[-1][0], run[1])
        else:
            merged.append(run)
    return merged


def _truncate(i: int, j: int, peak: int, t: np.ndarray, dt: float, max_s: float):
    """Samples of `i..j` inside a `max_s` window centred on the peak, shifted to fit the run.

    Truncating (not splitting) keeps one event per near miss: the clip is about the peak.
    """
    lo, hi = t[i], t[j] + dt
    if hi - lo <= max_s + EPS:
        return i, j
    w0 = min(max(t[peak] - max_s / 2, lo), hi - max_s)
    w0 = min(w0, t[peak])
    first = i + int(np.searchsorted(t[i : j + 1], w0 - EPS, side="left"))
    last = i + int(np.searchsorted(t[i : j + 1] + dt, w0 + max_s + EPS, side="right")) - 1
    return min(first, peak), max(last, peak)


def _nms(events: list[Event], window_s: float) -> list[Event]:
    """Keep the highest-peak event among those with peaks less than `window_s` apart."""
    kept: list[Event] = []
    for ev in sorted(events, key=lambda e: (-e.peak_score, e.peak_s)):
        if all(abs(ev.peak_s - k.peak_s) >= window_s - EPS for k in kept):
            kept.append(ev)
    return sorted(kept, key=lambda e: e.start_s)


def stretches(valid: np.ndarray) -> list[tuple[int, int]]:
    """Half-open index ranges `[lo, hi)` of consecutive True values, in order."""
    v = np.asarray(valid, dtype=bool)
    edges = np.flatnonzero(np.diff(np.r_[0, v.astype(np.int8), 0]))
    return [(int(lo), int(hi)) for lo, hi in zip(edges[::2], edges[1::2], strict=True)]


def smooth_valid(
    scores: np.ndarray, valid: np.ndarray | None, median_window: int, ema_alpha: float
) -> np.ndarray:
    """`smooth` within each stretch of valid samples, NaN on invalid ones (all valid: `smooth`)."""
    x = np.asarray(scores, dtype=np.float64)
    if valid is None:
        return smooth(x, median_window, ema_alpha)
    out = np.full(x.shape, np.nan)
    for lo, hi in stretches(valid):
        out[lo:hi] = smooth(x[lo:hi], median_window, ema_alpha)
    return out


def _stretch_events(t: np.ndarray, s: np.ndarray, cfg: EventsConfig, dt: float) -> list[Event]:
    """Rules 2-5 on one stretch of smoothed samples."""
    runs = _merge(hysteresis(s, cfg.start, cfg.stop), t, dt, cfg.merge_gap_s)
    events: list[Event] = []
    for i, j in runs:
        if t[j] + dt - t[i] < cfg.min_duration_s - EPS:
            continue
        peak = i + int(np.argmax(s[i : j + 1]))
        i, j = _truncate(i, j, peak, t, dt, cfg.max_duration_s)
        events.append(Event(float(t[i]), float(t[j] + dt), float(t[peak]), float(s[peak])))
    return events


def detect_events(
    t_s: np.ndarray,
    scores: np.ndarray,
    cfg: EventsConfig,
    sample_fps: float,
    valid: np.ndarray | None = None,
) -> list[Event]:
    """Events in one video's score series (raw fused scores; smoothing is done here).

    `t_s` must increase; it is each scored picture's presentation time
    (`tasks.video.decoding.timeline`).
    `sample_fps` sets how long one sample lasts; when the video's own fps is lower than the
    requested rate, each frame is sampled once, so pass `min(sample_fps, video fps)`.
    `valid` (default: all) marks the samples detection may use (see the module docstring).
    """
    t = np.asarray(t_s, dtype=np.float64)
    x = np.asarray(scores, dtype=np.float64)
    if t.shape != x.shape:
        raise ValueError(f"t_s has shape {t.shape}, scores {x.shape}")
    ok = np.ones(t.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if ok.shape != t.shape:
        raise ValueError(f"t_s has shape {t.shape}, valid {ok.shape}")
    dt = 1.0 / sample_fps
    events: list[Event] = []
    for lo, hi in stretches(ok):
        s = smooth(x[lo:hi], cfg.median_window, cfg.ema_alpha)
        events += _stretch_events(t[lo:hi], s, cfg, dt)
    return _nms(events, cfg.nms_window_s)


def clip_window(event: Event, duration_s: float, cfg: EventsConfig) -> tuple[float, float]:
    """The clip to publish for an event: `clip_before_s` before to `clip_after_s` after it,
    clamped to the video."""
    return max(0.0, event.start_s - cfg.clip_before_s), min(
        duration_s, event.end_s + cfg.clip_after_s
    )
