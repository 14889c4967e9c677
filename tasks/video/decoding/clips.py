"""Event clips and peak-frame thumbnails, cut with PyAV on the video's own clock.

A clip for `[start_s, end_s)` holds exactly the pictures shown during that span
(`Timeline.span`: from the picture shown at `start_s` to the last one that starts before
`end_s`), with their own timestamps, whatever the frame rate or container clock; a
thumbnail at `t_s` is the picture shown then (`Timeline.shown_at`), the rule sampling uses,
so a time scored in `frames.parquet` names the same picture here.

Frames are found by timestamp, never by counting: decoding starts at a clean start
(a keyframe with no leading pictures, `timeline.py`) at or before the first picture,
reached by a seek that is checked (the first packet must be that keyframe; else the file is
read from its start), and each decoded frame is placed by its pts.

The clip is a stream copy (packets remuxed, no quality loss, fast) only when that is exact:
the first picture is a clean start, the packets from it in decode order are exactly the
clip's pictures, the container is MP4/MOV/Matroska and mp4 can hold the codec, and the
picture needs no turning. Otherwise the clip is re-encoded with libx264 (mpeg4 when the
PyAV wheel lacks it), upright and in its displayed aspect (`orientation.py`): a rotated
video's clips all play upright without a display matrix. Clips carry video only.

Inputs are read through fsspec file objects (PyAV seeks in them, so a remote video is read
by ranges, not copied); clips are built in memory and written whole through
`tasks.io.storage`.
"""

from __future__ import annotations

import io
import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import av
import numpy as np
from PIL import Image

from tasks.io import storage
from tasks.video.decoding.gate import DECORD_FORMATS
from tasks.video.decoding.local import local_video
from tasks.video.decoding.orientation import Orientation, quarter_turns
from tasks.video.decoding.scan import scan_packets
from tasks.video.decoding.timeline import Timeline, build_timeline

logger = logging.getLogger(__name__)

# What PyAV and the cutter raise when a clip cannot be cut from a file's bytes.
CLIP_ERRORS = (av.FFmpegError, ValueError, IndexError, StopIteration)
ENCODER = "libx264" if "libx264" in av.codecs_available else "mpeg4"
JPEG_QUALITY = 90
# Codecs the mp4 muxer takes as they are (VP8, for one, cannot be stream-copied into mp4).
COPY_CODECS = {"h264", "hevc", "mpeg4", "vp9", "av1"}


@contextmanager
def _open_input(url: str, storage_options: dict[str, Any] | None) -> Iterator[Any]:
    fs, path = storage.get_fs(url, storage_options)
    if storage.is_local(fs):
        with av.open(path) as container:
            yield container
        return
    with fs.open(path, "rb") as f, av.open(f) as container:
        yield container


def read_clock(url: str, storage_options: dict[str, Any] | None) -> tuple[Timeline, int]:
    """(timeline, rotation) of a video, for callers without the probe's cached ones."""
    with local_video(url, storage_options) as path:
        timeline = build_timeline(scan_packets(path))
        with av.open(path) as container:
            frame = next(container.decode(video=0))
    return timeline, quarter_turns(frame.rotation)


def _packets_from(container: Any, stream: Any, line: Timeline, start: int) -> Iterator[Any]:
    """The video packets in decode order from frame `start`'s (a clean start) on: a seek,
    checked; the file's start when the seek lands elsewhere."""
    target = int(line.pts[start])
    container.seek(target, backward=True, any_frame=False, stream=stream)
    seen = False
    for packet in container.demux(stream):
        if packet.size == 0 or packet.pts is None or packet.is_discard:
            continue
        if not seen and packet.pts != target:
            if packet.pts > target:  # landed past it: read from the start instead
                break
            continue
        seen = True
        yield packet
    if seen:
        return
    container.seek(int(line.pts[0]), backward=True, any_frame=True, stream=stream)
    for packet in container.demux(stream):
        if packet.size == 0 or packet.pts is None or packet.is_discard:
            continue
        seen = seen or packet.pts == target
        if seen:
            yield packet
    if not seen:
        raise ValueError(f"frame {start} (pts {target}) not found in the file")


def _frames(container: Any, stream: Any, line: Timeline, f0: int, f1: int) -> Iterator[Any]:
    """Decoded frames `[f0, f1)` in display order, each placed by its pts (by its place in
    the decoder's output, counted from the first frame, for a `by_order` timeline)."""
    count = 0

    def place(frame: Any) -> int | None:
        nonlocal count
        count += 1
        if line.by_order:
            return count - 1
        return None if frame.pts is None else line.index_of_pts(frame.pts)

    packets = _packets_from(container, stream, line, 0 if line.by_order else line.clean_start(f0))
    for packet in itertools.chain(packets, [None]):  # None: the decoder's last pictures
        for frame in stream.decode(packet):
            index = place(frame)
            if index is None or index < f0:
                continue
            if index >= f1:
                return
            yield frame


def _copyable(container: Any, stream: Any, line: Timeline, f0: int, f1: int, rotation: int) -> bool:
    if rotation or line.by_order or container.format.name not in DECORD_FORMATS:
        return False
    if stream.codec_context.codec.canonical_name not in COPY_CODECS or not line.clean[f0]:
        return False
    block = np.sort(line.decode_pos[f0:f1])
    return bool(np.array_equal(block, np.arange(block[0], block[0] + f1 - f0)))


def _copy(container: Any, stream: Any, line: Timeline, f0: int, f1: int, out: Any) -> int:
    """Remux the packets of frames `[f0, f1)` (`_copyable` made sure they are a block)."""
    ostream = out.add_stream_from_template(stream)
    written, base = 0, None
    for packet in _packets_from(container, stream, line, f0):
        if written == f1 - f0:
            break
        base = (
            min(packet.pts, packet.dts if packet.dts is not None else packet.pts)
            if base is None
            else base
        )
        packet.pts -= base
        packet.dts = packet.pts if packet.dts is None else packet.dts - base
        packet.stream = ostream
        out.mux(packet)
        written += 1
    return written


def _picture(frame: Any, orientation: Orientation, size: tuple[int, int], fmt: str) -> Any:
    """The decoded frame upright at displayed `size` (width, height), as a VideoFrame."""
    width, height = orientation.coded_size(size)
    if not orientation.turns:
        return frame.reformat(width=width, height=height, format=fmt)
    rgb = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
    upright = av.VideoFrame.from_ndarray(orientation.upright(rgb), format="rgb24")
    return upright if fmt == "rgb24" else upright.reformat(format=fmt)


def _orientation(stream: Any, rotation: int) -> Orientation:
    ctx = stream.codec_context
    sar = stream.sample_aspect_ratio or 1
    return Orientation(ctx.width, ctx.height, rotation, sar)


def _reencode(
    container: Any, stream: Any, line: Timeline, f0: int, f1: int, out: Any, rotation: int
) -> int:
    orient = _orientation(stream, rotation)
    width, height = orient.display_size
    rate = stream.average_rate or stream.guessed_rate or 25
    ostream = out.add_stream(ENCODER, rate=rate)
    ostream.width, ostream.height = max(2, width // 2 * 2), max(2, height // 2 * 2)
    ostream.pix_fmt = "yuv420p"
    ostream.codec_context.time_base = line.time_base
    if ENCODER == "libx264":
        ostream.options = {"preset": "veryfast", "crf": "20"}
    written, base = 0, int(line.pts[f0])
    for frame in _frames(container, stream, line, f0, f1):
        new = _picture(frame, orient, (ostream.width, ostream.height), "yuv420p")
        new.pts, new.time_base = int(frame.pts) - base, line.time_base
        out.mux(ostream.encode(new))
        written += 1
    out.mux(ostream.encode())
    return written


def clip_bytes(
    url: str,
    storage_options: dict[str, Any] | None,
    start_s: float,
    end_s: float,
    timeline: Timeline | None = None,
    rotation: int | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """The mp4 bytes of `[start_s, end_s)` and `{"method", "duration_s", "n_frames"}`.

    `timeline` and `rotation` are the probe's (read from the file when not given)."""
    if not end_s > start_s:
        raise ValueError(f"empty clip [{start_s}, {end_s})")
    if timeline is None or rotation is None:
        timeline, rotation = read_clock(url, storage_options)
    f0, f1 = timeline.span(start_s, end_s)
    buf = io.BytesIO()
    with _open_input(url, storage_options) as container:
        stream = container.streams.video[0]
        copy = _copyable(container, stream, timeline, f0, f1, rotation)
        with av.open(buf, "w", format="mp4") as out:
            if copy:
                n = _copy(container, stream, timeline, f0, f1, out)
            else:
                n = _reencode(container, stream, timeline, f0, f1, out, rotation)
    if n == 0:
        raise ValueError(f"no frames in [{start_s}, {end_s}) of {url}")
    if n != f1 - f0:
        logger.warning("clip of %s [%.3f, %.3f): %d of %d frames", url, start_s, end_s, n, f1 - f0)
    last = f0 + n - 1
    seconds = float(
        (timeline.pts[last] + timeline.duration[last] - timeline.pts[f0]) * timeline.time_base
    )
    info = {"method": "copy" if copy else "reencode", "duration_s": seconds, "n_frames": n}
    logger.debug("clip %s [%.3f, %.3f): %s", url, start_s, end_s, info)
    return buf.getvalue(), info


def cut_clip(
    url: str,
    storage_options: dict[str, Any] | None,
    start_s: float,
    end_s: float,
    out_path: str,
    timeline: Timeline | None = None,
    rotation: int | None = None,
) -> dict[str, Any]:
    """Write the mp4 clip of `[start_s, end_s)` (clamped to the video) to `out_path`.

    Returns `{"method": "copy" | "reencode", "duration_s": ..., "n_frames": ...}`. The
    output goes to `out_path` through `tasks.io.storage` with the same `storage_options`.
    """
    data, info = clip_bytes(url, storage_options, start_s, end_s, timeline, rotation)
    storage.write_bytes(out_path, data, storage_options)
    return info


def thumbnail_jpeg(
    url: str,
    storage_options: dict[str, Any] | None,
    t_s: float,
    max_side: int = 512,
    timeline: Timeline | None = None,
    rotation: int | None = None,
) -> bytes:
    """JPEG of the picture shown at `t_s` (clamped to the video), upright, in its displayed
    aspect, longest side <= `max_side`."""
    if timeline is None or rotation is None:
        timeline, rotation = read_clock(url, storage_options)
    index = int(timeline.shown_at(t_s))
    with _open_input(url, storage_options) as container:
        stream = container.streams.video[0]
        frame = next(_frames(container, stream, timeline, index, index + 1), None)
        if frame is None:
            raise ValueError(f"no frame at {t_s}s in {url}")
        orient = _orientation(stream, rotation)
        image = _picture(frame, orient, orient.display_size, "rgb24").to_image()
    image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()
