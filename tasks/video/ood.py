"""Per-frame out-of-distribution score: frames whose near-miss score should not be trusted.

Two kinds of evidence, each mapped to [0, 1]; the score is the largest:

- the picture itself, from cheap statistics of the decoded uint8 frames (BT.601 luma,
  0-255): black, over-exposed, frozen (a stuck camera or a decoder repeating frames) or
  lens-blocked (featureless over most of the frame). CLIP still returns a confident
  embedding for such frames, so its scores cannot flag them;
- the predictions: the binary entropy (bits) of the mean of the zero-shot and head
  probabilities, as in COOkeD's ensemble entropy. It is the members' mean entropy plus their
  Jensen-Shannon disagreement, so it is high when both hesitate or when they disagree;
  without a head it is the zero-shot entropy. It is weighted by `UNCERTAINTY_WEIGHT` = 0.6:
  at the default threshold 0.5 only entropy > 0.83 bit flags (mean probability within
  0.27-0.73, a full disagreement included), i.e. frames the event hysteresis (0.4/0.6)
  cannot decide, not every hesitant one.

Each statistic enters through a linear ramp between two thresholds (below: 0, above: 1),
chosen so that a frame is flagged (score > 0.5) at the ramp's midpoint:

| cue          | statistic                                          | ramp (score 0 -> 1)  |
|--------------|----------------------------------------------------|----------------------|
| black        | mean luma                                          | 25 -> 10             |
| over-exposed | fraction of luma >= 250                            | 0.25 -> 0.5          |
|              | or: mean luma, times low spread (std luma 30 -> 10)| 200 -> 230           |
| frozen       | mean abs luma change from the previous frame,      | 0.25 -> 0.05         |
|              | held for `FROZEN_HOLD_S` (below)                   |                      |
| blocked      | fraction of 8 x 8 tiles that are featureless       | 0.6 -> 0.9           |

A tile is featureless when its luma std is < 4 (flat, even if noisy: a cover in the dark)
or its mean |4-neighbour Laplacian| is < 1 (smooth, even if graded: an out-of-focus finger).
Sky and road can be featureless, but they rarely cover more than 60% of a dashcam view.
Frozen means nearly bit-identical (< 0.15 of a gray level on average) for at least
`FROZEN_HOLD_S` = 1 s: sensor noise alone moves a live camera more, but a stopped car
filming a still scene through heavy compression may be flagged too. One repeated picture is
no freeze: cheap recorders write each picture twice or three times (10 fps content as 20 or
30 fps), and sampled at their full rate every other sample repeats the one before; a frame
is frozen only inside a stretch of samples at least a second long over which the picture
never changed (`held`).
"""

from __future__ import annotations

import numpy as np

BLACK_MEAN = (25.0, 10.0)
SATURATED_LEVEL = 250.0
SATURATED_FRACTION = (0.25, 0.5)
BRIGHT_MEAN = (200.0, 230.0)
BRIGHT_STD = (30.0, 10.0)
FROZEN_DIFF = (0.25, 0.05)
FROZEN_HOLD_S = 1.0
BLOCKED_FRACTION = (0.6, 0.9)
GRID = 8
TILE_STD = 4.0
TILE_LAPLACIAN = 1.0
UNCERTAINTY_WEIGHT = 0.6
THRESHOLD = 0.5
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _luma(frames: np.ndarray) -> np.ndarray:
    return np.asarray(frames, dtype=np.float32) @ LUMA


def frame_stats(frames: np.ndarray, prev_frame: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-frame statistics of an RGB uint8 chunk (N x H x W x 3), vectorised.

    `prev_frame` is the previous chunk's last frame (H x W x 3), so that `frame_diff` runs
    across chunk boundaries; without it (or with another size) the first frame's
    `frame_diff` is NaN (never frozen). Keys: mean_luma, std_luma, saturated_fraction,
    frame_diff, laplacian_energy, featureless_fraction (float64 arrays of length N).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape[1:3]) < 3:
        raise ValueError(f"need N x H x W x 3 frames of at least 3 x 3, got {frames.shape}")
    y = _luma(frames)
    n, h, w = y.shape
    diff = np.full(n, np.nan)
    if n > 1:
        diff[1:] = np.abs(y[1:] - y[:-1]).mean(axis=(1, 2))
    if n and prev_frame is not None and prev_frame.shape == frames.shape[1:]:
        diff[0] = np.abs(y[0] - _luma(prev_frame)).mean()
    inner = y[:, 1:-1, 1:-1]
    lap = np.abs(y[:, :-2, 1:-1] + y[:, 2:, 1:-1] + y[:, 1:-1, :-2] + y[:, 1:-1, 2:] - 4.0 * inner)
    g = min(GRID, h - 2, w - 2)
    th, tw = (h - 2) // g, (w - 2) // g

    def tiles(a: np.ndarray) -> np.ndarray:
        return a[:, : g * th, : g * tw].reshape(n, g, th, g, tw)

    flat = (tiles(inner).std(axis=(2, 4)) < TILE_STD) | (
        tiles(lap).mean(axis=(2, 4)) < TILE_LAPLACIAN
    )
    return {
        "mean_luma": y.mean(axis=(1, 2), dtype=np.float64),
        "std_luma": y.std(axis=(1, 2), dtype=np.float64),
        "saturated_fraction": (y >= SATURATED_LEVEL).mean(axis=(1, 2), dtype=np.float64),
        "frame_diff": diff,
        "laplacian_energy": lap.mean(axis=(1, 2), dtype=np.float64),
        "featureless_fraction": flat.mean(axis=(1, 2), dtype=np.float64),
    }


def concat_stats(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One video's statistics from its chunks' (in order)."""
    keys = chunks[0].keys() if chunks else []
    return {k: np.concatenate([c[k] for c in chunks]) for k in keys}


def _ramp(x: np.ndarray, ends: tuple[float, float]) -> np.ndarray:
    """0 at ends[0], 1 at ends[1], linear between (either direction); NaN -> 0."""
    lo, hi = ends
    r = np.clip((np.asarray(x, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return np.nan_to_num(r, nan=0.0)


def _range_min(x: np.ndarray) -> list[np.ndarray]:
    """A sparse table: level k holds the minima of every run of 2**k values."""
    levels = [x]
    k = 1
    while (1 << k) <= len(x):
        prev = levels[-1]
        levels.append(np.minimum(prev[: len(prev) - (1 << (k - 1))], prev[1 << (k - 1) :]))
        k += 1
    return levels


def _query(levels: list[np.ndarray], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """min(x[lo..hi]) per pair (inclusive, lo <= hi)."""
    k = np.floor(np.log2(hi - lo + 1)).astype(np.int64)
    out = np.empty(len(lo))
    for level in np.unique(k):
        m = k == level
        table = levels[level]
        out[m] = np.minimum(table[lo[m]], table[hi[m] - (1 << level) + 1])
    return out


def held(unchanged: np.ndarray, t_s: np.ndarray, hold_s: float = FROZEN_HOLD_S) -> np.ndarray:
    """Per frame, how surely it lies in a stretch of at least `hold_s` seconds over which
    the picture did not change: the largest, over windows `[a, b]` holding the frame with
    `t[b] - t[a] >= hold_s`, of the smallest `unchanged[a+1..b]` (the steps inside).

    `unchanged[i]` (in [0, 1]) says the picture did not change from sample i-1 to i. For a
    frame j and a window start a <= j, the best window ends at max(j, b_a) (b_a: the first
    sample `hold_s` after a); starts before the last one whose b_a <= j only lose.
    """
    u = np.nan_to_num(np.asarray(unchanged, np.float64), nan=0.0)
    t = np.asarray(t_s, np.float64)
    n = len(u)
    out = np.zeros(n)
    if n < 2:
        return out
    b = np.searchsorted(t, t + hold_s - 1e-9, "left")  # first b with t[b] - t[a] >= hold
    levels = _range_min(u)
    j = np.arange(n)
    first = np.maximum(np.searchsorted(b, j, "right") - 1, 0)  # last a with b_a <= j
    for d in range(int((j - first).max()) + 1):
        a = j - d
        ok = (a >= first) & (a >= 0)
        ok[ok] &= b[a[ok]] < n
        if not ok.any():
            continue
        end = np.maximum(j[ok], b[a[ok]])
        out[ok] = np.maximum(out[ok], _query(levels, a[ok] + 1, end))
    return out


def image_scores(stats: dict[str, np.ndarray], t_s: np.ndarray) -> dict[str, np.ndarray]:
    """black, overexposed, frozen, blocked: each in [0, 1] (see the module's table);
    `t_s` are the frames' times (frozen needs the picture held for `FROZEN_HOLD_S`)."""
    bright = _ramp(stats["mean_luma"], BRIGHT_MEAN) * _ramp(stats["std_luma"], BRIGHT_STD)
    return {
        "black": _ramp(stats["mean_luma"], BLACK_MEAN),
        "overexposed": np.maximum(_ramp(stats["saturated_fraction"], SATURATED_FRACTION), bright),
        "frozen": held(_ramp(stats["frame_diff"], FROZEN_DIFF), t_s),
        "blocked": _ramp(stats["featureless_fraction"], BLOCKED_FRACTION),
    }


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of Bernoulli(p): 0 at p in {0, 1}, 1 at p = 0.5."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return np.nan_to_num(h, nan=0.0)


def prediction_uncertainty(p_zs: np.ndarray, p_head: np.ndarray | None = None) -> np.ndarray:
    """Entropy (bits) of the ensemble mean probability; the zero-shot entropy without a head."""
    p = np.asarray(p_zs, dtype=np.float64)
    if p_head is not None:
        p = 0.5 * (p + np.asarray(p_head, dtype=np.float64))
    return binary_entropy(p)


def ood_cues(
    stats: dict[str, np.ndarray],
    t_s: np.ndarray,
    p_zs: np.ndarray,
    p_head: np.ndarray | None = None,
    uncertainty_weight: float = UNCERTAINTY_WEIGHT,
) -> dict[str, np.ndarray]:
    """Every cue in [0, 1]: the `image_scores` and `uncertain` (weight * uncertainty)."""
    cues = image_scores(stats, t_s)
    cues["uncertain"] = uncertainty_weight * prediction_uncertainty(p_zs, p_head)
    return cues


def ood_score(
    stats: dict[str, np.ndarray],
    t_s: np.ndarray,
    p_zs: np.ndarray,
    p_head: np.ndarray | None = None,
    uncertainty_weight: float = UNCERTAINTY_WEIGHT,
) -> np.ndarray:
    """max(black, overexposed, frozen, blocked, weight * prediction uncertainty), in [0, 1]."""
    cues = ood_cues(stats, t_s, p_zs, p_head, uncertainty_weight)
    return np.max(np.stack(list(cues.values())), axis=0)


def ood_flag(score: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    return np.asarray(score) > threshold
