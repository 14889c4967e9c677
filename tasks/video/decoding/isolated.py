"""The decoding layer's work on input bytes, run in a helper process (`tasks.isolation`).

Two operations, each the whole of what touches a file's bytes for one stage:

- `video_frames`: probe + decoder gate (+ remux or recovery) + sampled frames of one
  video: first the probe row, the timeline and a recovered copy's URL, then the frame
  chunks;
- `event_media`: one event's clip and peak-frame thumbnail.

`frames_in_helper` and `media_in_helper` are the callers' side: the same results as the
in-process functions, with a decoder crash or hang turned into that video's or clip's
error (`decoder_crash` / `decode_timeout` for a video, `clip_error` for a clip).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from tasks.errors import as_sample_error
from tasks.io import storage
from tasks.isolation import Item, array_blob, blob_array, isolated
from tasks.video.decoding.clips import CLIP_ERRORS, clip_bytes, thumbnail_jpeg
from tasks.video.decoding.decode import Chunk, iter_source_chunks
from tasks.video.decoding.probe import open_video
from tasks.video.decoding.remux import RemuxStore
from tasks.video.decoding.timeline import Timeline
from tasks.video.recovery.copies import Candidate

FRAMES_OP = "tasks.video.decoding.isolated:video_frames"
MEDIA_OP = "tasks.video.decoding.isolated:event_media"


@dataclass(frozen=True)
class FrameRequest:
    """Everything `video_frames` needs (JSON-able: it crosses to the helper)."""

    path: str  # a local path of the video
    url: str
    max_duration_s: float
    sample_fps: float
    size: int | list[int]  # the model's input size (decode.iter_source_chunks)
    chunk_frames: int
    threads: int
    store: dict[str, Any] | None = None  # RemuxStore fields
    references: list[list[Any]] | None = None  # [url, fingerprint] of reference candidates
    storage_options: dict[str, Any] | None = None


def video_frames(**fields: Any) -> Iterator[Item]:
    """(helper side) The probe item, then one item per chunk of sampled frames."""
    req = FrameRequest(**fields)
    size = tuple(req.size) if isinstance(req.size, list) else req.size  # JSON made it a list
    store = RemuxStore(**req.store) if req.store else None
    refs = [Candidate(u, fp) for u, fp in req.references or []]
    so = req.storage_options
    with open_video(req.path, req.url, req.max_duration_s, store, refs, so) as (row, source):
        if source is None:
            yield {"probe": row}, []
            return
        meta, blob = array_blob(source.timeline.to_array())
        yield {"probe": row, "media": source.media, "timeline": meta}, [blob]
        chunks = iter_source_chunks(source, req.sample_fps, size, req.chunk_frames, req.threads)
        for idx, times, frames in chunks:
            parts = [array_blob(a) for a in (idx, times, frames)]
            yield {"chunk": [m for m, _ in parts]}, [b for _, b in parts]


@dataclass
class Probed:
    """The probe's answer: its row, the timeline and recovered copy of a usable video."""

    row: dict[str, Any]
    timeline: Timeline | None = None
    media: str | None = None


def frames_in_helper(req: FrameRequest, timeout_s: float) -> tuple[Probed, Iterator[Chunk]]:
    """The probe, and an iterator of the frame chunks (empty for a quarantined video).

    Raises `SampleError` (`decoder_crash`, `decode_timeout`, or the decoder's code) from
    the probe or from any chunk."""
    items = isolated(FRAMES_OP, asdict(req), timeout_s)
    head, blobs = next(items)
    probed = Probed(head["probe"])
    if not blobs:  # quarantined: read the end, so the helper is kept for the next video
        for _ in items:
            pass
        return probed, iter(())
    probed.timeline = Timeline.from_array(blob_array(head["timeline"], blobs[0]))
    probed.media = head["media"]

    def chunks() -> Iterator[Chunk]:
        for data, parts in items:
            arrays = [blob_array(m, b) for m, b in zip(data["chunk"], parts, strict=True)]
            yield arrays[0], arrays[1], arrays[2]

    return probed, chunks()


def event_media(
    url: str,
    so: dict[str, Any] | None,
    start_s: float,
    end_s: float,
    peak_s: float,
    timeline: str | None,
    rotation: int | None,
) -> Iterator[Item]:
    """(helper side) One event's clip and thumbnail; `timeline` is the cached clock's URL."""
    line = None if timeline is None else Timeline.from_array(storage.read_npy(timeline, so))
    with as_sample_error("clip_error", *CLIP_ERRORS):
        clip, info = clip_bytes(url, so, start_s, end_s, line, rotation)
        thumb = thumbnail_jpeg(url, so, peak_s, timeline=line, rotation=rotation)
    yield {"info": info}, [clip, thumb]


def media_in_helper(timeout_s: float, **kwargs: Any) -> tuple[bytes, dict[str, Any], bytes]:
    """(clip bytes, clip info, thumbnail JPEG) of one event (`event_media`'s arguments); a
    crash or a hang raises `SampleError("clip_error")`."""
    items = isolated(MEDIA_OP, kwargs, timeout_s, "clip_error", "clip_error")
    (head, (clip, thumb)), *_ = list(items)
    return clip, head["info"], thumb
