"""Which spans people should review next (`curate nearmiss suggest`): uncertain ones, spread
over the embedding space, never in a labelled video.

Candidates are windows of `window_s` seconds of each unlabelled video (frames the OOD cues
flag are left out; a window without a usable frame is no candidate). Per window:

- `uncertainty`: the largest over its frames of `1 - |score - t| / max(t, 1 - t)`, `t` the
  detector's decision threshold (`video.events.start`): 1 at the threshold, 0 at 0 or 1;
- `disagreement`: the largest `|p_head - p_zero_shot|` (0 without a head);
- `priority`: their mean with a head, the uncertainty alone without;
- its embedding: the L2-normalised mean of its frames' L2-normalised CLIP embeddings.

Selection (deterministic): the `pool_factor * n` candidates of highest priority (ties by
partition, video, start) form the pool; k-center greedy (Sener & Savarese, ICLR 2018) then
takes, n times, the pool's candidate farthest (cosine distance) from every centre so far;
the labelled videos' windows are the first centres (a span like those already labelled adds
least), else the pool's top candidate is. Ties go to the higher priority, then pool order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POOL_FACTOR = 4


@dataclass
class Windows:
    """Candidate windows: one row per window, and their unit embeddings."""

    rows: list[dict]
    emb: np.ndarray  # (n, d) float64, unit rows


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def uncertainty(score: np.ndarray, threshold: float) -> np.ndarray:
    """1 at the decision threshold, falling linearly to 0 at 0 and at 1."""
    return 1.0 - np.abs(score - threshold) / max(threshold, 1.0 - threshold)


def video_windows(
    base: dict, t_s: np.ndarray, frames: dict[str, np.ndarray], emb: np.ndarray,
    duration_s: float, window_s: float, threshold: float,
) -> Windows:  # fmt: skip
    """The candidate windows of one video. `frames` holds per sampled frame `score`,
    `p_near_miss`, `p_head` (NaN without a head) and `usable` (not OOD); `emb` its rows."""
    rows, vecs = [], []
    e = unit(emb)
    n_windows = max(1, int(np.ceil(duration_s / window_s - 1e-9)))
    for k in range(n_windows):
        start, end = k * window_s, min((k + 1) * window_s, duration_s)
        inside = (t_s >= start - 1e-9) & (t_s < end - 1e-9) & frames["usable"]
        if not inside.any():
            continue
        score, zs, head = (frames[c][inside].astype(np.float64)
                           for c in ("score", "p_near_miss", "p_head"))  # fmt: skip
        u = float(uncertainty(score, threshold).max())
        has_head = not np.isnan(head).all()
        d = float(np.nanmax(np.abs(head - zs))) if has_head else 0.0
        rows.append({**base, "start_s": start, "end_s": end, "frames": int(inside.sum()),
                     "uncertainty": u, "disagreement": d,
                     "priority": (u + d) / 2 if has_head else u,
                     "score_max": float(score.max()), "p_zero_shot_max": float(zs.max()),
                     "p_head_max": float(np.nanmax(head)) if has_head else None})  # fmt: skip
        vecs.append(unit(e[inside].mean(axis=0)))
    width = emb.shape[1] if emb.ndim == 2 else 0
    return Windows(rows, np.asarray(vecs, np.float64).reshape(len(vecs), width))


def concat(parts: list[Windows]) -> Windows:
    rows = [r for p in parts for r in p.rows]
    mats = [p.emb for p in parts if len(p.rows)]
    return Windows(rows, np.concatenate(mats) if mats else np.zeros((0, 0)))


Pick = tuple[int, float | None]


def k_center(emb: np.ndarray, priority: np.ndarray, centres: np.ndarray, n: int) -> list[Pick]:
    """k-center greedy: (index, cosine distance to the nearest centre when picked) for
    `n` picks; with no centres the first pick is index 0 (the caller's best; distance
    None)."""
    n = min(n, len(emb))
    picked: list[Pick] = []
    if n == 0:
        return picked
    if len(centres):
        nearest = (1.0 - emb @ centres.T).min(axis=1)
    else:
        picked.append((0, None))  # no centre to be far from
        nearest = 1.0 - emb @ emb[0]
    taken = np.zeros(len(emb), bool)
    for i, _ in picked:
        taken[i] = True
    while len(picked) < n:
        gap = np.where(taken, -np.inf, np.round(nearest, 12))
        best = np.flatnonzero(gap == gap.max())
        i = int(best[np.argmax(priority[best])])  # ties: higher priority, then order
        picked.append((i, float(nearest[i])))
        taken[i] = True
        nearest = np.minimum(nearest, 1.0 - emb @ emb[i])
    return picked


def select(cands: Windows, labelled: np.ndarray, n: int, pool_factor: int = POOL_FACTOR) -> list:
    """The n suggestions, ranked 1..n (see the module docstring)."""
    keys = [(-r["priority"], r["partition"], r["video"], r["start_s"]) for r in cands.rows]
    order = sorted(range(len(keys)), key=keys.__getitem__)[: pool_factor * n]
    emb = cands.emb[order]
    priority = np.asarray([cands.rows[i]["priority"] for i in order], np.float64)
    out = []
    for rank, (j, gap) in enumerate(k_center(emb, priority, labelled, n), start=1):
        out.append({"rank": rank, **cands.rows[order[j]], "distance": gap})
    return out
