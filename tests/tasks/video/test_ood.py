"""OOD statistics on generated frames: broken pictures flagged, a normal video never."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.video.ood import (
    binary_entropy,
    concat_stats,
    frame_stats,
    image_scores,
    ood_flag,
    ood_score,
    prediction_uncertainty,
)

H, W = 96, 160


def texture(rng: np.random.Generator, h: int = H, w: int = W + 64) -> np.ndarray:
    """A textured street-like background: coarse blobs plus fine grain, RGB uint8."""
    coarse = rng.normal(size=(h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
    img = 110 + 35 * coarse + 12 * rng.normal(size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def normal_video(n: int = 24, seed: int = 0, pan: int = 2, gain: float = 1.0) -> np.ndarray:
    """A camera panning `pan` px a frame over texture while two shapes move across it."""
    rng = np.random.default_rng(seed)
    bg = np.clip(texture(rng) * gain, 0, 255).astype(np.uint8)
    frames = []
    for i in range(n):
        f = bg[:, pan * i : pan * i + W].copy()
        x = (7 * i) % (W - 20)
        f[30:50, x : x + 20] = (220, 40, 40)
        f[60:90, W - 30 - x // 2 : W - 10 - x // 2] = (30, 30, 200)
        frames.append(f)
    return np.stack(frames)


def one(frames: np.ndarray, prev: np.ndarray | None = None) -> dict[str, np.ndarray]:
    return image_scores(frame_stats(frames, prev))


@pytest.mark.parametrize(
    ("pan", "gain"), [(2, 1.0), (0, 1.0), (0, 0.45)], ids=["panning", "still", "dusk"]
)
def test_normal_video_is_never_flagged(pan: int, gain: float) -> None:
    frames = normal_video(pan=pan, gain=gain)  # a still camera: only the shapes move
    stats = frame_stats(frames)
    scores = image_scores(stats)
    assert max(float(v.max()) for v in scores.values()) < 0.25
    confident = np.where(np.arange(len(frames)) % 2 == 0, 0.02, 0.97)
    assert not ood_flag(ood_score(stats, confident, confident)).any()
    assert not ood_flag(ood_score(stats, confident)).any()


def test_black_overexposed_blocked_and_frozen_are_flagged() -> None:
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(4, H, W, 3))
    black = np.clip(4 + 2 * noise, 0, 255).astype(np.uint8)
    white = np.clip(253 + 2 * noise, 0, 255).astype(np.uint8)
    # bright haze: mean ~ 235, little spread, hardly a pixel actually saturated
    haze = np.clip(235 + 4 * noise, 0, 255).astype(np.uint8)
    # a finger over the lens: a smooth brown gradient, slightly noisy, over 90% of the view
    grad = np.linspace(60, 100, H)[None, :, None, None] * np.array([1.0, 0.7, 0.5])
    finger = np.clip(grad + 1.0 * noise, 0, 255).astype(np.uint8)
    finger[:, :8] = texture(rng)[:8, :W]
    for frames, cue in [
        (black, "black"),
        (white, "overexposed"),
        (haze, "overexposed"),
        (finger, "blocked"),
    ]:
        scores = one(frames)
        assert ood_flag(scores[cue]).all(), cue
        assert ood_flag(ood_score(frame_stats(frames), np.full(4, 0.01))).all(), cue
    assert (one(black)["black"] == 1).all() and (one(white)["overexposed"] == 1).all()
    assert 0.9 < one(finger)["blocked"].min() < 1  # 7 of 8 tile rows featureless
    assert (one(black)["blocked"] == 1).all()  # a black frame is featureless too
    assert not ood_flag(one(finger)["black"]).any()  # dark-ish, but not black


def test_frozen_across_chunk_boundaries() -> None:
    video = normal_video(12)
    video[5] = video[4]  # a repeated frame inside a chunk
    video[8] = video[7]  # ... and one across the boundary between chunks 0..7 and 8..11
    whole = frame_stats(video)
    parts = concat_stats([frame_stats(video[:8]), frame_stats(video[8:], prev_frame=video[7])])
    for key, value in whole.items():
        np.testing.assert_allclose(parts[key], value, rtol=1e-12, equal_nan=True)
    frozen = image_scores(whole)["frozen"]
    assert np.flatnonzero(frozen > 0.5).tolist() == [5, 8]
    assert math.isnan(whole["frame_diff"][0]) and frozen[0] == 0.0
    # without the previous chunk's frame, the boundary frame cannot be judged
    assert image_scores(frame_stats(video[8:]))["frozen"][0] == 0.0
    # independent: mean |luma difference| by hand
    y = video.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(whole["frame_diff"][1:], np.abs(np.diff(y, axis=0)).mean((1, 2)),
                               rtol=1e-5)  # fmt: skip


def test_statistics_by_hand() -> None:
    f = np.zeros((1, 10, 12, 3), dtype=np.uint8)
    f[0, :, :6] = 255  # half white, half black: mean 127.5, std 127.5, 50% saturated
    s = frame_stats(f)
    assert s["mean_luma"][0] == pytest.approx(127.5, abs=1e-3)
    assert s["std_luma"][0] == pytest.approx(127.5, abs=1e-3)
    assert s["saturated_fraction"][0] == pytest.approx(0.5)
    # the Laplacian is 255 on both sides of the edge: 2 columns of the 8 x 10 interior
    assert s["laplacian_energy"][0] == pytest.approx(255 * 2 / 10, rel=1e-5)
    with pytest.raises(ValueError, match="N x H x W x 3"):
        frame_stats(np.zeros((2, 10, 10), dtype=np.uint8))


def test_prediction_uncertainty() -> None:
    p = np.array([0.5, 0.9, 0.02])
    h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    np.testing.assert_allclose(binary_entropy(p), h)
    assert binary_entropy(np.array([0.0, 1.0])).tolist() == [0.0, 0.0]
    np.testing.assert_allclose(prediction_uncertainty(p), h)
    # disagreement: 0.95 vs 0.05 -> mean 0.5 -> 1 bit; agreement 0.95 / 0.9 -> H(0.925)
    u = prediction_uncertainty(np.array([0.95, 0.95]), np.array([0.05, 0.9]))
    assert u[0] == pytest.approx(1.0)
    assert u[1] == pytest.approx(-(0.925 * math.log2(0.925) + 0.075 * math.log2(0.075)))
    stats = frame_stats(normal_video(3))
    score = ood_score(stats, np.array([0.95, 0.95, 0.5]), np.array([0.05, 0.9, 0.5]))
    assert ood_flag(score).tolist() == [True, False, True]
    assert score[0] == pytest.approx(0.6)
