"""Which decoder reads a video's sampled frames exactly: decord, decord on a remux, or PyAV.

decord (fast: resize on decode, batches) reaches a frame by jumping to the keyframe
before it, and lands on another picture in some files: H.264 in AVI, MPEG-TS with B-frames
and MPEG-PS (off by up to seconds), intra-refresh H.264 (half a second), HEVC with
B-frames (open GOPs: 3 frames); it hangs for good on some MPEG-TS files; and it turns
rotated pictures in MP4 but not in Matroska (and returns 4-channel frames for some sizes).
So decord reads a file only when the file passes this gate:

1. from the packet pass, before decord opens the file: an MP4/MOV or Matroska container,
   no rotation, and every keyframe a clean start (an intra picture with no leading
   pictures: `nal.py`, `timeline.py`);
2. decord's own index: the same frame count and the same frame times as the packets, and
   the first and last frames decode;
3. decord's jumps: the four frames from the second keyframe on (within the first 400
   frames), each read through its own jump, are bit for bit the frames decoded in order
   (same decoder). Frame timestamps must increase.

A file whose container fails (1) is remuxed to MP4 by stream copy (`remux.py`, cached);
when the remux keeps every frame time and passes the whole gate, decord reads the remux
(`decord_remux`). Anything else is decoded in order by PyAV (`pyav`), which takes each
frame by its timestamp and is exact whatever the container, at about decord's speed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass

import av
import decord
import numpy as np

from tasks.errors import is_infrastructure
from tasks.video.decoding.orientation import Orientation
from tasks.video.decoding.scan import Packets, Quarantine, scan_packets, short
from tasks.video.decoding.timeline import Timeline, build_timeline

logger = logging.getLogger(__name__)

DECORD_FORMATS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"})
# frames decoded in order at most to check decord's jumps (a longer first GOP is not checked)
MAX_INDEX_CHECK = 400
Remuxer = Callable[[], AbstractContextManager[str]]


@dataclass(frozen=True)
class Source:
    """How to read one video's frames: the decoder, the local file it reads, the clock."""

    decoder: str  # decord | decord_remux | pyav
    path: str
    timeline: Timeline
    orientation: Orientation
    media: str | None = None  # a recovered copy's URL: clips are cut from it, not the input


def container_problem(packets: Packets, timeline: Timeline, orientation: Orientation) -> str | None:
    """Why decord must not read this file as it is (gate step 1), or None."""
    if packets.format not in DECORD_FORMATS:
        return f"{packets.format} container"
    if orientation.turns:
        return f"rotated {orientation.rotation} degrees"
    if timeline.by_order:
        return "frames without their own timestamps"
    keys = int(np.count_nonzero(packets.key))
    unclean = keys - int(
        np.count_nonzero(timeline.clean & np.asarray(packets.key)[timeline.decode_pos])
    )
    if unclean:
        return f"{unclean} of {keys} keyframes are no clean start (open GOP or intra refresh)"
    return None


def decord_problem(path: str, timeline: Timeline) -> str | None:
    """Why decord's index or jumps give other pictures than the timeline (steps 2-3), or None."""
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        n = len(reader)
        if n != timeline.n:
            return f"decord counts {n} frames, the packets {timeline.n}"
        starts = reader.get_frame_timestamp(list(range(n)))[:, 0].astype(np.float64)
        off = np.abs(starts - timeline.t_s) - (1e-3 + 2.5e-7 * timeline.t_s)
        if n > 1 and (not bool(np.all(np.diff(starts) > 0)) or bool(np.any(off > 0))):
            return "decord's frame times are not the packets'"
        for index in sorted({0, n - 1}):
            reader[index].asnumpy()
        return _jump_problem(path, reader, n)
    except Exception as err:  # decord raises many kinds for files it cannot read
        if is_infrastructure(err):
            raise
        return f"decord cannot read it ({short(err)})"


def _jump_problem(path: str, reader: decord.VideoReader, n_frames: int) -> str | None:
    """Frames 0-3 past the second keyframe, each reached through a jump, must be the same
    frames decoded in order (open-GOP leading pictures sit right after the keyframe)."""
    keys = [int(k) for k in reader.get_key_indices()]
    if len(keys) < 2:  # one GOP: decord never jumps
        return None
    picks = list(range(keys[1], min(n_frames, keys[1] + 4)))
    if not picks or picks[-1] > MAX_INDEX_CHECK:
        return None
    jumped = {}
    for index in picks:
        reader.seek(0)  # each frame through its own jump to the keyframe
        jumped[index] = reader.get_batch([index]).asnumpy()[0]
    in_order = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    for index in range(picks[-1] + 1):
        frame = in_order.next()
        if index in jumped and not np.array_equal(jumped[index], frame.asnumpy()):
            return f"frame {index} read through decord's index is not frame {index} in order"
    return None


def same_clock(a: Timeline, b: Timeline) -> bool:
    """Whether two timelines show the same frames at the same times (a remux's check)."""
    tol = 2 * max(a.tolerance_s, b.tolerance_s) + 1e-6
    return a.n == b.n and bool(np.allclose(a.t_s, b.t_s, rtol=0, atol=tol))


@contextmanager
def choose_source(
    path: str, packets: Packets, timeline: Timeline, orientation: Orientation, remux: Remuxer
) -> Iterator[Source]:
    """The exact way to read this file (module docstring); the remux lives while in use."""
    problem = container_problem(packets, timeline, orientation)
    if problem is None:
        problem = decord_problem(path, timeline)
        if problem is None:
            yield Source("decord", path, timeline, orientation)
            return
    elif packets.format not in DECORD_FORMATS and not orientation.turns:
        with _remux_if_exact(path, timeline, orientation, remux) as remuxed:
            if remuxed is not None:
                yield Source("decord_remux", remuxed, timeline, orientation)
                return
    logger.info("%s: PyAV decodes it in order (%s)", path, problem)
    yield Source("pyav", path, timeline, orientation)


@contextmanager
def _remux_if_exact(
    path: str, timeline: Timeline, orientation: Orientation, remux: Remuxer
) -> Iterator[str | None]:
    """The remux's local path when decord reads it exactly, else None."""
    with ExitStack() as stack:
        remuxed: str | None = None
        try:
            remuxed = stack.enter_context(remux())
            packets = scan_packets(remuxed)
            clock = build_timeline(packets)
            problem = None if same_clock(timeline, clock) else "the remux changes frame times"
            problem = problem or container_problem(packets, clock, orientation)
            problem = problem or decord_problem(remuxed, clock)
        except (Quarantine, av.FFmpegError, ValueError, OSError) as err:
            if is_infrastructure(err):
                raise
            problem = f"no remux ({short(err)})"
        if problem is not None:
            logger.info("%s: remux not used: %s", path, problem)
            remuxed = None
        yield remuxed
