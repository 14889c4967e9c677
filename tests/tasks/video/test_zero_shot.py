"""Score math on embeddings: hand-worked values and independent computations."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from schemas.config import FusionConfig
from tasks.video.zero_shot import (
    MOTION_MIN_SCALE,
    MOTION_Z_MAX,
    fuse,
    motion_cue,
    prompt_set_embedding,
    prompt_set_hash,
    robust_z,
    zero_shot_near_miss,
)


def unit(angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([math.cos(a), math.sin(a)])


def test_prompt_set_embedding_weighs_prompts_equally() -> None:
    emb = np.array([[3.0, 0.0], [0.0, 0.5]])  # different norms, orthogonal directions
    np.testing.assert_allclose(prompt_set_embedding(emb), [math.sqrt(0.5)] * 2, atol=1e-12)
    single = prompt_set_embedding(np.array([[0.0, 2.0, 0.0]]))
    np.testing.assert_allclose(single, [0, 1, 0])


def test_zero_shot_matches_explicit_softmax() -> None:
    # hand-worked: cos(near) = 1, cos(normal) = 0, scale 1 -> e / (e + 1)
    p = zero_shot_near_miss(np.array([[2.0, 0.0]]), unit(0), unit(90), 1.0)
    assert p[0] == pytest.approx(math.e / (math.e + 1), abs=1e-12)
    rng = np.random.default_rng(0)
    images, near, normal = rng.normal(size=(20, 8)), rng.normal(size=8), rng.normal(size=8)
    cos = lambda a, b: a @ b / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b))  # noqa: E731
    logits = 100.0 * np.stack([cos(images, near), cos(images, normal)], axis=1)
    expected = np.exp(logits[:, 0]) / np.exp(logits).sum(axis=1)
    np.testing.assert_allclose(zero_shot_near_miss(images, near, normal, 100.0), expected)


def test_zero_shot_extreme_scale_is_finite() -> None:
    p = zero_shot_near_miss(np.array([[1.0, 0.0], [0.0, 1.0]]), unit(0), unit(90), 1e6)
    assert p.tolist() == [1.0, 0.0]


def test_robust_z_hand_worked() -> None:
    # median 3, |dev| = [2, 1, 0, 1, 97], MAD 1 -> sigma 1.4826
    z = robust_z(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
    np.testing.assert_allclose(z, np.array([-2, -1, 0, 1, 97]) / 1.4826)


def test_robust_z_guards_zero_mad() -> None:
    # MAD 0 (most values equal): falls back to 1.2533 * mean |dev| = 1.2533 * 0.2
    z = robust_z(np.array([0.0, 0.0, 0.0, 1.0, 0.0]))
    np.testing.assert_allclose(z, [0, 0, 0, 1 / (1.2533 * 0.2), 0])
    assert robust_z(np.full(7, 0.3)).tolist() == [0.0] * 7
    assert robust_z(np.array([])).size == 0


def test_motion_cue_from_angles() -> None:
    angles = np.array([0, 5, 15, 30, 50, 140, 148, 160])
    emb = np.stack([3.0 * unit(a) for a in angles])  # norms must not matter
    change = 1 - np.cos(np.radians(np.diff(angles)))  # independent: from the angles
    med = np.median(change)
    mad = np.median(np.abs(change - med))
    assert 1.4826 * mad > MOTION_MIN_SCALE  # the floor does not bind here
    expected = np.concatenate([[0.0], (change - med) / (1.4826 * mad)])
    assert expected[5] > MOTION_Z_MAX  # the 90-degree jump (z ~ 54) is capped
    expected = np.clip(expected, -MOTION_Z_MAX, MOTION_Z_MAX)
    np.testing.assert_allclose(motion_cue(emb), expected, atol=1e-9)
    assert np.argmax(motion_cue(emb)) == 5  # the frame after the 90-degree jump


def test_robust_z_floor() -> None:
    # MAD 0.001 -> sigma 0.0014826, floored to 0.01
    x = np.array([0.0, 0.001, 0.002, 0.003, 0.5])
    np.testing.assert_allclose(robust_z(x, min_scale=0.01), (x - 0.002) / 0.01)
    np.testing.assert_allclose(robust_z(x, min_scale=1e-6), (x - 0.002) / 0.0014826)
    assert robust_z(np.full(4, 0.3), min_scale=0.01).tolist() == [0.0] * 4


def test_motion_cue_still_video_with_one_cut_is_bounded() -> None:
    # a still camera: consecutive embeddings differ by ~1e-5 rad (fp16-level noise), then
    # one hard cut of 45 degrees (1 - cos = 0.29, a cut between two road scenes)
    rng = np.random.default_rng(1)
    angles = np.cumsum(rng.normal(0, 1e-5, 60))
    angles[30:] += math.pi / 4
    emb = np.stack([unit(math.degrees(a)) for a in angles])
    z = motion_cue(emb)
    change = 1 - np.cos(np.diff(angles))  # independent of the embedding path
    med = np.median(change)
    assert 1.4826 * np.median(np.abs(change - med)) < 1e-9  # the unfloored scale explodes
    assert z[30] == pytest.approx((change[29] - med) / MOTION_MIN_SCALE, rel=1e-6)
    assert 20 < z[30] < 50
    others = np.delete(z, 30)
    assert np.abs(others).max() < 1e-3


def test_motion_cue_is_capped() -> None:
    # a still video whose cut is a full reversal (1 - cos = 2); MAD 0, the mean-|dev|
    # fallback 1.2533 * 2 / 999 = 0.0025 is floored to 0.01: z would be 200
    emb = np.array([unit(0)] * 500 + [unit(180)] * 500)
    z = motion_cue(emb)
    assert z[500] == MOTION_Z_MAX and np.abs(np.delete(z, 500)).max() == 0.0
    # a short one: the fallback (1.2533 * 2 / 19) binds, not the floor
    z = motion_cue(np.array([unit(0)] * 10 + [unit(180)] * 10))
    assert z[10] == pytest.approx(2 / (1.2533 * 2 / 19))


def test_motion_cue_degenerate_videos() -> None:
    assert motion_cue(np.ones((5, 4))).tolist() == [0.0] * 5  # a still camera
    assert motion_cue(np.ones((1, 4))).tolist() == [0.0]
    assert motion_cue(np.zeros((0, 4))).size == 0


def test_fuse_weighted_mean() -> None:
    f = FusionConfig(zero_shot_weight=0.8, motion_weight=0.2, motion_scale=2.0)
    out = fuse(np.array([0.9, 0.0]), np.array([0.0, 2.0]), f)
    sig1 = 1 / (1 + math.exp(-1.0))
    np.testing.assert_allclose(out, [0.8 * 0.9 + 0.2 * 0.5, 0.2 * sig1])
    # weights need not sum to one: they are normalised
    g = FusionConfig(zero_shot_weight=4.0, motion_weight=1.0, motion_scale=2.0)
    np.testing.assert_allclose(fuse(np.array([0.9, 0.0]), np.array([0.0, 2.0]), g), out)


def test_fuse_stays_in_unit_interval_and_handles_zero_weights() -> None:
    rng = np.random.default_rng(0)
    p, z = rng.random(1000), rng.normal(0, 1e3, 1000)
    out = fuse(p, z, FusionConfig())
    assert out.min() >= 0.0 and out.max() <= 1.0
    zero = FusionConfig(zero_shot_weight=0.0, motion_weight=0.0)
    np.testing.assert_array_equal(fuse(p, z, zero), p)


def test_prompt_set_hash_stable_and_sensitive() -> None:
    prompts = {"near_miss": ["a near collision"], "normal": ["an empty road"]}
    blob = json.dumps(prompts, sort_keys=True, separators=(",", ":")).encode()
    assert prompt_set_hash(prompts) == hashlib.sha256(blob).hexdigest()
    assert prompt_set_hash(["a", "b"]) != prompt_set_hash(["b", "a"])
    assert prompt_set_hash(["a", "b"]) == prompt_set_hash(("a", "b"))
