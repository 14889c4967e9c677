"""Stream copy of a video stream into MP4 with PyAV: what makes AVI, TS and PS files exact.

decord's index is right in MP4 (the `stts`/`ctts`/`stss` tables say where each frame is
and when it shows) and wrong in containers without such an index. Copying the packets into
MP4, with their timestamps, keeps every picture and every frame time (the gate checks both:
`gate.same_clock`) at the cost of one read and one write of the video stream, no decoding.

A remux is cached like every expensive result (`tasks.io.cache`), keyed by the input's
fingerprint, this module's version and PyAV's (the muxer decides the copy's timestamps), so
scoring the same file with another model or rate copies it once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import av

from tasks.io import storage
from tasks.io.cache import Attempt, Cache
from tasks.video.decoding.local import local_video

REMUX_VERSION = 1
NAMESPACE = "video-remux"
FILE = "video.mp4"


def remux_to_mp4(src: str, dst: str) -> int:
    """Copy the first video stream of `src` into the MP4 file `dst`; the packets written.

    A packet without a presentation timestamp gets its decode timestamp (containers such
    as AVI store only the decode order, which is the display order without B-frames); one
    without either cannot be placed and raises `ValueError`.
    """
    written = 0
    with av.open(src) as inp, av.open(dst, "w", format="mp4") as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.size == 0 or packet.is_discard:
                continue
            if packet.pts is None:
                if packet.dts is None:
                    raise ValueError(f"packet {written} has no timestamp")
                packet.pts = packet.dts
            packet.stream = copy
            out.mux(packet)
            written += 1
    return written


@dataclass(frozen=True)
class RemuxStore:
    """Where remuxes are cached: the cache root and the input's fingerprint."""

    root: str
    storage_options: dict[str, Any]
    fingerprint: dict[str, Any]


@contextmanager
def remuxed(path: str, store: RemuxStore | None = None) -> Iterator[str]:
    """A local MP4 remux of the local video `path`: from the cache with a store, else a
    temporary file removed on exit."""
    if store is None:
        with _temporary(path) as tmp:
            yield tmp
        return
    parts = {"input": store.fingerprint, "version": REMUX_VERSION, "av": av.__version__}

    def compute(attempt: Attempt) -> dict[str, Any]:
        target = attempt.url(FILE)
        with (
            _temporary(path) as tmp,
            open(tmp, "rb") as src,
            storage.open_write(target, store.storage_options) as dst,
        ):
            shutil.copyfileobj(src, dst, 8 << 20)
        return {}

    cache = Cache(store.root, store.storage_options)
    hit = cache.get_or_compute(NAMESPACE, parts, compute, lock=True)
    with local_video(hit.files[FILE], store.storage_options) as local:
        yield local


@contextmanager
def _temporary(path: str) -> Iterator[str]:
    fd, tmp = tempfile.mkstemp(prefix="clip-curate-remux-", suffix=".mp4")
    os.close(fd)
    try:
        remux_to_mp4(path, tmp)
        yield tmp
    finally:
        os.remove(tmp)
