"""Where a partition lock lives: a local file, an S3 object, or any other fsspec store.

Each backend offers the same compare-and-swap steps, with a `version` that identifies the
exact lock a run saw (its bytes locally, its ETag on S3), so a take-over or release only
ever touches the lock that was judged, never one a third run created in between.
"""

from __future__ import annotations

import contextlib
import email.utils
import fcntl
import os
import time
from collections.abc import Iterator
from typing import Any, Protocol

from tasks.io import conditional, storage

SETTLE_S = 0.2  # generic stores: wait before reading back a lock we wrote


class Backend(Protocol):
    def create(self, data: bytes) -> Any | None:
        """Create the lock if absent; its version, or None when it exists."""

    def read(self) -> tuple[bytes, float, Any] | None:
        """(content, age in seconds, version), or None when there is no lock."""

    def take_over(self, seen: Any, data: bytes) -> Any | None:
        """Replace the lock if it is still version `seen`; the new version or None."""

    def refresh(self, version: Any, data: bytes) -> Any | None:
        """Renew the lease of our lock; the new version, or None when it is not ours."""

    def holds(self, version: Any) -> bool: ...

    def release(self, version: Any) -> None: ...


@contextlib.contextmanager
def _dir_flock(folder: str) -> Iterator[None]:
    """Serialise take-overs and releases between processes on this machine."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


class LocalBackend:
    """A lock file created with O_CREAT|O_EXCL; the heartbeat is its mtime."""

    def __init__(self, path: str) -> None:
        self.path, self.folder = path, os.path.dirname(path) or "."

    def create(self, data: bytes) -> bytes | None:
        os.makedirs(self.folder, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return data

    def read(self) -> tuple[bytes, float, bytes] | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
                mtime = os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return None
        return data, time.time() - mtime, data

    def take_over(self, seen: bytes, data: bytes) -> bytes | None:
        with _dir_flock(self.folder):
            if not self.holds(seen):
                return None
            os.unlink(self.path)
            return self.create(data)

    def refresh(self, version: bytes, data: bytes) -> bytes | None:
        if not self.holds(version):
            return None
        os.utime(self.path)
        return version  # the content stays as written: readers never see a torn rewrite

    def holds(self, version: bytes) -> bool:
        found = self.read()
        return found is not None and found[0] == version

    def release(self, version: bytes) -> None:
        with _dir_flock(self.folder):
            if self.holds(version):
                os.unlink(self.path)


class S3Backend:
    """A lock object created with If-None-Match: *, replaced and deleted with If-Match: ETag.

    Ages come from the store's own clock (the response Date minus LastModified), so clock
    skew between hosts never makes a live lock look stale. The conditional writes go through
    `tasks.io.conditional`, so a retried write whose first attempt landed stays ours.
    """

    def __init__(self, fs: Any, path: str) -> None:
        self.fs, self.path = fs, path
        self.bucket, self.key = fs.split_path(path)[:2]
        self.url = storage.unstrip(fs, path)

    def _replace(self, version: str, data: bytes) -> str | None:
        try:
            return conditional.put_if(self.fs, self.path, data, IfMatch=version)
        except FileNotFoundError:  # the lock vanished: nothing to replace
            return None

    def create(self, data: bytes) -> str | None:
        return conditional.put_if(self.fs, self.path, data, IfNoneMatch="*")

    def read(self) -> tuple[bytes, float, str] | None:
        found = conditional.get(self.fs, self.path)
        if found is None:
            return None
        data, resp = found
        date = resp["ResponseMetadata"].get("HTTPHeaders", {}).get("date")
        now = email.utils.parsedate_to_datetime(date).timestamp() if date else time.time()
        return data, now - resp["LastModified"].timestamp(), str(resp["ETag"])

    def take_over(self, seen: str, data: bytes) -> str | None:
        return self._replace(seen, data)

    def refresh(self, version: str, data: bytes) -> str | None:
        return self._replace(version, data)

    def holds(self, version: str) -> bool:
        with storage.named_store(self.url, self.fs.storage_options):
            try:
                head = self.fs.call_s3("head_object", Bucket=self.bucket, Key=self.key)
            except FileNotFoundError:
                return False
        return str(head["ETag"]) == version

    def release(self, version: str) -> None:
        with storage.named_store(self.url, self.fs.storage_options):
            try:
                self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=version)
            except FileNotFoundError:
                pass
            except OSError as err:
                # a store without conditional deletes: check, then delete
                if not conditional.conflict(err) and self.holds(version):
                    self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key)


class GenericBackend:
    """Other fsspec stores: write if absent, then read back (a lease protocol, best effort)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None) -> None:
        self.url, self.so = url, storage_options

    def create(self, data: bytes) -> bytes | None:
        if storage.exists(self.url, self.so):
            return None
        storage.write_bytes(self.url, data, self.so)
        time.sleep(SETTLE_S)
        return data if self.holds(data) else None

    def read(self) -> tuple[bytes, float, bytes] | None:
        try:
            data = storage.read_bytes(self.url, self.so)
            fs, path = storage.get_fs(self.url, self.so)
            modified = fs.modified(path).timestamp()
        except FileNotFoundError:
            return None
        except (NotImplementedError, OSError):
            modified = time.time()
        return data, time.time() - modified, data

    def take_over(self, seen: bytes, data: bytes) -> bytes | None:
        if not self.holds(seen):
            return None
        storage.remove(self.url, self.so)
        return self.create(data)

    def refresh(self, version: bytes, data: bytes) -> bytes | None:
        if not self.holds(version):
            return None
        storage.write_bytes(self.url, data, self.so)
        return data

    def holds(self, version: bytes) -> bool:
        found = self.read()
        return found is not None and found[0] == version

    def release(self, version: bytes) -> None:
        if self.holds(version):
            storage.remove(self.url, self.so)


def backend_for(url: str, storage_options: dict[str, Any] | None = None) -> Backend:
    fs, path = storage.get_fs(url, storage_options)
    if storage.is_local(fs):
        return LocalBackend(path)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("s3", "s3a"):
        return S3Backend(fs, path)
    return GenericBackend(url, storage_options)
