"""Operations for the decoding helper processes in tests (`tasks.isolation` runs generators
of `tests.` modules too): faults planted where the real operations run."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from tasks.errors import SampleError
from tasks.isolation import Item, array_blob


def echo(n: int, fail: str | None = None) -> Iterator[Item]:
    """`n` items, each an array of its index; then optionally a planted failure."""
    import logging

    logging.getLogger("tests.isolation_ops").warning("echo %d", n)
    for k in range(n):
        meta, blob = array_blob(np.full((2, 3), k, np.int16))
        yield {"k": k, "array": meta, "pid": os.getpid()}, [blob]
    if fail == "sample":
        raise SampleError("bad_bytes", "planted")
    if fail == "disk":
        raise OSError(28, "No space left on device")
    if fail == "bug":
        raise KeyError("planted bug")
    if fail == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if fail == "exit":
        os._exit(3)
    if fail == "hang":
        time.sleep(3600)


def pid() -> Iterator[Item]:
    yield {"pid": os.getpid()}, []


def frames_crashing_on_boom(**fields: Any) -> Iterator[Item]:
    """`video_frames`, but the decoder crashes (SIGSEGV) on files whose name has "boom",
    right after the probe, and hangs on those with "hang"."""
    from tasks.video.decoding.isolated import video_frames

    for n, item in enumerate(video_frames(**fields)):
        if n == 1 and "boom" in fields["url"]:
            os.kill(os.getpid(), signal.SIGSEGV)
        if "hang" in fields["url"]:
            time.sleep(3600)
        yield item


def media_failing_for_b(**kwargs: Any) -> Iterator[Item]:
    """`event_media`, with PyAV failing on files named b.mp4 (the cutter's error path)."""
    import av

    import tasks.video.decoding.isolated as iso

    real = iso.clip_bytes

    def clip_bytes(url: str, *a: Any, **k: Any) -> Any:
        if url.endswith("b.mp4"):
            raise av.error.InvalidDataError(1094995529, "Invalid data found")
        return real(url, *a, **k)

    iso.clip_bytes = clip_bytes
    try:
        yield from iso.event_media(**kwargs)
    finally:
        iso.clip_bytes = real
