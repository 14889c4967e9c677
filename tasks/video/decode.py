"""Frame sampling and chunked decoding of one video with decord.

Times are relative to the video's first frame and assume a constant frame rate: frame `i`
shows at `i / fps`. This is how decord indexes frames, and `tasks.video.clips` uses the same rule,
so a time found here cuts the same frame there.

decord 0.6 cannot stream: given a file object it reads the whole file into memory
(`bytearray(f.read())`). Remote videos are therefore spooled to a local temporary file in
fixed-size pieces (`local_video`), which bounds memory at the cost of local disk; local
paths are opened in place. A flow that runs several stages on one remote video can enter
`local_video` once and pass the local path to each stage.

decord 0.6 also keeps working after `get_batch` returns: its reader thread runs on ahead
into the file, on a core the model needs (on two cores it took a third of the model's
time). A `seek(0)` stops it, but also makes the next batch jump to its keyframe, and
decord's jumps land on the wrong frame in some containers (AVI, intra-refresh H.264) and
cost a decode from the keyframe. So a chunk ends with `seek(0)` only where decord would jump
anyway: the next chunk starts in another GOP (or there is none); a next chunk in the same
GOP decodes on from where this one stopped, as without the seek
(`tests/tasks/video/test_decode.py`).
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import av
import decord
import numpy as np

from tasks.errors import as_sample_error
from tasks.io import storage

logger = logging.getLogger(__name__)

SPOOL_CHUNK = 8 << 20
# What decord and PyAV raise for bytes they cannot decode (errno-carrying ones are excluded
# again by the error policy when they describe the machine).
DECODE_ERRORS = (decord.DECORDError, av.FFmpegError, IndexError, ValueError, RuntimeError)


@contextmanager
def local_video(url: str, storage_options: dict[str, Any] | None = None) -> Iterator[str]:
    """Yield a local path for `url`: the file itself when local, else a temporary copy."""
    fs, path = storage.get_fs(url, storage_options)
    if storage.is_local(fs):
        yield path
        return
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix="clip-curate-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as dst, fs.open(path, "rb") as src:
            shutil.copyfileobj(src, dst, SPOOL_CHUNK)
        yield tmp
    finally:
        os.remove(tmp)


def frame_at(t_s: float, fps: float) -> int:
    """Index of the frame shown at `t_s`: nearest frame, halves rounding up (not to even)."""
    return math.floor(t_s * fps + 0.5)


def sample_times(duration_s: float, fps: float, sample_fps: float) -> list[tuple[int, float]]:
    """Frames to score: `(frame_index, t_s)` for targets `k / sample_fps` below `duration_s`.

    Each target maps to the nearest source frame (`frame_at`, clamped to the last
    frame); when `sample_fps` exceeds `fps` several targets hit one frame and it is kept
    once. `t_s` is the time of the frame actually shown (`index / fps`), so scores line up
    with what a clip cut at that time contains.
    """
    if not (duration_s > 0 and fps > 0 and sample_fps > 0):
        return []
    last = max(0, math.ceil(duration_s * fps - 1e-9) - 1)
    out: list[tuple[int, float]] = []
    k = 0
    while (t := k / sample_fps) < duration_s - 1e-9:
        index = min(frame_at(t, fps), last)
        if not out or index > out[-1][0]:
            out.append((index, index / fps))
        k += 1
    return out


def decode_size(width: int, height: int, size: int | tuple[int, int]) -> tuple[int, int]:
    """Output (width, height) for decord's resize-on-decode.

    An int keeps the aspect ratio and makes the short side `size` (the model's preprocess
    then center-crops, as for images); a tuple is an exact `(height, width)`, like
    torchvision's `Resize`.
    """
    if isinstance(size, tuple):
        return int(size[1]), int(size[0])
    if width <= height:
        return size, max(1, round(height * size / width))
    return max(1, round(width * size / height)), size


def _source_size(path: str) -> tuple[int, int]:
    with av.open(path) as container:
        stream = container.streams.video[0]
        return stream.codec_context.width, stream.codec_context.height


def iter_frame_chunks(
    url: str,
    storage_options: dict[str, Any] | None,
    sample_fps: float,
    size: int | tuple[int, int],
    chunk_frames: int,
    threads: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield `(frame_indices, t_s, frames)` chunks of at most `chunk_frames` sampled frames.

    `threads` are decord's decoding threads (0: FFmpeg picks, one per core); the score stage
    sizes them with the model's threads (`tasks.parallel.score_sizing`).

    Frames are uint8 RGB `(N, H, W, 3)`, resized by decord while decoding (see
    `decode_size`). Only one chunk is decoded at a time, so memory is bounded by
    `chunk_frames` whatever the video's length. A file that fails to decode raises
    `SampleError("decode_error")` (probe first: `tasks.video.probe` names most problems).
    """
    if chunk_frames < 1:
        raise ValueError("chunk_frames must be >= 1")
    with local_video(url, storage_options) as path:
        with as_sample_error("decode_error", *DECODE_ERRORS):
            width, height = decode_size(*_source_size(path), size)
            reader = decord.VideoReader(
                path, ctx=decord.cpu(0), width=width, height=height, num_threads=threads
            )
            fps, n_frames = float(reader.get_avg_fps()), len(reader)
            keys = [int(k) for k in reader.get_key_indices()]
        picks = sample_times(n_frames / fps, fps, sample_fps)
        logger.debug("%s: %d of %d frames at %.3g fps", url, len(picks), n_frames, sample_fps)
        for lo in range(0, len(picks), chunk_frames):
            part = picks[lo : lo + chunk_frames]
            indices = np.array([i for i, _ in part], dtype=np.int64)
            times = np.array([t for _, t in part], dtype=np.float64)
            following = picks[lo + chunk_frames][0] if lo + chunk_frames < len(picks) else None
            with as_sample_error("decode_error", *DECODE_ERRORS):
                frames = reader.get_batch(indices.tolist()).asnumpy()
                if jumps(keys, int(indices[-1]) + 1, following):
                    reader.seek(0)  # stops the reader thread (module docstring)
            yield indices, times, frames


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
