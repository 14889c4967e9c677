"""Probe one input video: metadata for `videos.parquet` and the way to decode it, or a
quarantine reason.

A bad file never raises: it gets `status` quarantined, an error code and a detail. Checks
run cheapest first and the first failure is the code:

- `empty_file`: zero bytes.
- `not_a_video`: the container cannot be parsed and does not start like an
  ISO-BMFF/Matroska file, or it holds no video stream.
- `truncated`: the container starts like a video but cannot be parsed (an MP4 cut before
  its moov atom: `references` can rebuild it, below); or the video stream holds fewer
  frames, or ends earlier, than its own header says (an MP4 whose media data is cut, a
  Matroska file that just stops); or no stream reaches the end the container's header
  gives. Other streams (audio running past the video) and a start offset do not count.
- `no_frames`, `zero_fps`, `absurd_duration`: readable but unusable timing.
- `unreliable_index`: the frames' timestamps cannot order them (`timeline.py`).
- `unsupported_codec` (no decoder for it), `decode_error` (the first frame does not decode).

**Recovered** files (status `recovered`, error `truncated`, the detail says how): a file
cut after an intact header is read as its readable prefix (the frames before the cut,
copied into an MP4); a moov-less MP4/MOV given `references` (healthy recordings of the same
camera, tried in order) is rebuilt from its media data (`tasks.video.recovery`), and
without a reference that fits it is quarantined `no_reference`. Either copy is cached and
read instead of the input, clips included (`Source.media`).

The duration, frame count and mean fps are the video stream's own (`timeline.py`: first
frame to the end of the last one); `rotation` and `display_width`/`display_height` what a
player shows (`orientation.py`); `decoder` the path that reads the file exactly
(`gate.py`). Everything opens through `tasks.io.storage`, so s3:// works too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from functools import partial
from typing import Any

import av

from tasks.errors import SampleError, is_infrastructure
from tasks.video.decoding.decode import Chunk, iter_source_chunks
from tasks.video.decoding.gate import Source, choose_source
from tasks.video.decoding.local import local_video
from tasks.video.decoding.orientation import Orientation, quarter_turns
from tasks.video.decoding.remux import RemuxStore, remuxed
from tasks.video.decoding.scan import Packets, Quarantine, scan_packets, short
from tasks.video.decoding.timeline import Timeline, build_timeline
from tasks.video.recovery.copies import Candidate, prefix, rebuild_with, recovered
from tasks.video.recovery.rebuild import Unrecoverable

logger = logging.getLogger(__name__)

# A video stream may end this much before its header's duration (rounding, an edit list)
# without counting as cut: a container without an index (Matroska) just ends early.
MISSING_TAIL_S = 1.0
RECOVERY_ERRORS = (Unrecoverable, av.FFmpegError, ValueError)
PROBE_FIELDS = (
    "duration_s",
    "fps",
    "width",
    "height",
    "codec",
    "n_frames",
    "rotation",
    "display_width",
    "display_height",
    "decoder",
    "reference",
)


def _result(url: str, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"video": url, "status": "ok", "error": None, "error_detail": None}
    row.update(dict.fromkeys(PROBE_FIELDS))
    row.update(fields)
    return row


class Incomplete(Quarantine):
    """The header is intact but the file stops early: its readable prefix is recovered."""


def _check_duration(seconds: float | None, max_duration_s: float) -> None:
    if seconds is not None and seconds > max_duration_s:
        raise Quarantine("absurd_duration", f"{seconds:.1f}s > {max_duration_s:g}s")


def _check_complete(p: Packets, timeline: Timeline) -> None:
    """`truncated` when the video stream is shorter than its header says (module docstring)."""
    frames = len(p.pts)
    if p.declared_frames and frames < p.declared_frames:
        raise Incomplete("truncated", f"{frames} of {p.declared_frames} frames in the file")
    tail = max(MISSING_TAIL_S, 3 * float(timeline.duration.max() * timeline.time_base))
    # a header's duration may be the stream's span or its end time: the longer one counts
    end = float((timeline.pts[-1] + timeline.duration[-1]) * timeline.time_base)
    seen = max(timeline.end_s, end)
    if p.declared_end_s and seen < p.declared_end_s - tail:
        detail = f"{timeline.end_s:.2f}s of frames, header says {p.declared_end_s:.2f}s"
        raise Incomplete("truncated", detail)
    media = max(p.media_end_s, p.media_end_s - (p.media_start_s or 0.0))
    if p.container_s and media < p.container_s - tail:
        detail = f"{timeline.end_s:.2f}s of frames, header says {p.container_s:.2f}s"
        raise Incomplete("truncated", detail)
    if p.read_error:
        raise Incomplete("truncated", f"media data unreadable ({p.read_error})")


def _first_frame(path: str, p: Packets) -> Orientation:
    """Decode the first frame with PyAV: the codec must be readable; its display matrix
    gives the rotation."""
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            frame = next(container.decode(stream), None)
    except av.FFmpegError as err:
        if "decoder" in str(err).lower() or isinstance(err, av.error.DecoderNotFoundError):
            raise Quarantine("unsupported_codec", p.codec) from None
        raise Quarantine("decode_error", f"frame 0 ({short(err)})") from None
    except av.codec.codec.UnknownCodecError:
        raise Quarantine("unsupported_codec", p.codec) from None
    if frame is None:
        raise Quarantine("decode_error", "no frame decodes")
    return Orientation(p.width, p.height, quarter_turns(frame.rotation), p.sar)


def _inspect(path: str, max_duration_s: float, info: dict[str, Any]) -> tuple:
    """Every probe check; fills `info` as facts become known."""
    if os.path.getsize(path) == 0:
        raise Quarantine("empty_file")
    packets = scan_packets(path)
    info.update(codec=packets.codec, width=packets.width, height=packets.height)
    _check_duration(packets.container_s, max_duration_s)
    timeline = build_timeline(packets)
    end = timeline.end_s
    info.update(duration_s=end, n_frames=timeline.n, fps=timeline.n / end if end > 0 else None)
    _check_complete(packets, timeline)
    _check_duration(end, max_duration_s)
    if not end > 0:
        raise Quarantine("zero_fps")
    orientation = _first_frame(path, packets)
    display_width, display_height = orientation.display_size
    info.update(
        rotation=orientation.rotation, display_width=display_width, display_height=display_height
    )
    return packets, timeline, orientation


@contextmanager
def open_video(
    path: str,
    url: str,
    max_duration_s: float,
    store: RemuxStore | None = None,
    references: list[Candidate] | None = None,
    storage_options: dict[str, Any] | None = None,
    recover: bool = True,
) -> Iterator[tuple[dict[str, Any], Source | None]]:
    """(videos.parquet row, how to read it) of a local video; the source is None for a
    quarantined one. A remux or recovered copy the source reads lives until the block ends.
    `references` (on the store of `storage_options`) rebuild a moov-less file; `recover`
    False reads a copy as it is."""
    if references:
        rebuild = partial(rebuild_with, candidates=references, so=storage_options)
        key = {"kind": "rebuild", "references": [c.fingerprint for c in references]}
        with _open_copy(path, url, max_duration_s, store, rebuild, key, "no_reference") as got:
            yield got
        return
    info: dict[str, Any] = {}
    try:
        packets, timeline, orientation = _inspect(path, max_duration_s, info)
    except Incomplete as cut:
        if recover:
            kind = {"kind": "prefix"}
            with _open_copy(path, url, max_duration_s, store, prefix, kind, cut.code, cut) as got:
                yield got
            return
        yield quarantine_row(url, cut.code, cut.detail, info), None
        return
    except Quarantine as reason:
        yield quarantine_row(url, reason.code, reason.detail, info), None
        return
    except Exception as err:  # an odd library failure on this file: still a row...
        if is_infrastructure(err):  # ...unless the disk or memory is what failed
            raise
        yield quarantine_row(url, "unreadable", short(err), info), None
        return
    with choose_source(
        path, packets, timeline, orientation, lambda: remuxed(path, store)
    ) as source:
        yield _result(url, decoder=source.decoder, **info), source


def quarantine_row(
    url: str, code: str, detail: str | None, info: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The videos.parquet row (probe fields) of a quarantined video."""
    logger.warning("quarantined %s: %s%s", url, code, f": {detail}" if detail else "")
    return _result(url, status="quarantined", error=code, error_detail=detail, **(info or {}))


@contextmanager
def _open_copy(
    path: str,
    url: str,
    max_duration_s: float,
    store: RemuxStore | None,
    make: Callable[[str, str], dict[str, Any]],
    key: dict[str, Any],
    code: str,
    cut: Quarantine | None = None,
) -> Iterator[tuple[dict[str, Any], Source | None]]:
    """Open the recovered copy `make` writes (a rebuild, a prefix) in place of the file:
    status `recovered` when it reads, else quarantined with `code` and the reason."""
    with ExitStack() as stack:
        try:
            copy = stack.enter_context(recovered(path, make, key, store))
            opened = open_video(copy.path, url, max_duration_s, store, recover=False)
            row, source = stack.enter_context(opened)
            if source is None:
                raise Unrecoverable(f"the copy is {row['error']} ({row['error_detail']})")
        except RECOVERY_ERRORS as err:
            if is_infrastructure(err):
                raise
            detail = f"{cut.detail}; {short(err)}" if cut else short(err)
            failed = quarantine_row(url, code, detail, {})
        else:
            failed = None
            row.update(status="recovered", error="truncated", reference=copy.info["reference"])
            row["error_detail"] = _recovered_detail(row, copy.info, cut)
            logger.warning("recovered %s: %s", url, row["error_detail"])
            yield row, replace(source, media=copy.media)
    if failed is not None:
        yield failed, None


def _recovered_detail(row: dict[str, Any], info: dict[str, Any], cut: Quarantine | None) -> str:
    seconds = f"{row['n_frames']} frames ({row['duration_s']:.2f}s)"
    if cut is not None:
        return f"{cut.detail}: the readable prefix, {seconds}"
    ref = os.path.basename(str(info["reference"]))
    return f"moov lost: {seconds} rebuilt from the media data with {ref}'s parameters"


def probe_local(path: str, url: str, max_duration_s: float) -> dict[str, Any]:
    """The videos.parquet row of a local file; `url` names it in the result."""
    with open_video(path, url, max_duration_s) as (row, _):
        return row


def probe_video(
    url: str, storage_options: dict | None = None, max_duration_s: float = 6 * 3600
) -> dict[str, Any]:
    """Metadata of one video, `status` "ok" or "quarantined" with the reason in `error`.

    A remote video is fetched first: a store that fails to deliver it fails the task (the
    error policy), only what the file itself holds can quarantine it.
    """
    with local_video(url, storage_options) as path:
        return probe_local(path, url, max_duration_s)


def iter_frame_chunks(
    url: str,
    storage_options: dict[str, Any] | None,
    sample_fps: float,
    size: int | tuple[int, int],
    chunk_frames: int,
    threads: int = 0,
    max_duration_s: float = 6 * 3600,
) -> Iterator[Chunk]:
    """Probe a video and yield its sampled frames (`decode.iter_source_chunks`); a file the
    probe quarantines raises `SampleError` with the probe's code."""
    if chunk_frames < 1:
        raise ValueError("chunk_frames must be >= 1")
    with (
        local_video(url, storage_options) as path,
        open_video(path, url, max_duration_s) as (
            row,
            source,
        ),
    ):
        if source is None:
            raise SampleError(row["error"], row["error_detail"] or "")
        yield from iter_source_chunks(source, sample_fps, size, chunk_frames, threads)
