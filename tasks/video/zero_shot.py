"""Per-frame near-miss scores from CLIP embeddings: pure numpy, no model.

Two cues, fused into one score in [0, 1] per sampled frame:

- zero-shot: how much closer the frame is to the near-miss prompt set than to the normal one
  (CLIP's own two-way classifier over averaged prompt embeddings);
- motion: how abruptly the picture changes from the previous sampled frame, as a robust
  z-score within the video, so a shaky camera or a busy street sets its own baseline (with
  a floor on the scale, so a still camera does not turn noise into huge z-scores).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

import numpy as np

from schemas.config import FusionConfig

EPS = 1e-12
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
MEAN_AD_TO_SIGMA = 1.2533  # sqrt(pi / 2): the same for the mean absolute deviation


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero), in float64."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, EPS)


def prompt_set_embedding(text_emb: np.ndarray) -> np.ndarray:
    """One unit vector for a prompt set: normalise each prompt, average, re-normalise.

    Normalising first gives every prompt the same weight whatever its embedding's norm,
    as in CLIP's prompt ensembling.
    """
    return l2_normalize(l2_normalize(np.atleast_2d(text_emb)).mean(axis=0))


def zero_shot_near_miss(
    image_emb: np.ndarray, near_emb: np.ndarray, normal_emb: np.ndarray, logit_scale: float
) -> np.ndarray:
    """P(near miss) per frame: softmax over [near, normal] of `logit_scale * cosine`.

    `logit_scale` is the model's exponentiated scale (about 100 for OpenAI/LAION CLIP).
    A two-way softmax is the sigmoid of the logit difference, computed that way for
    numerical stability.
    """
    images = l2_normalize(np.atleast_2d(image_emb))
    near, normal = l2_normalize(near_emb).ravel(), l2_normalize(normal_emb).ravel()
    diff = float(logit_scale) * (images @ near - images @ normal)
    return _sigmoid(diff)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def robust_z(x: np.ndarray, min_scale: float = 0.0) -> np.ndarray:
    """(x - median) / scale, scale = max(1.4826 * MAD, `min_scale`).

    When the MAD is 0 (more than half the values equal) the mean absolute deviation
    (times 1.2533) stands in for it; when the scale is still 0 (x constant, no floor) the
    result is all zeros. `min_scale` is a floor in x's own units: without one, a nearly
    constant series has a MAD of ~1e-6 and ordinary noise becomes z of ~1e4.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.copy()
    med = np.median(x)
    dev = np.abs(x - med)
    scale = MAD_TO_SIGMA * np.median(dev)
    if scale <= EPS:
        scale = MEAN_AD_TO_SIGMA * dev.mean()
    scale = max(scale, min_scale)
    if scale <= EPS:
        return np.zeros_like(x)
    return (x - med) / scale


# `1 - cosine` between consecutive CLIP frame embeddings (ViT-B/L, 2-8 samples/s): a
# re-encoded still picture is ~1e-4 (fp16 caching adds ~1e-7), a camera driving or panning
# 0.01-0.1, a hard cut between two road scenes ~0.2-0.5 (unrelated images sit near cosine
# 0.5). 0.01, the low end of real motion, is the smallest spread the cue trusts: below it
# the video is "still", and a change must be a visible fraction of real motion to score.
MOTION_MIN_SCALE = 0.01
# (Typical magnitudes for OpenAI/LAION CLIP, not measured on this fleet's footage: worth
# checking on real videos with `1 - cos` percentiles.) A hard cut in a still video lands at
# about 0.3 / 0.01 = 30: the cap keeps the cue bounded (frames.parquet, reports) where the
# fused term sigmoid(z / motion_scale) is > 0.997 for any motion_scale up to 5.
MOTION_Z_MAX = 30.0


def motion_cue(image_emb: np.ndarray) -> np.ndarray:
    """Robust z-score of `1 - cosine` between consecutive frames' embeddings.

    The scale is floored at `MOTION_MIN_SCALE` (see there) so that z means "changes in
    units of at least 1% cosine", comparable across videos, and z is clipped to
    [-MOTION_Z_MAX, MOTION_Z_MAX]. The first frame has no predecessor: its z-score is 0
    (neutral); the median and MAD are taken over the real changes only, so the
    placeholder does not bias them.
    """
    emb = l2_normalize(np.atleast_2d(image_emb))
    z = np.zeros(len(emb), dtype=np.float64)
    if len(emb) > 1:
        change = 1.0 - np.sum(emb[1:] * emb[:-1], axis=1)
        z[1:] = np.clip(robust_z(change, MOTION_MIN_SCALE), -MOTION_Z_MAX, MOTION_Z_MAX)
    return z


def fuse(
    p_near: np.ndarray,
    motion_z: np.ndarray,
    fusion: FusionConfig,
    p_head: np.ndarray | None = None,
    telemetry_z: np.ndarray | None = None,
) -> np.ndarray:
    """Weighted mean of P(near miss), sigmoid(motion_z / motion_scale), when a head is
    given the head's probability (`fusion.head_weight`), and where `telemetry_z` is finite
    sigmoid((telemetry_z - telemetry_offset) / telemetry_scale) (`fusion.telemetry_weight`),
    in [0, 1].

    Every term lies in [0, 1], so their weighted mean does too; a frame with typical motion
    (z = 0) contributes 0.5 from the motion term. The telemetry term is a danger
    probability: calm driving gives little (0.12 at the defaults), a harsh brake much (0.88
    at z 4), so it pulls a calm stretch below the stop threshold as well as a hard brake
    above the start one. With all weights 0, P(near miss) is returned unchanged. Without
    `p_head` the head weight plays no part; without `telemetry_z` (a video without
    telemetry) neither does the telemetry weight: such a video scores as before the cue.
    """
    p = np.asarray(p_near, dtype=np.float64)
    head_w = fusion.head_weight if p_head is not None else 0.0
    total = fusion.zero_shot_weight + fusion.motion_weight + head_w
    tel_w = 0.0
    if telemetry_z is not None and fusion.telemetry_weight > 0:
        z = np.asarray(telemetry_z, dtype=np.float64)
        tel_w = np.where(np.isfinite(z), fusion.telemetry_weight, 0.0)
    if np.all(total + tel_w <= 0):
        return p.copy()
    motion = _sigmoid(np.asarray(motion_z, dtype=np.float64) / fusion.motion_scale)
    fused = fusion.zero_shot_weight * p + fusion.motion_weight * motion
    if p_head is not None:
        fused = fused + head_w * np.asarray(p_head, dtype=np.float64)
    if telemetry_z is None or fusion.telemetry_weight <= 0:
        return fused / total
    cue = _sigmoid((np.nan_to_num(z) - fusion.telemetry_offset) / fusion.telemetry_scale)
    weights = total + tel_w
    return np.where(weights > 0, (fused + tel_w * cue) / np.maximum(weights, EPS), p)


def prompt_set_hash(prompts: Sequence[str] | Mapping[str, Sequence[str]]) -> str:
    """sha256 of the prompts (order-sensitive: order can change float sums), for cache keys."""
    if isinstance(prompts, Mapping):
        value: object = {k: list(v) for k, v in prompts.items()}
    else:
        value = list(prompts)
    blob = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
