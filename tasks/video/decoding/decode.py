"""Sampled frames of one video, decoded in bounded chunks, upright, resized for the model.

Which frames: the pictures shown at `k / sample_fps` on the video's own clock
(`Timeline.sample`); their `t_s` is each picture's presentation time. Who decodes them:
the path the probe's gate chose (`gate.py`), each exact:

- `decord` / `decord_remux`: decord's batches by frame index (the same display-order index
  as the timeline's, checked by the gate), resized by decord while decoding;
- `pyav`: PyAV decodes the file in order and keeps the frames whose timestamps were asked
  for; each is scaled by swscale and turned upright (`orientation.py`).

Only one chunk is decoded at a time, so memory is bounded by `chunk_frames` whatever the
video's length.

decord 0.6 keeps working after `get_batch` returns: its reader thread runs on ahead into
the file, on a core the model needs (on two cores it took a third of the model's time). A
`seek(0)` stops it, but also makes the next batch jump to its keyframe, which costs a decode
from the keyframe. So a chunk ends with `seek(0)` only where decord would jump anyway: the
next chunk starts in another GOP (or there is none); a next chunk in the same GOP decodes on
from where this one stopped, as without the seek (`tests/tasks/video/decoding/test_decode.py`).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator
from typing import Any

import av
import decord
import numpy as np

from tasks.errors import SampleError, as_sample_error
from tasks.video.decoding.gate import Source
from tasks.video.decoding.orientation import decode_size

logger = logging.getLogger(__name__)

# What decord and PyAV raise for bytes they cannot decode (errno-carrying ones are excluded
# again by the error policy when they describe the machine).
DECODE_ERRORS = (decord.DECORDError, av.FFmpegError, IndexError, ValueError, RuntimeError)
Chunk = tuple[np.ndarray, np.ndarray, np.ndarray]  # frame indices, t_s, uint8 N x H x W x 3


def iter_source_chunks(
    source: Source,
    sample_fps: float,
    size: int | tuple[int, int],
    chunk_frames: int,
    threads: int = 0,
) -> Iterator[Chunk]:
    """Yield `(frame_indices, t_s, frames)` chunks of at most `chunk_frames` sampled frames.

    Frames are uint8 RGB `(N, H, W, 3)` as displayed, resized to `decode_size(display
    size, size)`. `threads` are the decoder's threads (0: FFmpeg picks, one per core); the
    score stage sizes them with the model's (`tasks.parallel.score_sizing`). A file that
    fails to decode raises `SampleError("decode_error")`.
    """
    if chunk_frames < 1:
        raise ValueError("chunk_frames must be >= 1")
    idx, times = source.timeline.sample(sample_fps)
    out_size = decode_size(*source.orientation.display_size, size)
    logger.debug(
        "%s: %d of %d frames by %s", source.path, len(idx), source.timeline.n, source.decoder
    )
    if source.decoder == "pyav":
        yield from _pyav_chunks(source, idx, times, out_size, chunk_frames, threads)
    else:
        yield from _decord_chunks(source, idx, times, out_size, chunk_frames, threads)


def _decord_chunks(
    source: Source,
    idx: np.ndarray,
    times: np.ndarray,
    size: tuple[int, int],
    chunk: int,
    threads: int,
) -> Iterator[Chunk]:
    with as_sample_error("decode_error", *DECODE_ERRORS):
        reader = decord.VideoReader(
            source.path, ctx=decord.cpu(0), width=size[0], height=size[1], num_threads=threads
        )
        keys = [int(k) for k in reader.get_key_indices()]
    for lo in range(0, len(idx), chunk):
        part = idx[lo : lo + chunk]
        following = int(idx[lo + chunk]) if lo + chunk < len(idx) else None
        with as_sample_error("decode_error", *DECODE_ERRORS):
            frames = reader.get_batch(part.tolist()).asnumpy()
            if jumps(keys, int(part[-1]) + 1, following):
                reader.seek(0)  # stops the reader thread (module docstring)
        yield part, times[lo : lo + chunk], frames


def _pyav_chunks(
    source: Source,
    idx: np.ndarray,
    times: np.ndarray,
    size: tuple[int, int],
    chunk: int,
    threads: int,
) -> Iterator[Chunk]:
    """Decode in order, keep the frames whose pts were asked for (the timeline's)."""
    line = source.timeline
    wanted = {int(i if line.by_order else line.pts[i]): k for k, i in enumerate(idx)}
    width, height = source.orientation.coded_size(size)
    got: list[int] = []
    frames: list[np.ndarray] = []
    count = 0
    for count, frame in enumerate(_guarded(_decoded(source.path, threads)), 1):
        at = wanted.get(count - 1 if line.by_order else _pts(frame))
        if at is None:
            continue
        with as_sample_error("decode_error", *DECODE_ERRORS):
            rgb = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
        got.append(at)
        frames.append(source.orientation.upright(rgb))
        if len(frames) == chunk or len(got) == len(idx):
            yield _chunk(idx, times, got[-len(frames) :], frames)
            frames = []
        if len(got) == len(idx) and not line.by_order:
            return
    if line.by_order and count != line.n:  # a lost picture shifts every later one
        raise SampleError("decode_error", f"{count} of {line.n} frames decoded")
    if len(got) < len(idx):
        missing = len(idx) - len(got)
        raise SampleError("decode_error", f"{missing} of {len(idx)} sampled frames never decoded")


def _pts(frame: Any) -> int | None:
    return frame.pts if frame.pts is not None else frame.dts


def _guarded(frames: Iterator[Any]) -> Iterator[Any]:
    """The decoder's frames, its failures as `decode_error` (what the caller does with a
    frame is not the decoder's failure)."""
    while True:
        with as_sample_error("decode_error", *DECODE_ERRORS):
            frame = next(frames, None)
        if frame is None:
            return
        yield frame


def _decoded(path: str, threads: int) -> Iterator[Any]:
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        yield from container.decode(stream)


def _chunk(idx: np.ndarray, times: np.ndarray, at: list[int], frames: list[np.ndarray]) -> Chunk:
    if at != sorted(set(at)):
        raise SampleError("decode_error", "frames decoded out of display order")
    pos = np.asarray(at, np.int64)
    return idx[pos], times[pos], np.stack(frames)


def keyframe_of(keys: list[int], index: int) -> int:
    """The keyframe at or before `index` (`keys` sorted; 0 before the first one)."""
    at = bisect.bisect_right(keys, index) - 1
    return keys[at] if at >= 0 else 0


def jumps(keys: list[int], position: int, following: int | None) -> bool:
    """Whether decord jumps to a keyframe to read frame `following` from `position` (the
    frame after the last one read): it does when the frame is behind or in another GOP.
    Nothing to read next counts as a jump: the reader is left idle."""
    if following is None or following < position:
        return True
    return keyframe_of(keys, following) != keyframe_of(keys, position)
