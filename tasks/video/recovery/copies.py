"""Recovered copies, cached like remuxes: a rebuilt moov-less file, a cut file's prefix.

A copy is expensive to make (a walk over the media data, a mux) and is read again when
clips are cut, so it lives in the cache (`tasks.io.cache`, namespace `video-recover`),
keyed by the input's fingerprint, the references tried (their fingerprints, in order), this
module's version and PyAV's. Without a cache store the copy is a temporary file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import av

from tasks.io import storage
from tasks.io.cache import Attempt, Cache
from tasks.video.decoding.local import local_video
from tasks.video.decoding.remux import RemuxStore
from tasks.video.recovery.prefix import copy_prefix
from tasks.video.recovery.rebuild import Unrecoverable, read_reference, rebuild

RECOVER_VERSION = 1
NAMESPACE = "video-recover"
FILE = "video.mp4"


@dataclass(frozen=True)
class Candidate:
    """A healthy recording that may serve as the reference: its URL and fingerprint."""

    url: str
    fingerprint: dict[str, Any]


@dataclass(frozen=True)
class Copy:
    """A recovered copy: a local path to read, the URL clips are cut from (None for a
    temporary copy), and what was recovered (`reference`: the URL used, or None)."""

    path: str
    media: str | None
    info: dict[str, Any]


def rebuild_with(
    path: str, dst: str, candidates: list[Candidate], so: dict[str, Any] | None
) -> dict[str, Any]:
    """Rebuild `path` with the first candidate whose parameters fit; `Unrecoverable` (with
    every candidate's reason) when none does."""
    reasons = []
    for cand in candidates:
        try:
            with local_video(cand.url, so) as ref_path:
                info = rebuild(path, read_reference(ref_path), dst)
            return {**info, "reference": cand.url}
        except (Unrecoverable, av.FFmpegError) as err:
            reasons.append(f"{os.path.basename(cand.url)}: {err}")
    raise Unrecoverable("; ".join(reasons) or "no reference")


def prefix(path: str, dst: str) -> dict[str, Any]:
    return {**copy_prefix(path, dst), "reference": None}


@contextmanager
def recovered(
    path: str,
    make: Callable[[str, str], dict[str, Any]],
    key: dict[str, Any],
    store: RemuxStore | None,
) -> Iterator[Copy]:
    """The copy `make(path, dst)` writes, from the cache when `store` has it."""
    if store is None:
        fd, tmp = tempfile.mkstemp(prefix="clip-curate-recover-", suffix=".mp4")
        os.close(fd)
        try:
            info = make(path, tmp)
            yield Copy(tmp, None, info)
        finally:
            os.remove(tmp)
        return
    parts = {"input": store.fingerprint, **key, "version": RECOVER_VERSION, "av": av.__version__}

    def compute(attempt: Attempt) -> dict[str, Any]:
        fd, tmp = tempfile.mkstemp(prefix="clip-curate-recover-", suffix=".mp4")
        os.close(fd)
        try:
            info = make(path, tmp)
            with (
                open(tmp, "rb") as src,
                storage.open_write(attempt.url(FILE), store.storage_options) as dst,
            ):
                shutil.copyfileobj(src, dst, 8 << 20)
        finally:
            os.remove(tmp)
        return info

    cache = Cache(store.root, store.storage_options)
    hit = cache.get_or_compute(NAMESPACE, parts, compute, lock=True)
    with local_video(hit.files[FILE], store.storage_options) as local:
        yield Copy(local, hit.files[FILE], hit.meta)
