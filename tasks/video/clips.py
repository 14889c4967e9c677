"""Event clips and peak-frame thumbnails, cut with PyAV.

Frame `i` of a video shows at `i / fps` after its first frame, the rule `tasks.video.decode`
uses, so a time scored there names the same frame here. A clip for `[start_s, end_s)` holds
frames `frame_at(start_s)` up to, not including, `frame_at(end_s)` (nearest frames): its length is
within one frame interval of `end_s - start_s`, and its first frame is the frame at
`start_s`.

The clip is a stream copy (packets remuxed, no quality loss, fast) only when it can be exact:
the first frame is a keyframe, the stream has no B-frames (with B-frames, packets in decode
order may reference frames past the cut) and mp4 can hold the codec. Otherwise the few
seconds are re-encoded with libx264 (mpeg4 when the PyAV wheel lacks it). Clips carry video
only.

Inputs are read through fsspec file objects (PyAV seeks in them, so a remote video is read
by ranges, not copied); clips are built in memory and written whole through
`tasks.io.storage`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import Any

import av
from PIL import Image

from tasks.io import storage
from tasks.video.decode import frame_at

logger = logging.getLogger(__name__)

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


class _Timeline:
    """Maps between a stream's timestamps and frame indices (frame `i` shows at `i / fps`)."""

    def __init__(self, stream: Any) -> None:
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise ValueError("video has no frame rate")
        self.rate = Fraction(rate)
        self.fps = float(rate)
        self.time_base = stream.time_base
        self.first = stream.start_time or 0
        self.n_frames = stream.frames or None
        if self.n_frames is None and stream.duration:
            self.n_frames = round(float(stream.duration * stream.time_base) * self.fps)

    def index(self, pts: int) -> int:
        return round(float((pts - self.first) * self.time_base) * self.fps)

    def pts(self, index: int) -> int:
        return self.first + int(Fraction(index) / self.rate / self.time_base)

    def frame_range(self, start_s: float, end_s: float) -> tuple[int, int]:
        """Frames `[f0, f1)` of a clip, clamped to the video; at least one frame."""
        f0, f1 = max(0, frame_at(start_s, self.fps)), frame_at(end_s, self.fps)
        if self.n_frames:
            f0, f1 = min(f0, self.n_frames - 1), min(f1, self.n_frames)
        return f0, max(f1, f0 + 1)


def _copyable(stream: Any) -> bool:
    ctx = stream.codec_context
    return ctx.codec.canonical_name in COPY_CODECS and not ctx.has_b_frames


def _first_packet_index(container: Any, stream: Any, line: _Timeline, f0: int) -> int | None:
    """Index of the frame a seek to `f0` lands on: the keyframe at or before it."""
    container.seek(line.pts(f0), backward=True, any_frame=False, stream=stream)
    for packet in container.demux(stream):
        if packet.pts is not None:
            return line.index(packet.pts)
    return None


def _copy(container: Any, stream: Any, line: _Timeline, f0: int, f1: int, out: Any) -> int:
    """Remux packets of frames `[f0, f1)`; the seek already sits on f0's keyframe."""
    ostream = out.add_stream_from_template(stream)
    container.seek(line.pts(f0), backward=True, any_frame=False, stream=stream)
    base, written = line.pts(f0), 0
    for packet in container.demux(stream):
        if packet.pts is None or line.index(packet.pts) >= f1:
            break
        packet.pts -= base
        packet.dts = packet.pts
        packet.stream = ostream
        out.mux(packet)
        written += 1
    return written


def _frames(container: Any, stream: Any, line: _Timeline, f0: int, f1: int) -> Iterator[Any]:
    """Decoded frames `[f0, f1)`, decoding from the keyframe before f0."""
    container.seek(line.pts(f0), backward=True, any_frame=False, stream=stream)
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        index = line.index(frame.pts)
        if index >= f1:
            return
        if index >= f0:
            yield frame


def _reencode(container: Any, stream: Any, line: _Timeline, f0: int, f1: int, out: Any) -> int:
    ostream = out.add_stream(ENCODER, rate=line.rate)
    ctx = stream.codec_context
    ostream.width, ostream.height = max(2, ctx.width // 2 * 2), max(2, ctx.height // 2 * 2)
    ostream.pix_fmt = "yuv420p"
    if ENCODER == "libx264":
        ostream.options = {"preset": "veryfast", "crf": "20"}
    written = 0
    for frame in _frames(container, stream, line, f0, f1):
        new = frame.reformat(width=ostream.width, height=ostream.height, format="yuv420p")
        new.pts, new.time_base = written, 1 / line.rate
        out.mux(ostream.encode(new))
        written += 1
    out.mux(ostream.encode())
    return written


def clip_bytes(
    url: str, storage_options: dict[str, Any] | None, start_s: float, end_s: float
) -> tuple[bytes, dict[str, Any]]:
    """The mp4 bytes of `[start_s, end_s)` and `{"method", "duration_s", "n_frames"}`."""
    if not end_s > start_s:
        raise ValueError(f"empty clip [{start_s}, {end_s})")
    buf = io.BytesIO()
    with _open_input(url, storage_options) as container:
        stream = container.streams.video[0]
        line = _Timeline(stream)
        f0, f1 = line.frame_range(start_s, end_s)
        exact = _first_packet_index(container, stream, line, f0) == f0
        method = "copy" if exact and _copyable(stream) else "reencode"
        with av.open(buf, "w", format="mp4") as out:
            cut = _copy if method == "copy" else _reencode
            n = cut(container, stream, line, f0, f1, out)
    if n == 0:
        raise ValueError(f"no frames in [{start_s}, {end_s}) of {url}")
    if n != f1 - f0:
        logger.warning("clip of %s [%.3f, %.3f): %d of %d frames", url, start_s, end_s, n, f1 - f0)
    info = {"method": method, "duration_s": n / line.fps, "n_frames": n}
    logger.debug("clip %s [%.3f, %.3f): %s", url, start_s, end_s, info)
    return buf.getvalue(), info


def cut_clip(
    url: str,
    storage_options: dict[str, Any] | None,
    start_s: float,
    end_s: float,
    out_path: str,
) -> dict[str, Any]:
    """Write the mp4 clip of `[start_s, end_s)` (clamped to the video) to `out_path`.

    Returns `{"method": "copy" | "reencode", "duration_s": ..., "n_frames": ...}`. The
    output goes to `out_path` through `tasks.io.storage` with the same `storage_options`.
    """
    data, info = clip_bytes(url, storage_options, start_s, end_s)
    storage.write_bytes(out_path, data, storage_options)
    return info


def thumbnail_jpeg(
    url: str, storage_options: dict[str, Any] | None, t_s: float, max_side: int = 512
) -> bytes:
    """JPEG of the frame shown at `t_s` (clamped to the video), longest side <= `max_side`."""
    with _open_input(url, storage_options) as container:
        stream = container.streams.video[0]
        line = _Timeline(stream)
        f0, _ = line.frame_range(t_s, t_s)
        frame = next(_frames(container, stream, line, f0, f0 + 1), None)
        if frame is None:
            raise ValueError(f"no frame at {t_s}s in {url}")
        image = frame.to_image()
    image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()
