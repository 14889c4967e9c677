"""One clock: frame times from timestamps, the picture shown at a time, hand-worked."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from tasks.video.decoding.scan import Packets, Quarantine
from tasks.video.decoding.timeline import Timeline, build_timeline


def packets(pts, tb=Fraction(1, 1000), key=None, dts=None, duration=None, rate=None) -> Packets:
    n = len(pts)
    key = key or [i == 0 for i in range(n)]
    return Packets(
        format="matroska,webm",
        codec="h264",
        width=64,
        height=48,
        sar=Fraction(1),
        time_base=tb,
        pts=list(pts),
        dts=list(dts or pts),
        key=key,
        intra=list(key),
        duration=list(duration or [0] * n),
        rate=rate,
    )


def test_times_are_presentation_times_from_the_first_frame() -> None:
    # a 1.2 s start offset; B-frames: decode order 0, 300, 100, 200 (ms after the offset)
    line = build_timeline(packets([1200, 1500, 1300, 1400], duration=[100] * 4))
    np.testing.assert_allclose(line.t_s, [0.0, 0.1, 0.2, 0.3])
    assert line.decode_pos.tolist() == [0, 2, 3, 1]
    assert line.end_s == pytest.approx(0.4)  # the last frame lasts its packet's 100 ms


def test_picture_shown_at_a_time_hand_worked() -> None:
    # frames at 0, 0.1, 0.3 (a dropped frame), 0.4 s
    line = build_timeline(packets([0, 100, 300, 400], duration=[100] * 4))
    got = line.shown_at(np.array([0.0, 0.05, 0.1, 0.299, 0.3, 0.35, 9.0, -1.0]))
    assert got.tolist() == [0, 0, 1, 1, 2, 2, 3, 0]
    # a clip holds the pictures shown during [start, end)
    assert line.span(0.15, 0.35) == (1, 3)  # frame 1 (shown 0.1-0.3) and frame 2
    assert line.span(0.1, 0.3) == (1, 2)  # frame 2 starts at the end: not shown during it
    assert line.span(0.31, 0.32) == (2, 3)  # shorter than a frame: still one frame


def test_a_millisecond_clock_is_read_to_half_a_tick() -> None:
    """30 fps on a 1 ms clock: frame 2 is stored at 67 ms, not 66.67; the picture shown at
    1/15 s is frame 2 (a player shows it then), not frame 1."""
    line = build_timeline(packets([round(i * 1000 / 30) for i in range(30)]))
    assert line.t_s[2] == pytest.approx(0.067)
    assert line.shown_at(np.array([2 / 30, 1 / 30, 1.0 / 3])).tolist() == [2, 1, 10]
    idx, _ = line.sample(15.0)
    assert idx.tolist() == list(range(0, 30, 2))
    assert line.span(18 / 30, 21 / 30) == (18, 21)


def test_sampling_keeps_each_frame_once_and_gives_true_times() -> None:
    line = build_timeline(packets([0, 200, 400, 600, 800], duration=[200] * 5))
    idx, t = line.sample(12.0)  # faster than the video: every frame once
    assert idx.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(t, [0.0, 0.2, 0.4, 0.6, 0.8])
    idx, t = line.sample(4.0)  # targets 0, .25, .5, .75: the pictures shown then
    assert idx.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(t, [0.0, 0.2, 0.4, 0.6])


def test_clean_starts_exclude_open_gop_keyframes_and_intra_refresh() -> None:
    # decode order: I0 P3 B1 B2 | I6(key) B4 B5: leading pictures 4, 5 follow keyframe 6
    pts = [0, 3, 1, 2, 6, 4, 5]
    key = [True, False, False, False, True, False, False]
    line = build_timeline(packets(pts, key=key))
    assert line.clean.tolist() == [True, False, False, False, False, False, False]
    # the same GOP closed: the second keyframe is a clean start
    line = build_timeline(
        packets([0, 3, 1, 2, 4, 6, 5], key=[True, False, False, False, True, False, False])
    )
    assert np.flatnonzero(line.clean).tolist() == [0, 4]
    assert line.clean_start(6) == 4 and line.clean_start(3) == 0
    p = packets([0, 1, 2, 3], key=[True, False, True, False])
    p.intra = [True, False, False, False]  # intra refresh: the keyframe is a P picture
    assert np.flatnonzero(build_timeline(p).clean).tolist() == [0]


def test_round_trip_through_the_cache_array() -> None:
    line = build_timeline(packets([10, 40, 20, 30], tb=Fraction(1, 90000), duration=[10] * 4))
    back = Timeline.from_array(line.to_array())
    assert back.time_base == Fraction(1, 90000)
    for name in ("pts", "duration", "decode_pos", "clean"):
        np.testing.assert_array_equal(getattr(back, name), getattr(line, name))


def test_restarting_timestamps_are_refused() -> None:
    """Two recordings joined with `cat`: the second's timestamps start again."""
    joined = [*range(0, 4000, 100), *range(50, 4050, 100)]
    with pytest.raises(Quarantine) as err:
        build_timeline(packets(joined))
    assert err.value.code == "unreliable_index" and "jump back" in err.value.detail
    with pytest.raises(Quarantine) as err:
        build_timeline(packets([0, 0, 0]))
    assert err.value.code == "zero_fps"


def test_missing_timestamps_fall_back_to_the_frame_rate_grid() -> None:
    """MPEG program streams stamp one packet in several: frames are counted at the stream's
    rate, in output order, when the stamps there are agree with that grid."""
    tb, rate = Fraction(1, 90000), Fraction(25)
    pts = [3600, None, None, 18000, None, None]
    line = build_timeline(packets(pts, tb=tb, dts=[None] * 6, rate=rate))
    assert line.by_order and line.n == 6
    np.testing.assert_allclose(line.t_s, np.arange(6) / 25)
    assert line.clean.tolist() == [True, False, False, False, False, False]
    off_grid = [3600, None, None, 18100, None, None]
    with pytest.raises(Quarantine):
        build_timeline(packets(off_grid, tb=tb, dts=[None] * 6, rate=rate))
    with pytest.raises(Quarantine):  # no rate to count with
        build_timeline(packets(pts, tb=tb, dts=[None] * 6))
