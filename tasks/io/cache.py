"""One get-or-compute cache for every expensive result (datatrove's completion markers).

An entry is named by a key built from *every* input its result depends on (input
fingerprints, settings, model identity, algorithm versions) and lives in its own folder:

    {root}/{namespace}/{key}/{attempt}/...   the files of one computation
    {root}/{namespace}/{key}/done.json       the marker, written last

Each computation writes into a fresh attempt folder and the marker names the attempt, so
two processes computing the same key at once never mix their files: whichever marker lands
last wins, and both are complete. A computation that raises leaves no marker, so nothing
half-done is ever read back (the error policy: broken infrastructure caches nothing), and its
attempt folder is removed (best effort): a full disk gets back what the failed attempt took. Local
roots can also take an inter-process lock so that a large download happens once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from schemas.config import config_hash
from tasks.io import storage

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump to orphan every entry written by an older layout
MARKER = "done.json"


@dataclass
class Attempt:
    """Where one computation writes its files; records what it wrote for the marker."""

    folder: str
    storage_options: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)  # name -> path relative to the entry

    def url(self, name: str) -> str:
        """The URL to write file `name` to (recorded for the marker)."""
        self.files[name] = f"{self.folder.rstrip('/').rsplit('/', 1)[-1]}/{name}"
        return storage.join(self.folder, name)

    def write_bytes(self, name: str, data: bytes) -> None:
        storage.write_bytes(self.url(name), data, self.storage_options)

    def write_json(self, name: str, obj: Any) -> None:
        storage.write_json(self.url(name), obj, self.storage_options)

    def write_parquet(self, name: str, df: Any) -> None:
        storage.write_parquet(df, self.url(name), self.storage_options)


@dataclass(frozen=True)
class Hit:
    """A committed entry: its key, file URLs by name, the metadata its computation returned."""

    key: str
    files: dict[str, str]
    meta: dict[str, Any]
    cached: bool  # True when read back, False when computed by this call


class Cache:
    """Entries under `root` (any fsspec URL), one namespace per kind of result."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        self.root = root
        self.so = dict(storage_options or {})

    def key(self, namespace: str, parts: dict[str, Any]) -> str:
        return config_hash({"format": CACHE_FORMAT, "namespace": namespace, "parts": parts})

    def entry_url(self, namespace: str, key: str) -> str:
        return storage.join(self.root, namespace, key)

    def lookup(self, namespace: str, parts: dict[str, Any]) -> Hit | None:
        """The committed entry for `parts`, or None."""
        key = self.key(namespace, parts)
        return self._read(namespace, key)

    def _read(self, namespace: str, key: str) -> Hit | None:
        entry = self.entry_url(namespace, key)
        marker_url = storage.join(entry, MARKER)
        if not storage.exists(marker_url, self.so):
            return None
        marker = storage.read_json(marker_url, self.so)
        files = {n: storage.join(entry, rel) for n, rel in marker["files"].items()}
        return Hit(key, files, marker.get("meta") or {}, cached=True)

    def get_or_compute(
        self,
        namespace: str,
        parts: dict[str, Any],
        compute: Callable[[Attempt], dict[str, Any]],
        *,
        force: bool = False,
        lock: bool = False,
    ) -> Hit:
        """The entry for `parts`, computing it with `compute(attempt)` when absent (or forced).

        `compute` writes its files through `attempt` and returns JSON-able metadata. With
        `lock` (local roots only) concurrent processes wait for one computation instead of
        repeating it.
        """
        key = self.key(namespace, parts)
        with self._locked(namespace, key, lock):
            previous = self._read(namespace, key)
            if previous is not None and not force:
                return previous
            attempt = Attempt(self._attempt_folder(namespace, key), self.so)
            try:
                meta = compute(attempt)
            except BaseException:  # nothing of it is read (no marker): give its space back
                self._remove_folder(attempt.folder)
                raise
            marker = {
                "key": key,
                "namespace": namespace,
                "parts": parts,
                "files": attempt.files,
                "meta": meta,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            entry = self.entry_url(namespace, key)
            storage.write_json(storage.join(entry, MARKER), marker, self.so)
        if previous is not None:  # --force: the superseded attempt is garbage now
            self._remove_attempts(previous, keep=attempt.folder)
        files = {n: storage.join(entry, rel) for n, rel in attempt.files.items()}
        return Hit(key, files, meta, cached=False)

    def _attempt_folder(self, namespace: str, key: str) -> str:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        return storage.join(self.entry_url(namespace, key), f"a-{stamp}-{uuid.uuid4().hex[:8]}")

    def _remove_attempts(self, hit: Hit, keep: str) -> None:
        folders = {url.rsplit("/", 1)[0] for url in hit.files.values()}
        for folder in folders - {keep.rstrip("/")}:
            self._remove_folder(folder)

    def _remove_folder(self, folder: str) -> None:
        try:
            storage.remove(folder, self.so, recursive=True)
        except Exception as err:  # garbage left behind costs space, not correctness
            logger.warning("could not remove cache files %s: %s", folder, err)

    @contextlib.contextmanager
    def _locked(self, namespace: str, key: str, lock: bool) -> Iterator[None]:
        fs, path = storage.get_fs(self.entry_url(namespace, key), self.so)
        if not (lock and storage.is_local(fs)):
            yield
            return
        os.makedirs(path, exist_ok=True)
        fd = os.open(os.path.join(path, ".lock"), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def per_input(
    cache_root: str,
    storage_options: dict[str, Any] | None,
    namespace: str,
    url: str,
    settings: dict[str, Any],
    compute: Callable[[Attempt], dict[str, Any]],
    force: bool = False,
    fingerprint: Callable[..., dict[str, Any]] = storage.fingerprint,
) -> tuple[Hit, dict[str, Any]]:
    """The entry for one input file: keyed by its current fingerprint and `settings`.

    The stages that do expensive work per input shard or video all cache this way; returns
    the entry and the fingerprint it was keyed by (`fingerprint(url, storage_options)`,
    which may add files the input comes with).
    """
    fp = fingerprint(url, storage_options)
    parts = {"input": fp, "settings": settings}
    hit = Cache(cache_root, storage_options).get_or_compute(namespace, parts, compute, force=force)
    return hit, fp
