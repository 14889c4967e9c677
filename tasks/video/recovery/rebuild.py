"""Rebuild a playable MP4 from a moov-less recording's media data and a reference file.

The reference is a healthy recording of the same camera: its avcC (the sequence and picture
parameter sets, the NAL length size) describes how the lost file was coded, and its frame
duration how often the camera took a picture. The pictures found in the media data
(`mdat.walk`) are muxed with PyAV into a new MP4 under the reference's stream parameters,
each at its place in display order (picture order count) times the reference's frame
duration. Audio is left out (clips carry video only).

What a power cut loses cannot be recovered: the real timestamps (the rebuilt clock is the
reference's nominal rate, so a camera that dropped its rate in the dark is stretched) and
the pictures after the last complete one.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import av.logging
import numpy as np

from tasks.video.decoding.scan import short
from tasks.video.recovery.h264 import PocCounter, Pps, Sps, parse_pps, parse_sps, taller_sps
from tasks.video.recovery.mdat import Picture, Walker, media_region, top_level_boxes

# pictures decoded to check that the reference's parameter sets fit the media data
FIT_CHECK_FRAMES = 3


class Unrecoverable(ValueError):
    """The file cannot be rebuilt with this reference (the message says why)."""


@dataclass(frozen=True)
class Reference:
    """What a healthy recording tells about its camera's stream."""

    path: str
    width: int
    height: int
    extradata: bytes  # the avcC record
    length_size: int
    sps: dict[int, Sps]
    pps: dict[int, Pps]
    time_base: Fraction
    frame_ticks: int  # one frame's duration in time_base units


def parse_avcc(extradata: bytes) -> tuple[int, list[bytes], list[bytes]]:
    """(NAL length size, SPS units, PPS units) of an avcC record (ISO 14496-15 5.3.3)."""
    if len(extradata) < 7 or extradata[0] != 1:
        raise Unrecoverable("the reference has no avcC record")
    length_size = (extradata[4] & 3) + 1
    pos, units = 5, []
    for count_mask in (0x1F, 0xFF):
        count = extradata[pos] & count_mask
        pos += 1
        found = []
        for _ in range(count):
            n = int.from_bytes(extradata[pos : pos + 2], "big")
            found.append(extradata[pos + 2 : pos + 2 + n])
            pos += 2 + n
        units.append(found)
    return length_size, units[0], units[1]


def taller_avcc(extradata: bytes) -> bytes:
    """The avcC record with every SPS one macroblock row taller (`h264.taller_sps`)."""
    _, sps_units, pps_units = parse_avcc(extradata)
    out = bytearray(extradata[:5])
    for mask, units in ((0xE0, [taller_sps(u) for u in sps_units]), (0, pps_units)):
        out.append(mask | len(units))
        for unit in units:
            out += len(unit).to_bytes(2, "big") + unit
    out += extradata[len(_avcc_body(extradata)) :]  # profile-specific tail (high profiles)
    return bytes(out)


def _avcc_body(extradata: bytes) -> bytes:
    """The avcC record up to the end of its last PPS."""
    pos = 5
    for mask in (0x1F, 0xFF):
        count = extradata[pos] & mask
        pos += 1
        for _ in range(count):
            pos += 2 + int.from_bytes(extradata[pos : pos + 2], "big")
    return extradata[:pos]


def read_reference(path: str) -> Reference:
    """The stream parameters of a healthy H.264 recording; `Unrecoverable` otherwise."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx.codec.canonical_name != "h264":
            raise Unrecoverable(f"the reference is {ctx.codec.canonical_name}, not H.264")
        extra = bytes(ctx.extradata or b"")
        length_size, sps_units, pps_units = parse_avcc(extra)
        dts = [p.dts for p in container.demux(stream) if p.size and p.dts is not None]
    if len(dts) < 2:
        raise Unrecoverable("the reference has under two frames")
    try:
        sps = {s.sps_id: s for s in map(parse_sps, sps_units)}
        pps = {p.pps_id: p for p in map(parse_pps, pps_units)}
    except ValueError as err:
        raise Unrecoverable(f"the reference's parameter sets do not parse ({err})") from None
    ticks = int(np.median(np.diff(np.asarray(dts, np.int64))))
    if ticks <= 0:
        raise Unrecoverable("the reference has no frame rate")
    tb = Fraction(stream.time_base)
    return Reference(path, ctx.width, ctx.height, extra, length_size, sps, pps, tb, ticks)


def display_order(pictures: list[Picture], reference: Reference) -> list[int]:
    """Each picture's place in display order (picture order count within each IDR period,
    periods one after another); pictures after a gap in the last period's order are
    marked -1 (their predecessors in display order were cut off)."""
    counter, poc, period = PocCounter(), [], []
    sps = reference.sps
    for pic in pictures:
        counter_sps = sps[reference.pps[pic.first.pps_id].sps_id]
        period.append(period[-1] + 1 if period and pic.first.idr else (period[-1] if period else 0))
        poc.append(counter.next(pic.first, counter_sps))
    keys = np.lexsort((np.asarray(poc), np.asarray(period)))
    order = np.empty(len(pictures), np.int64)
    order[keys] = np.arange(len(pictures))
    last = [i for i in range(len(pictures)) if period[i] == period[-1]]
    shown = sorted(poc[i] for i in last)
    steps = np.diff(shown)
    step = int(steps[steps > 0].min()) if np.any(steps > 0) else 1
    hole = next((k for k in range(1, len(shown)) if shown[k] - shown[k - 1] > step), None)
    result = order.tolist()
    if hole is not None:
        for i in last:
            if poc[i] >= shown[hole]:
                result[i] = -1
    return result


def _mux(
    src: np.ndarray,
    pictures: list[Picture],
    places: list[int],
    ref: Reference,
    dst: str,
    extradata: bytes | None = None,
) -> int:
    keep = [(p, at) for p, at in zip(pictures, places, strict=True) if at >= 0]
    delay = max((i - at for i, (_, at) in enumerate(keep)), default=0)
    with av.open(ref.path) as template, av.open(dst, "w", format="mp4") as out:
        stream = out.add_stream_from_template(template.streams.video[0])
        stream.codec_context.extradata = extradata or ref.extradata
        for i, (pic, at) in enumerate(keep):
            packet = av.Packet(bytes(src[pic.start : pic.end]))
            packet.time_base = ref.time_base
            packet.dts = i * ref.frame_ticks
            packet.pts = (at + delay) * ref.frame_ticks
            packet.duration = ref.frame_ticks
            packet.is_keyframe = pic.intra
            packet.stream = stream
            out.mux(packet)
    return len(keep)


def decode_problem(path: str) -> str | None:
    """Why the first pictures of `path` do not decode cleanly, or None. FFmpeg conceals a
    slice that does not fit its parameter set without an error, but says so in its log,
    which is read here; `aggressive` makes it check that a slice ends where it should."""
    level = av.logging.get_level()
    av.logging.set_level(av.logging.INFO)
    try:
        with av.logging.Capture(True) as logs, av.open(path) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1  # its log lines stay on this thread
            stream.codec_context.options = {"err_detect": "aggressive+explode"}
            frames = list(itertools.islice(container.decode(stream), FIT_CHECK_FRAMES))
    except av.FFmpegError as err:
        return f"does not decode with the reference's parameters ({short(err)})"
    finally:
        av.logging.set_level(level)
    concealed = [text for lvl, _, text in logs if lvl <= av.logging.INFO and "conceal" in text]
    if concealed:
        return f"the reference's parameters do not fit ({concealed[0].strip()})"
    return None if frames else "no picture decodes with the reference's parameters"


def fits(src: np.ndarray, pictures: list[Picture], reference: Reference, dst: str) -> None:
    """Raise `Unrecoverable` unless the first pictures decode cleanly with the reference's
    parameters and fail with a parameter set one macroblock row taller: a slice of a taller
    picture decodes without a complaint under a shorter parameter set (the decoder stops
    after the rows it expects), so the height is tried from above."""
    places = list(range(len(pictures)))
    _mux(src, pictures, places, reference, dst)
    problem = decode_problem(dst)
    if problem is not None:
        raise Unrecoverable(problem)
    _mux(src, pictures, places, reference, dst, taller_avcc(reference.extradata))
    if decode_problem(dst) is None:
        raise Unrecoverable("the pictures are taller than the reference's")


def rebuild(src: str, reference: Reference, dst: str) -> dict[str, Any]:
    """Write the MP4 rebuilt from `src`'s media data to `dst`; `Unrecoverable` when
    nothing of it can be rebuilt with this reference. Returns what was recovered.

    The first pictures are rebuilt and decoded on their own first (`fits`), so a reference
    of another camera is turned down before the whole file is walked."""
    size = os.path.getsize(src)
    if size == 0:
        raise Unrecoverable("empty file")
    with open(src, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _rebuild(np.frombuffer(mm, np.uint8), size, reference, dst)
    finally:
        with contextlib.suppress(BufferError):  # a view still held: closed when collected
            mm.close()


def _rebuild(data: np.ndarray, size: int, reference: Reference, dst: str) -> dict[str, Any]:
    boxes = top_level_boxes(bytes(data[:4096]), size, lambda o, n: bytes(data[o : o + n]))
    region = media_region(boxes, size)
    if region is None:
        raise Unrecoverable("no media data without an index")
    walker = Walker(data, region[1], reference.length_size, reference.sps, reference.pps)
    found = walker.pictures(region[0])
    pictures = list(itertools.islice(found, FIT_CHECK_FRAMES))
    if not pictures:
        raise Unrecoverable("no picture of the reference's stream in the media data")
    fits(data, pictures, reference, dst)
    pictures += found
    written = _mux(data, pictures, display_order(pictures, reference), reference, dst)
    return {
        "frames": written,
        "seconds": round(written * reference.frame_ticks * float(reference.time_base), 6),
        "media_bytes": region[1] - region[0],
        "skipped_bytes": walker.skipped,
    }
