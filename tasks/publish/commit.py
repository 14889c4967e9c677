"""Versioned, atomic publication of a partition on any store (Delta Lake's idea, small).

1. `begin`: a new version folder `{partition}/v-{time}-{id}/`. Nothing reads it: it is not
   named by the manifest. Every data file of the run (shards, tables, report, running
   counts) is written there, once, and never changed afterwards.
2. `commit`: `manifest.json` at the partition root is replaced in one step (a rename
   locally, one PUT on an object store) by a manifest naming the new version and listing
   its files with sizes and sha256. That write *is* the publication. `_SUCCESS` follows
   (once, for the first version); then version folders other than the new one and the one
   it replaced are removed. The dataset's catalog (`tasks.publish.catalog`) is told before
   and after the manifest write, so it always equals the manifests.

A run that fails, is killed at any point, or is held by the gate therefore leaves the
previous version published and intact: until the pointer moves, readers follow the old
manifest to the old files, which nobody touches; after it moves, they follow the new one.
The replaced version is kept until the next commit, so a reader that read the old manifest
just before the switch can finish. Folders of killed runs are removed by the next commit.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from tasks.io import storage
from tasks.io.lock import assert_held
from tasks.publish import catalog
from tasks.publish.manifest import (
    MANIFEST,
    ROOT_FILES,
    SUCCESS,
    VERSION_PREFIX,
    Published,
    read_published,
)
from tasks.publish.writer import WrittenFile

logger = logging.getLogger(__name__)

HELD = "_HELD.json"


@dataclass(frozen=True)
class Version:
    """One attempt to publish a partition: an immutable folder inside it."""

    final: str
    id: str
    storage_options: dict[str, Any]

    @property
    def root(self) -> str:
        return storage.join(self.final, self.id)

    def url(self, name: str) -> str:
        """Where file `name` (e.g. `shards/000000.tar`) of this version is written."""
        return storage.join(self.root, name)


def now_utc() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def new_version_id() -> str:
    """Sortable by time, unique by a random suffix."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{VERSION_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}"


def begin(final: str, storage_options: dict[str, Any] | None = None) -> Version:
    """A fresh version folder for `final` (created lazily by the first write)."""
    return Version(final.rstrip("/"), new_version_id(), dict(storage_options or {}))


def write_pointer(final: str, manifest: dict[str, Any], so: dict[str, Any]) -> None:
    """Replace `manifest.json` in one step: the commit point."""
    storage.write_json(storage.join(final, MANIFEST), manifest, so)


def mark_success(final: str, so: dict[str, Any]) -> None:
    """`_SUCCESS` at the partition root (written once; later commits find it there)."""
    url = storage.join(final, SUCCESS)
    if not storage.exists(url, so):
        storage.write_bytes(url, b"", so)


def commit(version: Version, manifest: dict[str, Any], outputs: list[WrittenFile]) -> Published:
    """Publish `version`: write the manifest pointing at it, `_SUCCESS`, then prune.

    Refuses (LockLost) when this run's partition lock expired or was taken over, so two
    runs of one partition never both publish.
    """
    so = version.storage_options
    assert_held(version.final)
    previous = read_published(version.final, so)
    manifest = {
        **manifest,
        "version": version.id,
        "previous_version": previous.version if previous else None,
        "created": now_utc(),
        "outputs": [
            {**asdict(o), "path": f"{version.id}/{o.path}"}
            for o in sorted(outputs, key=lambda o: o.path)
        ],
    }
    # the catalog notes the commit first (and refuses one computed against history that
    # changed meanwhile); readers resolve the note from the manifest until `finish`
    catalog.begin(version.final, version.id, so, manifest.get("history"))
    assert_held(version.final)
    write_pointer(version.final, manifest, so)
    mark_success(version.final, so)
    logger.info("published %s version %s (%d files)", version.final, version.id, len(outputs))
    published = Published(version.final, manifest)
    try:
        catalog.finish(version.final, published, so)
    except Exception as err:  # published already; the pending note keeps readers right
        logger.warning("could not update the catalog of %s: %s", version.final, err)
    keep = {version.id} | ({previous.version} if previous and previous.version else set())
    prune(version.final, so, keep)
    return published


def abort(version: Version) -> None:
    """Remove an uncommitted version's files (best effort: the next commit prunes them).

    A version the manifest already points at is never removed: a failure after the commit
    point (while writing `_SUCCESS` or pruning) leaves it published. Nothing here raises: it
    runs while a failure (often the store's own) is on its way out, and must not replace it.
    """
    try:
        published = read_published(version.final, version.storage_options)
        if published is not None and published.version == version.id:
            logger.warning("version %s was committed before the failure: kept", version.id)
            return
        storage.remove(version.root, version.storage_options, recursive=True)
    except Exception as err:  # the store may be what failed: keep the run's own error
        logger.warning("could not remove unpublished version %s: %s", version.root, err)


def hold(version: Version, record: dict[str, Any]) -> str:
    """Keep an uncommitted version for inspection with `_HELD.json`; returns its folder.

    Earlier held versions of the partition are superseded and removed; the published one
    (and the one it replaced) stay.
    """
    so = version.storage_options
    storage.write_json(version.url(HELD), record, so)
    try:
        catalog.record_held(version.final, {"version": version.id}, so)
    except Exception as err:  # `curate ls` would miss the mark; the held folder is the truth
        logger.warning("could not note the held version in the catalog: %s", err)
    published = read_published(version.final, so)
    keep = {version.id}
    if published is not None:
        keep |= {v for v in (published.version, published.manifest.get("previous_version")) if v}
    prune(version.final, so, keep, legacy=published is None or published.version is not None)
    return version.root


def prune(final: str, so: dict[str, Any], keep: set[str], legacy: bool = True) -> None:
    """Remove version folders not in `keep`; with `legacy`, also loose files at the root
    left by partitions published before versioning (never the pointer files)."""
    for url in storage.listdir(final, so):
        name = url.rstrip("/").rsplit("/", 1)[-1]
        if name in keep or name in ROOT_FILES:
            continue
        if not name.startswith(VERSION_PREFIX) and not legacy:
            continue
        try:
            storage.remove(url, so, recursive=True)
        except OSError as err:  # garbage costs space, not correctness: the next commit retries
            logger.warning("could not remove %s: %s", url, err)
