"""One pass over a video's packets with PyAV (demux, no decode): what every later step needs.

The pass reads each packet's presentation and decode timestamps, keyframe flag and
duration, in decode order, and for keyframes whether a decoder can really start there
(`tasks.video.decoding.nal`). It also notes how far every stream's media reaches, so that a
header's duration can be checked against the file's content. It costs a read of the file
and no decoding (about 10 ms per 2,000 packets).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av

from tasks.errors import SampleError
from tasks.video.decoding.nal import starts_clean

VIDEO_MAGIC = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")
EBML_MAGIC = b"\x1a\x45\xdf\xa3"


class Quarantine(SampleError):
    """A probe check failed: `code` is the reason, `detail` what exactly was seen."""


def short(err: BaseException) -> str:
    """First line of an error without source locations or file paths (those of temp copies)."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else type(err).__name__
    text = re.sub(r"(\[[\d:]+\]\s*)?\S+\.(cc|h|c|cpp):\d+:\s*", "", text)
    return re.sub(r":\s*'[^']*'$", "", text)[:200]


@dataclass
class Packets:
    """The video stream's packets in decode order, and facts of the container around them."""

    format: str
    codec: str
    width: int
    height: int
    sar: Fraction
    time_base: Fraction
    pts: list[int | None] = field(default_factory=list)
    dts: list[int | None] = field(default_factory=list)
    key: list[bool] = field(default_factory=list)
    intra: list[bool] = field(default_factory=list)  # keyframes a decoder can start at
    duration: list[int] = field(default_factory=list)
    declared_frames: int = 0  # the stream header's frame count (0: none)
    declared_end_s: float | None = None  # the stream header's duration (or end time)
    container_s: float | None = None  # the container header's duration, all streams
    media_end_s: float = 0.0  # latest packet end of any stream, seconds since 0
    media_start_s: float | None = None  # earliest packet start of any stream
    read_error: str | None = None  # the demuxer stopped with this error before the end
    rate: Fraction | None = None  # the stream's average frame rate, when the header has one


def _looks_like_video(head: bytes) -> bool:
    return head[4:8] in VIDEO_MAGIC or head.startswith(EBML_MAGIC)


def _duration_tag(stream: Any) -> float | None:
    """Matroska's per-track `DURATION` tag ("HH:MM:SS.nnnnnnnnn"), in seconds."""
    tag = (stream.metadata or {}).get("DURATION")
    match = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", str(tag or "").strip())
    if not match:
        return None
    h, m, s = match.groups()
    return int(h) * 3600 + int(m) * 60 + float(s)


def _header(container: Any, stream: Any) -> Packets:
    ctx = stream.codec_context
    if ctx is None:  # FFmpeg does not know the codec at all
        raise Quarantine("unsupported_codec", "unknown codec")
    tb = Fraction(stream.time_base) if stream.time_base else Fraction(1, 90000)
    declared = float(stream.duration * tb) if stream.duration else _duration_tag(stream)
    rate = stream.average_rate or stream.guessed_rate
    return Packets(
        format=container.format.name,
        codec=ctx.codec.canonical_name,
        width=ctx.width,
        height=ctx.height,
        sar=Fraction(stream.sample_aspect_ratio or 1) or Fraction(1),
        time_base=tb,
        declared_frames=int(stream.frames or 0),
        declared_end_s=declared,
        container_s=container.duration / 1e6 if container.duration else None,
        rate=Fraction(rate) if rate else None,
    )


def _media_extent(out: Packets, packet: Any) -> None:
    """Widen the media extent seen so far with one packet of any stream."""
    ts = packet.pts if packet.pts is not None else packet.dts
    if ts is None or not packet.time_base:
        return
    start = float(ts * packet.time_base)
    out.media_end_s = max(out.media_end_s, float((ts + (packet.duration or 0)) * packet.time_base))
    out.media_start_s = start if out.media_start_s is None else min(out.media_start_s, start)


def _add_video(out: Packets, packet: Any, extradata: bytes | None) -> None:
    out.pts.append(packet.pts)
    out.dts.append(packet.dts)
    out.key.append(bool(packet.is_keyframe))
    out.duration.append(int(packet.duration or 0))
    out.intra.append(bool(packet.is_keyframe) and starts_clean(out.codec, bytes(packet), extradata))


def scan_packets(path: str) -> Packets:
    """The packet pass over a local file; raises `Quarantine` for what cannot be a video.

    Codes: `truncated` (starts like a video but the container does not parse: an MP4 cut
    before its moov atom), `not_a_video` (neither, or no video stream), `no_frames`,
    `unsupported_codec` (a codec FFmpeg does not know).
    A demuxer error part-way is kept in `read_error` (the caller judges it).
    """
    with open(path, "rb") as f:
        head = f.read(16)
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, ValueError) as err:
        kind = "truncated" if _looks_like_video(head) else "not_a_video"
        raise Quarantine(kind, f"container unreadable ({short(err)})") from None
    with container:
        if not container.streams.video:
            raise Quarantine("not_a_video", "no video stream")
        stream = container.streams.video[0]
        out = _header(container, stream)
        extradata = stream.codec_context.extradata
        try:
            for packet in container.demux():
                if packet.size == 0:  # the demuxer's end-of-stream marker
                    continue
                _media_extent(out, packet)
                if packet.stream.index == stream.index and not packet.is_discard:
                    _add_video(out, packet, extradata)
        except av.FFmpegError as err:
            out.read_error = short(err)
    if not out.pts:
        raise Quarantine("no_frames")
    return out
