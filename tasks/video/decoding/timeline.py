"""One clock per video: each frame's presentation timestamp, as a player shows it.

Frame `i` is the i-th picture in display order, i.e. the packet with the i-th smallest
presentation timestamp (pts); decord numbers frames the same way. Its time is

    t_s[i] = (pts[i] - pts[0]) * time_base

seconds after the video's first frame (a container's start offset and every other stream
are left out), and it is shown until the next frame's time (the last frame for its packet's
duration). This holds for variable frame rates (phones and dashcams drop to 15 fps in low
light) and for every container clock (1 ms in Matroska and many MP4s, 90 kHz in MPEG).

The picture *shown* at time T is the last frame with `t_s <= T`; a clock tick is the
finest a timestamp can say, so the comparison allows half a tick (at most 0.5 ms), and a
30 fps frame stored as 67 ms on a 1 ms clock is the picture at 1/15 s. Sampling, event
times, clips and thumbnails all use this rule, so a time scored anywhere names the same
picture everywhere.

A timeline is built from one packet pass (`scan.py`) and kept in the score cache
(`to_array`). Where packets lack timestamps or share them (MPEG program streams stamp one
packet in ten; the parser then guesses some wrongly), the stream's constant frame rate is
the clock, in the order the decoder outputs pictures (`by_order`: frame k at k / rate after
the first), provided every timestamp that is there and unique lies on that grid; such a
video is decoded from its start and its pictures are counted. A timeline is refused
(`unreliable_index`) when neither works: timestamps missing or shared off the grid, or
jumping back further than B-frame reordering explains (recordings joined with `cat`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from tasks.video.decoding.scan import Packets, Quarantine

# A packet's display position may differ from its decode position by B-frame reordering
# (H.264/HEVC allow 16 frames); more means the timestamps restart.
MAX_REORDER = 32
MAX_TOLERANCE_S = 0.0005
UNRELIABLE = "unreliable_index"


@dataclass(frozen=True)
class Timeline:
    """Display-order frames of one video stream (module docstring)."""

    pts: np.ndarray  # int64, strictly increasing
    duration: np.ndarray  # int64, how long each frame is shown, in time_base units
    decode_pos: np.ndarray  # int64, the frame's packet position in decode order
    clean: np.ndarray  # bool, a decoder starting at this frame's packet shows every later frame
    time_base: Fraction

    @property
    def by_order(self) -> bool:
        """Frames are known by their place in the decoder's output, not by their pts."""
        return bool(self.n and self.decode_pos[0] < 0)

    @property
    def n(self) -> int:
        return len(self.pts)

    @property
    def t_s(self) -> np.ndarray:
        return (self.pts - self.pts[0]).astype(np.float64) * float(self.time_base)

    @property
    def end_s(self) -> float:
        """When the last frame stops showing: the video stream's duration."""
        return float((self.pts[-1] + self.duration[-1] - self.pts[0]) * self.time_base)

    @property
    def tolerance_s(self) -> float:
        return min(float(self.time_base) / 2, MAX_TOLERANCE_S) + 1e-9

    def shown_at(self, times: np.ndarray | float) -> np.ndarray:
        """Index of the frame shown at each time (clamped to the first and last frame)."""
        at = np.searchsorted(self.t_s, np.asarray(times, np.float64) + self.tolerance_s, "right")
        return np.clip(at - 1, 0, self.n - 1).astype(np.int64)

    def span(self, start_s: float, end_s: float) -> tuple[int, int]:
        """Frames `[f0, f1)` shown during `[start_s, end_s)`, clamped; at least one frame."""
        f0 = int(self.shown_at(start_s))
        f1 = int(np.searchsorted(self.t_s, end_s - self.tolerance_s, "left"))
        return f0, min(self.n, max(f1, f0 + 1))

    def sample(self, sample_fps: float) -> tuple[np.ndarray, np.ndarray]:
        """(frame indices, their t_s) shown at `k / sample_fps` for every target before the
        end; a frame hit by several targets (sampling faster than the video) is kept once."""
        if not (sample_fps > 0 and self.end_s > 0):
            return np.zeros(0, np.int64), np.zeros(0)
        targets = np.arange(int(np.ceil(self.end_s * sample_fps - 1e-9))) / sample_fps
        idx = np.unique(self.shown_at(targets[targets < self.end_s - 1e-9]))
        return idx, self.t_s[idx]

    def index_of_pts(self, pts: int) -> int | None:
        """The frame with exactly this pts, or None."""
        at = int(np.searchsorted(self.pts, pts))
        return at if at < self.n and int(self.pts[at]) == pts else None

    def clean_start(self, index: int) -> int:
        """The last frame at or before `index` where decoding can start (0 if none)."""
        starts = np.flatnonzero(self.clean[: index + 1])
        return int(starts[-1]) if len(starts) else 0

    def to_array(self) -> np.ndarray:
        """int64 (n + 1, 4): a header row (time base), then pts, duration, decode_pos, clean."""
        head = [[self.time_base.numerator, self.time_base.denominator, 0, 0]]
        body = np.stack([self.pts, self.duration, self.decode_pos, self.clean.astype(np.int64)], 1)
        return np.concatenate([np.asarray(head, np.int64), body.astype(np.int64)])

    @classmethod
    def from_array(cls, a: np.ndarray) -> Timeline:
        tb = Fraction(int(a[0, 0]), int(a[0, 1]))
        body = np.asarray(a[1:], np.int64)
        return cls(body[:, 0], body[:, 1], body[:, 2], body[:, 3].astype(bool), tb)


def _filled_pts(p: Packets) -> np.ndarray:
    """Presentation timestamps in decode order; a missing one is its decode timestamp where
    the stream shows frames in decode order (every known pts equals its dts)."""
    if all(t is not None for t in p.pts):
        return np.asarray(p.pts, np.int64)
    in_order = all(a is None or a == b for a, b in zip(p.pts, p.dts, strict=True))
    if in_order and all(d is not None for d in p.dts):
        return np.asarray([d if t is None else t for t, d in zip(p.pts, p.dts, strict=True)])
    missing = sum(t is None for t in p.pts)
    raise Quarantine(UNRELIABLE, f"{missing} of {len(p.pts)} frames have no timestamp")


def _order(pts: np.ndarray) -> np.ndarray:
    """Decode positions in display order; refuses timestamps that cannot order frames."""
    if len(pts) > 1 and pts.min() == pts.max():
        raise Quarantine("zero_fps")
    order = np.argsort(pts, kind="stable")
    shared = int(len(pts) - len(np.unique(pts)))
    if shared:
        raise Quarantine(UNRELIABLE, f"{shared} frames share another frame's timestamp")
    jump = int(np.abs(np.argsort(order) - np.arange(len(pts))).max(initial=0))
    if jump > MAX_REORDER:
        raise Quarantine(
            UNRELIABLE, f"timestamps jump back by {jump} frames (recordings joined together?)"
        )
    return order


def _clean(p: Packets, pts: np.ndarray) -> np.ndarray:
    """Per packet (decode order): a keyframe decoders can start at, displayed after every
    packet before it and before every packet after it (no leading pictures)."""
    before = np.maximum.accumulate(np.r_[np.iinfo(np.int64).min, pts[:-1]])
    after = np.minimum.accumulate(np.r_[pts[1:], np.iinfo(np.int64).max][::-1])[::-1]
    return np.asarray(p.intra, bool) & (before < pts) & (pts < after)


def _durations(p: Packets, pts: np.ndarray, order: np.ndarray) -> np.ndarray:
    shown = pts[order]
    gaps = np.diff(shown)
    last = p.duration[int(order[-1])]
    if last <= 0:
        rate = float(np.median(gaps)) if len(gaps) else 0.0
        if rate <= 0 and p.rate:
            rate = float(1 / (p.rate * p.time_base))
        last = max(1, round(rate))
    return np.r_[gaps, last].astype(np.int64)


def _order_clock(p: Packets) -> Timeline | None:
    """Frames at the stream's frame rate in output order, when the timestamps that are
    there and unique all lie on that grid (module docstring); else None."""
    first, n = p.pts[0], len(p.pts)
    if not p.rate or first is None or not p.key[0] or not p.intra[0]:
        return None
    ticks = 1 / (Fraction(p.rate) * p.time_base)  # time_base units per frame
    counts = Counter(t for t in p.pts if t is not None)
    slots = [(t - first) / ticks for t, c in counts.items() if c == 1]
    on_grid = all(abs(s - round(s)) * ticks <= 1 and 0 <= round(s) < n for s in slots)
    if not on_grid or len({round(s) for s in slots}) != len(slots):
        return None
    pts = np.asarray([first + round(k * ticks) for k in range(n)], np.int64)
    clean = np.zeros(n, bool)
    clean[0] = True
    return Timeline(pts, np.r_[np.diff(pts), round(ticks)], np.full(n, -1), clean, p.time_base)


def build_timeline(packets: Packets) -> Timeline:
    """The timeline of a packet pass; raises `Quarantine` (module docstring)."""
    try:
        pts = _filled_pts(packets)
        order = _order(pts)
    except Quarantine as err:
        clock = _order_clock(packets) if err.code == UNRELIABLE else None
        if clock is None:
            raise
        return clock
    clean = _clean(packets, pts)
    return Timeline(
        pts=pts[order],
        duration=_durations(packets, pts, order),
        decode_pos=order.astype(np.int64),
        clean=clean[order],
        time_base=packets.time_base,
    )
