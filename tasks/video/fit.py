"""Fitting a near-miss head: labelled frames from the score cache in, a safetensors head out.

The training set is what the flow scores: every sampled frame of every labelled video, its
cached (fp16) embedding, its truth from the labels (`tasks.video.labels.frame_labels`, each
sample lasting `1 / min(sample_fps, video fps)` s, as in event detection) and its zero-shot
logit for the configured prompts. Frames the picture statistics flag out-of-distribution
(black, frozen, over-exposed, lens-blocked: `video.ood.threshold`) are left out: they say
nothing about the road, and a frozen video would otherwise weigh as many identical frames.
The head is GDA with Ledoit-Wolf shrinkage and the zero-shot mix `alpha` chosen by
leave-one-video-out (`tasks.video.head`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from schemas.config import VideoConfig
from tasks.video.head import fit_gda, save_head, select_alpha, zero_shot_logit
from tasks.video.labels import LabelRow, frame_labels
from tasks.video.ood import image_scores
from tasks.video.score import OOD_STATS

# compared when the labelled videos' frames must come from one model (`head.check_identity`)
IDENTITY_KEYS = ("architecture_sha256", "checkpoint_sha256", "pretrained")


class FitError(ValueError):
    """Labels and frames that cannot make a head (one line: what is missing)."""


@dataclass
class VideoFrames:
    """One scored video as the cache holds it."""

    url: str
    fps: float
    table: pl.DataFrame  # tasks.video.score.FRAME_SCHEMA
    emb: np.ndarray  # (frames, d) fp16


@dataclass
class LabelledFrames:
    x: np.ndarray  # (n, d) float32 embeddings
    y: np.ndarray  # (n,) bool truth
    video: np.ndarray  # (n,) URL of each frame's video (the leave-one-video-out folds)
    zs_logit: np.ndarray  # (n,) zero-shot logit
    dropped_ood: int  # frames of labelled videos left out as out-of-distribution


def picture_ood(table: pl.DataFrame, threshold: float | None) -> np.ndarray:
    """Frames the picture statistics alone flag (the prediction cue needs a head)."""
    if threshold is None or table.height == 0:
        return np.zeros(table.height, dtype=bool)
    stats = {k: table[k].to_numpy().astype(np.float64) for k in OOD_STATS}
    cues = image_scores(stats, table["t_s"].to_numpy())
    return np.max(np.stack(list(cues.values())), axis=0) > threshold


def labelled_frames(
    videos: Iterable[VideoFrames],
    labels: Sequence[LabelRow],
    prompts: tuple[np.ndarray, np.ndarray, float],
    video: VideoConfig,
) -> LabelledFrames:
    """The training set over the videos the labels name (others are ignored)."""
    near, normal, scale = prompts
    xs, ys, names, zs = [], [], [], []
    dropped = 0
    for v in videos:
        rate = min(video.sample_fps, v.fps)
        truth = frame_labels(labels, v.url, v.table["t_s"].to_numpy(), 1.0 / rate)
        if truth is None or v.table.height == 0:
            continue
        keep = ~picture_ood(v.table, video.ood.threshold)
        dropped += int((~keep).sum())
        e = v.emb.astype(np.float32)[keep]
        xs.append(e)
        ys.append(truth[keep])
        names += [v.url] * len(e)
        zs.append(zero_shot_logit(e, near, normal, scale))
    if not xs:
        raise FitError("labels: no scored frames in the videos the labels name")
    return LabelledFrames(
        np.concatenate(xs), np.concatenate(ys), np.asarray(names), np.concatenate(zs), dropped
    )


def common_identity(identities: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The one model identity every video was embedded with (they must agree)."""
    found = {tuple(str(i.get(k)) for k in IDENTITY_KEYS): dict(i) for i in identities}
    if len(found) != 1:
        raise FitError(f"the labelled videos were embedded by {len(found)} models, need one")
    return next(iter(found.values()))


def fit_head(
    data: LabelledFrames, model_identity: Mapping[str, Any], prompt_hash: str
) -> tuple[bytes, dict[str, Any]]:
    """(safetensors bytes, summary) of the GDA head with its leave-one-video-out alpha."""
    n_pos, n_neg = int(data.y.sum()), int((~data.y).sum())
    if n_pos == 0 or n_neg == 0:
        raise FitError(
            f"labels: need positive and negative frames, got {n_pos} positive and "
            f"{n_neg} negative in {len(set(data.video))} labelled video(s)"
        )
    head = fit_gda(data.x, data.y)
    choice = select_alpha(data.x, data.y, data.video, data.zs_logit)
    blob = save_head(head, choice.alpha, model_identity, prompt_hash)
    summary = {
        "videos": len(set(data.video.tolist())),
        "frames": len(data.y),
        "positive_frames": n_pos,
        "negative_frames": n_neg,
        "dropped_ood_frames": data.dropped_ood,
        "alpha": choice.alpha,
        "alpha_folds": choice.folds,
        "alpha_scores": {str(a): round(s, 6) for a, s in choice.scores.items()},
        "shrinkage": head.shrinkage,
        "model": {k: model_identity.get(k) for k in ("name", *IDENTITY_KEYS)},
        "prompt_set_hash": prompt_hash,
    }
    return blob, summary
