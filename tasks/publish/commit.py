"""Atomic publication of a partition: stage everything, then commit with `_SUCCESS` last.

Local disk: files are written into a hidden staging folder beside the partition, which is
renamed into place in one step (the previous version, if any, is moved aside first and
deleted after). Object stores have no atomic rename: there the partition's `_SUCCESS` is
deleted first (unpublishing it), files are written in place, `manifest.json` lists them with
checksums, stale files are removed, and `_SUCCESS` is written last. Readers trust a
partition only when `_SUCCESS` exists, and only the files its manifest lists.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import subprocess
import uuid
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tasks.io import storage
from tasks.io.lock import assert_held
from tasks.publish.writer import WrittenFile

logger = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
MANIFEST = "manifest.json"


def partition_url(output: str, dataset: str, flow: str, partition: str) -> str:
    return storage.join(output, dataset, flow, partition)


def code_version() -> str:
    """Package version, plus the git commit when running from a checkout."""
    try:
        version = metadata.version("clip-curate")
    except metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{version}+g{sha}" if sha else version
    except (OSError, subprocess.SubprocessError):
        return version


@dataclass
class Staging:
    """Where a run writes its partition before the commit."""

    final: str
    staging: str
    local: bool
    storage_options: dict[str, Any]

    def url(self, rel: str) -> str:
        return storage.join(self.staging, rel)


def read_manifest(final: str, storage_options: dict[str, Any] | None = None) -> dict | None:
    """The manifest of a published partition, or None when it is not published."""
    if not storage.exists(storage.join(final, SUCCESS), storage_options):
        return None
    try:
        return storage.read_json(storage.join(final, MANIFEST), storage_options)
    except (OSError, ValueError):
        return None


def begin(final: str, storage_options: dict[str, Any] | None = None) -> Staging:
    """Open a staging area for `final`."""
    so = storage_options or {}
    fs, path = storage.get_fs(final, so)
    if storage.is_local(fs):
        parent, name = os.path.split(path.rstrip("/"))
        staging = os.path.join(parent, f".{name}.staging-{uuid.uuid4().hex[:12]}")
        os.makedirs(staging)
        return Staging(final, staging, True, so)
    storage.remove(storage.join(final, SUCCESS), so)  # unpublish before touching anything
    return Staging(final, final, False, so)


def commit(stage: Staging, manifest: dict[str, Any], outputs: list[WrittenFile]) -> None:
    """Write the manifest, make the partition visible, then `_SUCCESS`.

    Refuses (LockLost) when this run's partition lock expired or was taken over, so two
    runs of one partition never both publish.
    """
    assert_held(stage.final)
    manifest = {**manifest, "outputs": [asdict(o) for o in sorted(outputs, key=lambda o: o.path)]}
    manifest["created"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    storage.write_json(stage.url(MANIFEST), manifest, stage.storage_options)
    if stage.local:
        _swap_local(stage.staging, stage.final)
    else:
        keep = {o.path for o in outputs} | {MANIFEST}
        _remove_stale(stage.final, keep, stage.storage_options)
    assert_held(stage.final)
    storage.write_bytes(storage.join(stage.final, SUCCESS), b"", stage.storage_options)
    logger.info("published %s (%d files)", stage.final, len(outputs))


def abort(stage: Staging) -> None:
    """Drop a local staging folder (object-store partitions stay unpublished)."""
    if stage.local:
        shutil.rmtree(stage.staging, ignore_errors=True)


def _swap_local(staging: str, final: str) -> None:
    final = final.rstrip("/")
    old = None
    if os.path.exists(final):
        old = f"{os.path.dirname(final)}/.{os.path.basename(final)}.old-{uuid.uuid4().hex[:12]}"
        os.rename(final, old)
    os.rename(staging, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _remove_stale(final: str, keep: set[str], storage_options: dict[str, Any]) -> None:
    fs, root = storage.get_fs(final, storage_options)
    root = root.rstrip("/")
    fs.invalidate_cache(root)  # a killed run may have left files this process never listed
    for path in fs.find(root):
        rel = path[len(root) + 1 :]
        if rel not in keep and rel != SUCCESS:
            fs.rm(path)


def clean_stale_staging(final: str, storage_options: dict[str, Any] | None = None) -> None:
    """Remove staging/old folders that a killed run left beside a local partition."""
    fs, path = storage.get_fs(final, storage_options)
    if not storage.is_local(fs):
        return
    parent, name = os.path.split(path.rstrip("/"))
    if not os.path.isdir(parent):
        return
    for entry in os.listdir(parent):
        if entry.startswith((f".{name}.staging-", f".{name}.old-")):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
