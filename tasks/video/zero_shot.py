"""Per-frame near-miss scores from CLIP embeddings: pure numpy, no model.

Two cues, fused into one score in [0, 1] per sampled frame:

- zero-shot: how much closer the frame is to the near-miss prompt set than to the normal one
  (CLIP's own two-way classifier over averaged prompt embeddings);
- motion: how abruptly the picture changes from the previous sampled frame, as a robust
  z-score within the video, so a shaky camera or a busy street sets its own baseline.
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


def robust_z(x: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 * MAD); falls back to the mean absolute deviation when the
    MAD is 0 (more than half the values equal), and to all zeros when x is constant."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.copy()
    med = np.median(x)
    dev = np.abs(x - med)
    scale = MAD_TO_SIGMA * np.median(dev)
    if scale <= EPS:
        scale = MEAN_AD_TO_SIGMA * dev.mean()
    if scale <= EPS:
        return np.zeros_like(x)
    return (x - med) / scale


def motion_cue(image_emb: np.ndarray) -> np.ndarray:
    """Robust z-score of `1 - cosine` between consecutive frames' embeddings.

    The first frame has no predecessor: its change is 0 and its z-score is set to 0 (neutral);
    the median and MAD are taken over the real changes only, so the placeholder does not
    bias them.
    """
    emb = l2_normalize(np.atleast_2d(image_emb))
    z = np.zeros(len(emb), dtype=np.float64)
    if len(emb) > 1:
        change = 1.0 - np.sum(emb[1:] * emb[:-1], axis=1)
        z[1:] = robust_z(change)
    return z


def fuse(p_near: np.ndarray, motion_z: np.ndarray, fusion: FusionConfig) -> np.ndarray:
    """Weighted mean of P(near miss) and sigmoid(motion_z / motion_scale), in [0, 1].

    Both terms lie in [0, 1], so their weighted mean does too; a frame with typical motion
    (z = 0) contributes 0.5 from the motion term. With both weights 0, P(near miss) is
    returned unchanged.
    """
    p = np.asarray(p_near, dtype=np.float64)
    total = fusion.zero_shot_weight + fusion.motion_weight
    if total <= 0:
        return p.copy()
    motion = _sigmoid(np.asarray(motion_z, dtype=np.float64) / fusion.motion_scale)
    return (fusion.zero_shot_weight * p + fusion.motion_weight * motion) / total


def prompt_set_hash(prompts: Sequence[str] | Mapping[str, Sequence[str]]) -> str:
    """sha256 of the prompts (order-sensitive: order can change float sums), for cache keys."""
    if isinstance(prompts, Mapping):
        value: object = {k: list(v) for k, v in prompts.items()}
    else:
        value = list(prompts)
    blob = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
