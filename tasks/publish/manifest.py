"""What readers follow: a partition's `manifest.json`, the pointer to its published version.

A partition folder `{output}/{dataset}/{flow}/{partition}/` holds immutable version
folders (`v-.../`) and two small files at its root: `manifest.json`, which names the
published version and lists its files with sizes and sha256, and `_SUCCESS`, written once
the first version is committed. A partition without `_SUCCESS` is not published; with it,
the manifest says which files are the data. Every reader (verify, report, the gate, running
counts, backfill, the consumer API) goes through `read_published`.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tasks.io import storage

SUCCESS = "_SUCCESS"
MANIFEST = "manifest.json"
VERSION_PREFIX = "v-"
ROOT_FILES = (MANIFEST, SUCCESS, "README.md")  # pointer and card: outside any version


def partition_url(output: str, dataset: str, flow: str, partition: str) -> str:
    return storage.join(output, dataset, flow, partition)


def code_version() -> str:
    """Package version, plus the git commit when running from a checkout."""
    try:
        version = metadata.version("clip-curate")
    except metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parents[2]
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


@dataclass(frozen=True)
class Published:
    """A published partition as its manifest describes it."""

    uri: str
    manifest: dict[str, Any]

    @property
    def version(self) -> str | None:
        """The version folder's name (None for partitions published before versioning)."""
        return self.manifest.get("version")

    @property
    def base(self) -> str:
        """The folder holding this version's files."""
        return storage.join(self.uri, self.version) if self.version else self.uri

    def rel(self, name: str) -> str:
        """Path of file `name` (e.g. `shards/000000.tar`) relative to the partition folder."""
        return f"{self.version}/{name}" if self.version else name

    def url(self, name: str) -> str:
        """URL of file `name` of the published version."""
        return storage.join(self.uri, self.rel(name))

    def outputs(self) -> list[dict[str, Any]]:
        outputs = self.manifest.get("outputs")
        return outputs if isinstance(outputs, list) else []

    def names(self) -> list[str]:
        """Names of the version's files (paths relative to the version folder)."""
        prefix = f"{self.version}/" if self.version else ""
        return [
            str(o["path"]).removeprefix(prefix)
            for o in self.outputs()
            if isinstance(o, dict) and isinstance(o.get("path"), str)
        ]

    def has(self, name: str) -> bool:
        return name in self.names()


def read_published(uri: str, storage_options: dict[str, Any] | None = None) -> Published | None:
    """The published version of the partition at `uri`, or None when it is not published."""
    if not storage.exists(storage.join(uri, SUCCESS), storage_options):
        return None
    try:
        manifest = storage.read_json(storage.join(uri, MANIFEST), storage_options)
    except (OSError, ValueError):
        return None
    return Published(uri.rstrip("/"), manifest) if isinstance(manifest, dict) else None


def read_manifest(uri: str, storage_options: dict[str, Any] | None = None) -> dict | None:
    """The manifest of a published partition, or None when it is not published."""
    published = read_published(uri, storage_options)
    return published.manifest if published else None


def partitions(
    output: str, dataset: str, flow: str, storage_options: dict[str, Any] | None = None
) -> list[str]:
    """Names of the partition folders of a flow, sorted (published or not)."""
    folder = storage.join(output, dataset, flow)
    names = {u.rstrip("/").rsplit("/", 1)[-1] for u in storage.listdir(folder, storage_options)}
    return sorted(n for n in names if n and n[0] not in "._")
