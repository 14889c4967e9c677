"""Probe one input video: metadata for `videos.parquet`, or a quarantine reason.

A bad file never raises: it gets `status` quarantined, an error code and a detail. Checks
run cheapest first and the first failure is the code:

- `empty_file`: zero bytes.
- `not_a_video`: the container cannot be parsed and does not start like an
  ISO-BMFF/Matroska file, or it holds no video stream.
- `truncated`: the container starts like a video but cannot be parsed (an mp4 cut
  before its moov atom), or decord stops reading before the end (an mp4 whose moov atom
  is present but whose media data is cut), or the first or last frame cannot be decoded.
  A partly decodable file is quarantined rather than scored: its tail is missing, and a
  recorder that cut one file is more likely to have corrupted the rest of it.
- `unsupported_codec`: a video stream that decord's FFmpeg has no decoder for.
- `no_frames`, `zero_fps`, `absurd_duration`: decodable but unusable timing.
- `unreliable_index`: decord reaches a sampled frame by jumping to its keyframe, and in
  some files (H.264 in AVI, MPEG-TS with B-frames, MPEG-PS, intra-refresh H.264, HEVC with
  B-frames in MP4) it lands on another picture, off by frames to seconds: scores would be
  published against the wrong moments. Frame timestamps must increase, and the four
  frames from the second keyframe on, each read through decord's index, must be the very
  pictures decoded in order (bit for bit: same decoder); a stream-copy remux to MP4 fixes
  AVI, TS and PS files.

fps and the frame count come from decord, the decoder the scoring stage uses; the codec
name and size from PyAV. Everything opens through `tasks.io.storage`, so s3:// works too.
"""

from __future__ import annotations

import logging
import math
import os
import re
from typing import Any

import av
import decord
import numpy as np

from tasks.errors import SampleError, is_infrastructure
from tasks.video.decode import local_video

logger = logging.getLogger(__name__)

VIDEO_MAGIC = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")
EBML_MAGIC = b"\x1a\x45\xdf\xa3"
# Frames may end this much before the header's duration (audio, rounding) without the file
# counting as cut: a container without an index (Matroska) just ends early when truncated.
MISSING_TAIL_S = 1.0


class Quarantine(SampleError):
    """A probe check failed: `code` is the reason, `detail` what exactly was seen."""


def _result(url: str, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "video": url,
        "status": "ok",
        "error": None,
        "error_detail": None,
        "duration_s": None,
        "fps": None,
        "width": None,
        "height": None,
        "codec": None,
        "n_frames": None,
    }
    row.update(fields)
    return row


def _looks_like_video(head: bytes) -> bool:
    return head[4:8] in VIDEO_MAGIC or head.startswith(EBML_MAGIC)


def _short(err: BaseException) -> str:
    """First line of an error without source locations or file paths (those of temp copies)."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else type(err).__name__
    text = re.sub(r"(\[[\d:]+\]\s*)?\S+\.(cc|h|c|cpp):\d+:\s*", "", text)
    return re.sub(r":\s*'[^']*'$", "", text)[:200]


def _container_info(path: str, info: dict[str, Any]) -> None:
    """Checks PyAV answers from the container header and first packet; fills `info`."""
    with open(path, "rb") as f:
        head = f.read(16)
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, ValueError) as err:
        kind = "truncated" if _looks_like_video(head) else "not_a_video"
        raise Quarantine(kind, f"container unreadable ({_short(err)})") from None
    with container:
        if not container.streams.video:
            raise Quarantine("not_a_video", "no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        info.update(codec=ctx.codec.canonical_name, width=ctx.width, height=ctx.height)
        info["duration_s"] = _declared_duration(container, stream)
        if not _has_packet(container, stream):
            raise Quarantine("no_frames")


def _has_packet(container: Any, stream: Any) -> bool:
    """True when the stream holds at least one media packet (reads up to the first one)."""
    return any(packet.size > 0 for packet in container.demux(stream))


def _declared_duration(container: Any, stream: Any) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1e6
    return None


def _check_duration(seconds: float | None, max_duration_s: float) -> None:
    if seconds is not None and seconds > max_duration_s:
        raise Quarantine("absurd_duration", f"{seconds:.1f}s > {max_duration_s:g}s")


def _decode_info(path: str, info: dict[str, Any]) -> None:
    """Checks that need decord, which indexes every packet on open: a cut file fails here."""
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    except AssertionError:
        raise Quarantine("no_frames") from None
    except (decord.DECORDError, RuntimeError) as err:
        msg = _short(err)
        if "cannot find video stream" in msg:
            raise Quarantine("unsupported_codec", str(info["codec"])) from None
        raise Quarantine("truncated", f"media data unreadable ({msg})") from None
    n_frames, fps = len(reader), float(reader.get_avg_fps())
    if not math.isfinite(fps) or fps <= 0:
        raise Quarantine("zero_fps")
    declared, decoded = info.get("duration_s"), n_frames / fps
    info.update(fps=fps, n_frames=n_frames, duration_s=decoded)
    if declared is not None and decoded < declared - max(MISSING_TAIL_S, 3 / fps):
        raise Quarantine("truncated", f"{decoded:.2f}s of frames, header says {declared:.2f}s")
    for index in sorted({0, n_frames - 1}):
        try:
            reader[index].asnumpy()
        except (decord.DECORDError, RuntimeError, IndexError) as err:
            raise Quarantine("truncated", f"frame {index} of {n_frames} ({_short(err)})") from None
    _check_index(path, reader, n_frames)


# frames decoded in order at most to check decord's index (a longer first GOP is not checked)
MAX_INDEX_CHECK = 400


def _check_index(path: str, reader: decord.VideoReader, n_frames: int) -> None:
    """Quarantine a file in which decord's frame index leads to another picture (module
    docstring): frame timestamps must increase (H.264 in AVI has none, joined TS segments
    restart them), and the frames 0-3 past the second keyframe, each reached through a jump,
    must be the same frames decoded in order (open-GOP leading pictures sit right after the
    keyframe)."""
    if n_frames > 1:
        starts = reader.get_frame_timestamp(list(range(n_frames)))[:, 0]
        if not bool(np.all(np.diff(starts) > 0)):
            raise Quarantine("unreliable_index", f"frame timestamps do not increase ({ADVICE})")
    keys = [int(k) for k in reader.get_key_indices()]
    if len(keys) < 2:  # one GOP: decord never jumps
        return
    picks = list(range(keys[1], min(n_frames, keys[1] + 4)))
    if not picks or picks[-1] > MAX_INDEX_CHECK:
        return
    jumped = {}
    for index in picks:
        reader.seek(0)  # each frame through its own jump to the keyframe
        jumped[index] = reader.get_batch([index]).asnumpy()[0]
    in_order = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    for index in range(picks[-1] + 1):
        frame = in_order.next()
        if index in jumped and not np.array_equal(jumped[index], frame.asnumpy()):
            raise Quarantine(
                "unreliable_index",
                f"frame {index} read through decord's index is not frame {index} decoded "
                f"in order ({ADVICE})",
            )


ADVICE = (
    "AVI, MPEG-TS and MPEG-PS files: remux to MP4 with ffmpeg -i IN -c copy OUT.mp4; "
    "others: re-encode"
)


def probe_video(
    url: str, storage_options: dict | None = None, max_duration_s: float = 6 * 3600
) -> dict[str, Any]:
    """Metadata of one video, `status` "ok" or "quarantined" with the reason in `error`.

    A remote video is fetched first: a store that fails to deliver it fails the task (the
    error policy), only what the file itself holds can quarantine it.
    """
    with local_video(url, storage_options) as path:
        return probe_local(path, url, max_duration_s)


def probe_local(path: str, url: str, max_duration_s: float) -> dict[str, Any]:
    """`probe_video` of a local file; `url` names it in the result."""
    info: dict[str, Any] = {}
    try:
        if os.path.getsize(path) == 0:
            raise Quarantine("empty_file")
        _container_info(path, info)
        _check_duration(info["duration_s"], max_duration_s)
        _decode_info(path, info)
        _check_duration(info["duration_s"], max_duration_s)
    except Quarantine as reason:
        logger.warning("quarantined %s: %s", url, reason)
        return _result(
            url, status="quarantined", error=reason.code, error_detail=reason.detail, **info
        )
    except Exception as err:  # an odd library failure on this file: still a row...
        if is_infrastructure(err):  # ...unless the disk or memory is what failed
            raise
        logger.warning("quarantined %s: unreadable (%s)", url, _short(err))
        return _result(
            url, status="quarantined", error="unreadable", error_detail=_short(err), **info
        )
    return _result(url, **info)
