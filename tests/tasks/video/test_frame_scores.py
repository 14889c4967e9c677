"""Frame scores with a head and OOD flags, and events that leave flagged frames out."""

from __future__ import annotations

import numpy as np
import polars as pl

from schemas.config import EventsConfig, FusionConfig, VideoConfig
from tasks.video.events import Event, detect_events
from tasks.video.head import fit_gda
from tasks.video.headfile import RunHead
from tasks.video.publish import frame_scores, video_events
from tasks.video.score import OOD_STATS
from tasks.video.zero_shot import fuse, motion_cue


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def test_fuse_with_a_head_is_the_three_way_weighted_mean():
    p, z, h = np.array([0.2, 0.9]), np.array([0.0, 2.0]), np.array([0.7, 0.1])
    f = FusionConfig(zero_shot_weight=0.5, motion_weight=0.25, head_weight=1.0, motion_scale=2.0)
    expected = (0.5 * p + 0.25 * sigmoid(z / 2.0) + 1.0 * h) / 1.75
    assert np.allclose(fuse(p, z, f, h), expected, atol=1e-15)
    two_way = (0.5 * p + 0.25 * sigmoid(z / 2.0)) / 0.75  # no head: its weight plays no part
    assert np.allclose(fuse(p, z, f), two_way, atol=1e-15)


def test_events_never_span_invalid_samples_nor_merge_across_them():
    cfg = EventsConfig(
        median_window=1, ema_alpha=1.0, start=0.6, stop=0.4, min_duration_s=0.5,
        merge_gap_s=10.0, max_duration_s=100.0, nms_window_s=0.0,
    )  # fmt: skip
    t = np.arange(10) * 0.5  # 2 samples/s: each lasts 0.5 s
    scores = np.full(10, 0.9)
    valid = np.ones(10, bool)
    valid[[4, 5]] = False  # samples at 2.0 and 2.5 s
    assert detect_events(t, scores, cfg, 2.0) == [Event(0.0, 5.0, 0.0, 0.9)]
    assert detect_events(t, scores, cfg, 2.0, valid) == [
        Event(0.0, 2.0, 0.0, 0.9),
        Event(3.0, 5.0, 3.0, 0.9),
    ]
    assert detect_events(t, scores, cfg, 2.0, np.ones(10, bool)) == detect_events(
        t, scores, cfg, 2.0
    )
    valid[6] = False  # a lone valid sample is shorter than min_duration_s
    assert detect_events(t, scores, cfg, 2.0, valid)[0] == Event(0.0, 2.0, 0.0, 0.9)


def frames_table(n: int, black: list[int]) -> pl.DataFrame:
    """A cached frame table: live pictures, the `black` ones dark."""
    stats = {
        "mean_luma": np.where(np.isin(np.arange(n), black), 2.0, 110.0),
        "std_luma": np.full(n, 40.0),
        "saturated_fraction": np.zeros(n),
        "frame_diff": np.full(n, 5.0),
        "laplacian_energy": np.full(n, 20.0),
        "featureless_fraction": np.full(n, 0.1),
    }
    assert set(stats) == set(OOD_STATS)
    index = {"frame_index": np.arange(n), "t_s": np.arange(n) * 0.25, "emb_row": np.arange(n)}
    return pl.DataFrame({**index, **stats})


def test_frame_scores_with_head_and_ood_flags():
    rng = np.random.default_rng(3)
    n, d = 16, 8
    emb = rng.normal(size=(n, d)).astype(np.float16)
    near, normal, scale = rng.normal(size=d), rng.normal(size=d), 20.0
    head = fit_gda(rng.normal(size=(20, d)), np.arange(20) % 2)
    run = RunHead(head, 0.3, {}, "h.safetensors", "0" * 64)
    events = {"start": 0.0, "stop": 0.0, "median_window": 1, "ema_alpha": 1.0, "nms_window_s": 0}
    video = VideoConfig(input="x", sample_fps=4, fusion={"head_weight": 2.0}, events=events)
    black = [5, 6, 7]
    f = frame_scores("v.mp4", frames_table(n, black), emb, near, normal, scale, video, run)

    flagged = f["ood_flag"].to_numpy()
    assert np.flatnonzero(flagged).tolist() == black and set(f["ood_cue"].drop_nulls()) == {"black"}
    e = emb.astype(np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    zs = scale * (e @ (near / np.linalg.norm(near)) - e @ (normal / np.linalg.norm(normal)))
    p_head = sigmoid(0.3 * (e @ head.w + head.b) + 0.7 * zs)
    assert np.allclose(f["p_head"].to_numpy(), p_head, atol=1e-6)
    valid = ~flagged
    motion = np.zeros(n)
    motion[valid] = motion_cue(emb.astype(np.float32)[valid])  # flagged frames are skipped
    assert np.allclose(f["motion"].to_numpy(), motion, atol=1e-5)
    score = (0.8 * sigmoid(zs) + 0.2 * sigmoid(motion) + 2.0 * p_head) / 3.0
    assert np.allclose(f["score"].to_numpy(), score, atol=1e-6)
    assert np.isnan(f["smoothed"].to_numpy()[black]).all()
    assert np.allclose(f["smoothed"].to_numpy()[valid], f["score"].to_numpy()[valid])

    ev = video_events("v.mp4", f, 4.0, 25.0, video)  # every usable frame is in an event
    assert ev.select("start_s", "end_s").rows() == [(0.0, 1.25), (2.0, 4.0)]

    plain = frame_scores("v.mp4", frames_table(n, []), emb, near, normal, scale, video)
    assert plain["p_head"].null_count() == n and not plain["ood_flag"].any()
    assert np.allclose(plain["motion"].to_numpy(), motion_cue(emb.astype(np.float32)), atol=1e-6)


def test_an_event_ends_where_the_video_ends():
    """Issue 27, case 7: a sample stands for 1 / rate seconds, but the video can end
    sooner. A 2.9 s video (29 frames at 10 fps) sampled at 4 fps shows its last sample at
    2.7 s; an event running to the end ended at 2.95 s, past the video."""
    t = np.array([0.0, 0.2, 0.5, 0.7, 1.0, 1.2, 1.5, 1.7, 2.0, 2.2, 2.5, 2.7])
    f = pl.DataFrame({"t_s": t, "score": np.ones(len(t)), "ood_flag": np.zeros(len(t), bool)})
    events = {"start": 0.5, "stop": 0.5, "median_window": 1, "ema_alpha": 1.0}
    video = VideoConfig(input="x", sample_fps=4, events={**events, "clip_after_s": 3.0})
    ev = video_events("v.mp4", f, 2.9, 10.0, video)
    assert ev.select("start_s", "end_s", "clip_end_s").rows() == [(0.0, 2.9, 2.9)]


def test_duplicated_frame_recordings_keep_their_events():
    """Issue 27, case 4: 10 fps content written as 20 fps (every picture twice), sampled at
    20 fps. Every other sample was flagged frozen, the flagged samples cut detection into
    0.05 s stretches below `min_duration_s`: no event, where the same content without the
    duplicates gives one."""
    from tasks.video.ood import frame_stats
    from tests.tasks.video.test_ood import normal_video

    rng = np.random.default_rng(0)
    near, normal = rng.normal(size=8), rng.normal(size=8)
    content = normal_video(30, pan=1)  # 3 s at 10 fps

    def detect(frames: np.ndarray, rate: float) -> tuple[pl.DataFrame, pl.DataFrame]:
        n = len(frames)
        index = {"frame_index": np.arange(n), "t_s": np.arange(n) / rate, "emb_row": np.arange(n)}
        table = pl.DataFrame({**index, **frame_stats(frames)})
        video = VideoConfig(input="x", sample_fps=rate, events={"start": 0.0, "stop": 0.0})
        emb = rng.normal(size=(n, 8)).astype(np.float16)
        f = frame_scores("v.mp4", table, emb, near, normal, 20.0, video)
        return f, video_events("v.mp4", f, n / rate, rate, video)

    plain, plain_events = detect(content, 10.0)
    doubled, doubled_events = detect(np.repeat(content, 2, axis=0), 20.0)
    assert not plain["ood_flag"].any() and not doubled["ood_flag"].any()
    expected = [(0.0, 3.0)]  # thresholds at 0: every usable sample is part of the event
    assert plain_events.select("start_s", "end_s").rows() == expected
    assert doubled_events.select("start_s", "end_s").rows() == expected
