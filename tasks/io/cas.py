"""Compare-and-swap of one small file on any store: read, change, write only if unchanged.

Several runs may change one shared file at once (a dataset's catalog, while a backfill
commits dates in parallel). A plain read-modify-write loses whichever update lands first.
`update(url, change)` never does:

- locally, the update holds an exclusive `flock` on a sidecar `.{name}.lock` while it reads,
  changes and replaces the file (write a temp file, fsync, rename): readers see the old or
  the new content, never a torn one, and writers queue;
- on S3, the write is a conditional PUT (`If-Match: <ETag read>`, or `If-None-Match: *` when
  the file did not exist); a writer that lost the race (412/409) reads again and re-applies
  its change, so the change function must be a pure function of the content it is given
  (a retried PUT whose first attempt landed is recognised as landed: `tasks.io.conditional`);
- other fsspec stores get a best-effort read-modify-write (no primitive to do better).
"""

from __future__ import annotations

import fcntl
import os
import random
import time
from collections.abc import Callable
from typing import Any

from tasks.io import conditional, storage

MAX_ATTEMPTS = 50  # S3 races: each lost race means another writer made progress


class CasConflict(RuntimeError):
    """Too many concurrent writers kept changing the file under this update."""


def update(
    url: str,
    change: Callable[[bytes | None], bytes | None],
    storage_options: dict[str, Any] | None = None,
) -> bytes | None:
    """Apply `change(old content or None) -> new content` atomically; returns what was written.

    `change` returning None (or the content unchanged) writes nothing.
    """
    fs, path = storage.get_fs(url, storage_options)
    if storage.is_local(fs):
        return _update_local(path, change)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("s3", "s3a"):
        return _update_s3(fs, path, change)
    old = storage.read_bytes(url, storage_options) if storage.exists(url, storage_options) else None
    new = change(old)
    if new is not None and new != old:
        storage.write_bytes(url, new, storage_options)
    return new


def read(url: str, storage_options: dict[str, Any] | None = None) -> bytes | None:
    """The file's content, or None when it does not exist (readers take no lock)."""
    try:
        return storage.read_bytes(url, storage_options)
    except FileNotFoundError:
        return None


def _update_local(path: str, change: Callable[[bytes | None], bytes | None]) -> bytes | None:
    folder, name = os.path.split(path)
    os.makedirs(folder or ".", exist_ok=True)
    fd = os.open(os.path.join(folder, f".{name}.lock"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd closes, also if this process dies
        try:
            with open(path, "rb") as f:
                old: bytes | None = f.read()
        except FileNotFoundError:
            old = None
        new = change(old)
        if new is not None and new != old:
            storage.write_bytes(path, new)  # temp file + fsync + rename
        return new
    finally:
        os.close(fd)


def _update_s3(fs: Any, path: str, change: Callable[[bytes | None], bytes | None]) -> bytes | None:
    for attempt in range(MAX_ATTEMPTS):
        found = conditional.get(fs, path)
        old, etag = (found[0], str(found[1]["ETag"])) if found is not None else (None, None)
        new = change(old)
        if new is None or new == old:
            return new
        cond = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        if conditional.put_if(fs, path, new, **cond) is not None:
            return new
        time.sleep(random.uniform(0, min(1.0, 0.02 * 2**attempt)))  # let the winner finish
    raise CasConflict(f"{path}: gave up after {MAX_ATTEMPTS} concurrent updates")
