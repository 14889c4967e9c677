"""Trained heads on CLIP image embeddings, stored as safetensors (never pickle).

GDA head (Wang et al., "A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation",
ICLR 2024): Gaussian class-conditionals with a shared covariance on L2-normalised frame
embeddings, fitted in closed form from labelled frames. The covariance is Ledoit-Wolf
shrunk (d = 512-1024 dimensions from a few thousand frames is ill-conditioned); the head's
logit is mixed with CLIP's zero-shot logit, the mix picked by leave-one-video-out.

The file format (metadata, model identity check) is `tasks.model.heads`'s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.model.heads import (
    FORMAT,
    FORMAT_VERSION,
    HeadMismatch,
    check_identity,
    identity_meta,
    read_head_file,
    st_save,
)
from tasks.video.zero_shot import _sigmoid, l2_normalize

ALPHA_GRID = tuple(i / 10 for i in range(11))


# ---------------------------------------------------------------------------- GDA head


def ledoit_wolf(residuals: np.ndarray) -> tuple[np.ndarray, float]:
    """(empirical covariance R^T R / n, Ledoit-Wolf shrinkage) of already-centred rows.

    The closed form of Ledoit & Wolf (2004), as in scikit-learn's `ledoit_wolf_shrinkage`:
    a = min(b2, d2) / d2 with d2 = ||S - m I||^2 / d, b2 = sum_k ||x_k x_k^T - S||^2 / (n^2 d),
    m = tr(S) / d; a = 0 when the data carry no spread.
    """
    x = np.asarray(residuals, dtype=np.float64)
    n, d = x.shape
    emp = x.T @ x / n
    m = np.trace(emp) / d
    beta_sum = float(np.sum(np.einsum("ij,ij->i", x, x) ** 2))  # sum_k ||x_k||^4
    delta_sum = float(np.sum(emp**2))  # ||S||_F^2
    b2 = (beta_sum / n - delta_sum) / (n * d)
    d2 = (delta_sum - 2.0 * m * np.trace(emp) + d * m**2) / d
    b2 = min(b2, d2)
    return emp, (0.0 if b2 <= 0 or d2 <= 0 else float(b2 / d2))


@dataclass
class GdaHead:
    w: np.ndarray  # (d,)
    b: float
    mu: np.ndarray  # (2, d): negative, positive class means
    cov: np.ndarray  # (d, d): the shrunk shared covariance
    shrinkage: float
    counts: tuple[int, int]  # (negative, positive) frames


def fit_gda(x: np.ndarray, y: np.ndarray) -> GdaHead:
    """Closed-form GDA on L2-normalised rows of `x` with binary labels `y`.

    Sigma = pooled within-class covariance (1/n, the MLE), shrunk to
    (1 - a) Sigma + a (tr(Sigma) / d) I with the Ledoit-Wolf a; w = Sigma_s^-1 (mu1 - mu0),
    b = -(mu1' Sigma_s^-1 mu1 - mu0' Sigma_s^-1 mu0) / 2 + log(n1 / n0) (Bayes' rule with the
    empirical class priors).
    """
    e = l2_normalize(np.atleast_2d(x))
    lab = np.asarray(y, dtype=bool).ravel()
    if lab.shape[0] != e.shape[0]:
        raise ValueError(f"{e.shape[0]} embeddings but {lab.shape[0]} labels")
    n1, n0 = int(lab.sum()), int((~lab).sum())
    if n0 == 0 or n1 == 0:
        raise ValueError(f"GDA needs both classes, got {n0} negative and {n1} positive frames")
    mu = np.stack([e[~lab].mean(axis=0), e[lab].mean(axis=0)])
    emp, a = ledoit_wolf(e - mu[lab.astype(int)])
    d = e.shape[1]
    m = np.trace(emp) / d
    # every frame equal to its class mean (no spread): any isotropic covariance will do
    cov = np.eye(d) * 1e-6 if m <= 1e-12 else (1.0 - a) * emp + a * m * np.eye(d)
    p = np.linalg.solve(cov, mu.T)  # columns: Sigma_s^-1 mu0, Sigma_s^-1 mu1
    w = p[:, 1] - p[:, 0]
    b = -0.5 * (mu[1] @ p[:, 1] - mu[0] @ p[:, 0]) + math.log(n1 / n0)
    return GdaHead(w, float(b), mu, cov, a, (n0, n1))


def head_logit(head: GdaHead, x: np.ndarray) -> np.ndarray:
    return l2_normalize(np.atleast_2d(x)) @ head.w + head.b


def zero_shot_logit(
    image_emb: np.ndarray, near_emb: np.ndarray, normal_emb: np.ndarray, logit_scale: float
) -> np.ndarray:
    """`logit_scale * (cos_near - cos_normal)`: the logit `zero_shot_near_miss` takes the
    sigmoid of, computed by the very same operations (so alpha = 0 reproduces it bit for bit)."""
    images = l2_normalize(np.atleast_2d(image_emb))
    near, normal = l2_normalize(near_emb).ravel(), l2_normalize(normal_emb).ravel()
    return float(logit_scale) * (images @ near - images @ normal)


def ensemble_logit(head_lg: np.ndarray, zs_lg: np.ndarray, alpha: float) -> np.ndarray:
    return alpha * np.asarray(head_lg, np.float64) + (1.0 - alpha) * np.asarray(zs_lg)


def ensemble_proba(head_lg: np.ndarray, zs_lg: np.ndarray, alpha: float) -> np.ndarray:
    """sigmoid(alpha * head + (1 - alpha) * zero-shot); alpha = 0 is the zero-shot P exactly."""
    return _sigmoid(ensemble_logit(head_lg, zs_lg, alpha))


def log_likelihood(y: np.ndarray, logit: np.ndarray) -> float:
    """Mean Bernoulli log-likelihood of labels under sigmoid(logit), stable for any logit."""
    z = np.asarray(logit, dtype=np.float64)
    sign = np.where(np.asarray(y, dtype=bool), 1.0, -1.0)
    return float(-np.mean(np.logaddexp(0.0, -sign * z)))


@dataclass
class AlphaChoice:
    alpha: float
    scores: dict[float, float]  # held-out mean log-likelihood per alpha on the grid
    folds: int  # held-out videos used


def select_alpha(
    x: np.ndarray,
    y: np.ndarray,
    video: Sequence[str] | np.ndarray,
    zs_lg: np.ndarray,
    grid: Sequence[float] = ALPHA_GRID,
) -> AlphaChoice:
    """Alpha by leave-one-video-out: the held-out mean log-likelihood, the first max wins.

    For each video, a head fitted on all other videos scores its frames (frames of one
    video are correlated, so a frame-level split would flatter the head). Log-likelihood,
    not AP: it is defined on videos without positives (most dashcam footage) and rewards
    calibrated probabilities, which the event thresholds rely on. Ties go to the smaller
    alpha (the grid is scanned upward). A fold whose training videos lack a class is
    skipped; with no usable fold, alpha = 0 (zero-shot alone).
    """
    vids = np.asarray(video)
    lab = np.asarray(y, dtype=bool)
    zs = np.asarray(zs_lg, dtype=np.float64)
    held_head, held_zs, held_y = [], [], []
    for v in np.unique(vids):
        test = vids == v
        train_y = lab[~test]
        if not (train_y.any() and (~train_y).any()):
            continue
        head = fit_gda(np.asarray(x)[~test], train_y)
        held_head.append(head_logit(head, np.asarray(x)[test]))
        held_zs.append(zs[test])
        held_y.append(lab[test])
    if not held_y:
        return AlphaChoice(0.0, {}, 0)
    hl, zl, yl = np.concatenate(held_head), np.concatenate(held_zs), np.concatenate(held_y)
    scores = {float(a): log_likelihood(yl, ensemble_logit(hl, zl, a)) for a in grid}
    best = float(grid[0])
    for a in grid:
        if scores[float(a)] > scores[best] + 1e-12:
            best = float(a)
    return AlphaChoice(best, scores, len(held_y))


def save_head(
    head: GdaHead, alpha: float, model_identity: Mapping[str, Any], prompt_hash: str
) -> bytes:
    """The head as safetensors bytes (float64 tensors), with string metadata."""
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "gda",
        **identity_meta(model_identity),
        "prompt_set_hash": prompt_hash,
        "label_counts": json.dumps({"negative": head.counts[0], "positive": head.counts[1]}),
        "alpha": repr(float(alpha)),
        "shrinkage": repr(float(head.shrinkage)),
    }
    tensors = {"w": head.w, "b": np.array([head.b]), "mu": head.mu, "cov": head.cov}
    return st_save({k: np.ascontiguousarray(v, np.float64) for k, v in tensors.items()}, meta)


def load_head(
    source: str | Path | bytes, expected_model: Mapping[str, Any]
) -> tuple[GdaHead, float, dict[str, str]]:
    """(head, alpha, metadata) from `save_head` output; `HeadMismatch` for another model."""
    t, meta = read_head_file(source)
    if meta.get("kind") != "gda":
        raise HeadMismatch(f"not a GDA head (kind {meta.get('kind')!r})")
    check_identity(meta, expected_model)
    counts = json.loads(meta["label_counts"])
    head = GdaHead(
        t["w"], float(t["b"][0]), t["mu"], t["cov"], float(meta["shrinkage"]),
        (int(counts["negative"]), int(counts["positive"])),
    )  # fmt: skip
    return head, float(meta["alpha"]), meta
