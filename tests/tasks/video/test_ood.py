"""OOD statistics on generated frames: broken pictures flagged, a normal video never."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.video.ood import (
    binary_entropy,
    concat_stats,
    frame_stats,
    held,
    image_scores,
    ood_flag,
    ood_score,
    prediction_uncertainty,
)

H, W = 96, 160
RATE = 4.0  # samples per second


def times(n: int, rate: float = RATE) -> np.ndarray:
    return np.arange(n) / rate


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
    return image_scores(frame_stats(frames, prev), times(len(frames)))


@pytest.mark.parametrize(
    ("pan", "gain"), [(2, 1.0), (0, 1.0), (0, 0.45)], ids=["panning", "still", "dusk"]
)
def test_normal_video_is_never_flagged(pan: int, gain: float) -> None:
    frames = normal_video(pan=pan, gain=gain)  # a still camera: only the shapes move
    stats, t = frame_stats(frames), times(len(frames))
    scores = image_scores(stats, t)
    assert max(float(v.max()) for v in scores.values()) < 0.25
    confident = np.where(np.arange(len(frames)) % 2 == 0, 0.02, 0.97)
    assert not ood_flag(ood_score(stats, t, confident, confident)).any()
    assert not ood_flag(ood_score(stats, t, confident)).any()


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
        assert ood_flag(ood_score(frame_stats(frames), times(4), np.full(4, 0.01))).all(), cue
    assert (one(black)["black"] == 1).all() and (one(white)["overexposed"] == 1).all()
    assert 0.9 < one(finger)["blocked"].min() < 1  # 7 of 8 tile rows featureless
    assert (one(black)["blocked"] == 1).all()  # a black frame is featureless too
    assert not ood_flag(one(finger)["black"]).any()  # dark-ish, but not black


def test_frozen_across_chunk_boundaries() -> None:
    video = normal_video(16)
    video[5:10] = video[5]  # the picture stays from sample 5 to 9 (1 s at 4 samples/s) ...
    whole = frame_stats(video)  # ... across the boundary between chunks 0..7 and 8..15
    parts = concat_stats([frame_stats(video[:8]), frame_stats(video[8:], prev_frame=video[7])])
    for key, value in whole.items():
        np.testing.assert_allclose(parts[key], value, rtol=1e-12, equal_nan=True)
    frozen = image_scores(whole, times(16))["frozen"]
    assert np.flatnonzero(frozen > 0.5).tolist() == [5, 6, 7, 8, 9]
    assert math.isnan(whole["frame_diff"][0]) and frozen[0] == 0.0
    # without the previous chunk's frame, the boundary step cannot be judged
    assert math.isnan(frame_stats(video[8:])["frame_diff"][0])
    # independent: mean |luma difference| by hand
    y = video.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(whole["frame_diff"][1:], np.abs(np.diff(y, axis=0)).mean((1, 2)),
                               rtol=1e-5)  # fmt: skip


def test_held_hand_worked() -> None:
    """A frame is frozen inside a stretch of at least `hold_s` whose steps all repeat."""
    t = np.arange(10) * 0.25
    u = np.array([0, 1, 0, 1, 1, 1, 1, 0, 1, 0], float)  # steps into 1, 3-6 and 8 repeat
    # 2..6 (1 s, steps 3-6) is the only stretch of four unchanged steps
    assert held(u, t, 1.0).tolist() == [0, 0, 1, 1, 1, 1, 1, 0, 0, 0]
    assert held(u, t, 0.25).tolist() == [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]  # one step is enough
    assert held(u, t, 1.25).tolist() == [0] * 10  # nothing held that long
    # graded steps: a stretch is as frozen as its least unchanged step
    g = np.array([0, 0.9, 0.6, 0.8, 0.7, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(held(g, t, 0.5), [0.6, 0.6, 0.7, 0.7, 0.7, 0, 0, 0, 0, 0])
    # against brute force over every window, on random steps and uneven times
    rng = np.random.default_rng(5)
    for _ in range(20):
        n = int(rng.integers(2, 30))
        tt = np.cumsum(rng.uniform(0.05, 0.4, n))
        uu = rng.uniform(0, 1, n).round(1)
        brute = np.zeros(n)
        for a in range(n):
            for b in range(a + 1, n):
                if tt[b] - tt[a] >= 0.8 - 1e-9:
                    brute[a : b + 1] = np.maximum(brute[a : b + 1], uu[a + 1 : b + 1].min())
        np.testing.assert_allclose(held(uu, tt, 0.8), brute)


def test_repeated_pictures_are_not_a_freeze() -> None:
    """Issue 27, case 4: 10 fps content written as 20 fps (every picture twice) and sampled
    at 20 fps: every other sample repeats the one before. That is no frozen camera; a
    picture that stays for 2 s still is."""
    content = normal_video(40, pan=1)
    doubled = np.repeat(content, 2, axis=0)
    frozen = image_scores(frame_stats(doubled), times(80, 20.0))["frozen"]
    assert not ood_flag(frozen).any()
    stuck = doubled.copy()
    stuck[30:70] = stuck[30]  # 2 s of one picture
    frozen = image_scores(frame_stats(stuck), times(80, 20.0))["frozen"]
    assert np.flatnonzero(ood_flag(frozen)).tolist() == list(range(30, 70))


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
    score = ood_score(stats, times(3), np.array([0.95, 0.95, 0.5]), np.array([0.05, 0.9, 0.5]))
    assert ood_flag(score).tolist() == [True, False, True]
    assert score[0] == pytest.approx(0.6)


@pytest.mark.parametrize(("ext", "fmt"), [("mkv", "matroska"), ("mov", "mov"), ("mp4", "mp4")])
def test_a_recording_that_writes_each_picture_twice_is_not_frozen(
    tmp_path, ext: str, fmt: str
) -> None:
    """Issue 27, case 4, on generated files: 10 fps content written as 20 fps (each
    picture twice), decoded at 20 samples/s as the score stage does. A picture held for
    2 s in the same recording is frozen."""
    from tasks.video.decoding.probe import iter_frame_chunks
    from tests.video_factory import frame_code, make_timed_video

    pictures = [i // 2 for i in range(80)]
    pictures[40:80] = [20] * 40  # 2 s of one picture
    video = make_timed_video(
        tmp_path / f"twice.{ext}", [i / 20 for i in range(80)], (96, 64), container=fmt,
        pictures=pictures,
    )  # fmt: skip
    idx, t, frames = (
        np.concatenate(x)
        for x in zip(*iter_frame_chunks(str(video), None, 20, 64, 16), strict=True)
    )
    assert [frame_code(f) for f in frames] == [pictures[i] for i in idx]
    frozen = ood_flag(image_scores(frame_stats(frames), t)["frozen"])
    assert np.flatnonzero(frozen).tolist() == list(range(40, 80))  # the held picture, from 2 s
