"""Write curated WebDataset shards: deterministic tars plus a per-shard parquet index.

Tar members carry fixed metadata (mtime 0, uid/gid 0, mode 0644), so the same samples always
give the same bytes and the same sha256, whatever the run, machine or worker count.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any

import polars as pl

from schemas.tables import SHARD_INDEX, conform
from tasks.io import storage


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner, self.sha, self.bytes = inner, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.bytes += len(data)
        return self.inner.write(data)

    def flush(self) -> None:
        self.inner.flush()


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


@dataclass
class WrittenFile:
    path: str  # relative to the partition folder
    sha256: str
    bytes: int
    count: int = 0


def write_tar(
    url: str,
    rel_path: str,
    members: Iterable[tuple[str, dict[str, bytes]]],
    storage_options: dict[str, Any] | None = None,
) -> WrittenFile:
    """Write samples `(key, {ext: bytes})` into one tar, in the given order."""
    count = 0
    with storage.open_write(url, storage_options) as raw:
        out = _HashingWriter(raw)
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
            for key, files in members:
                for ext, data in files.items():
                    tar.addfile(*_member(f"{key}.{ext}", data))
                count += 1
    return WrittenFile(rel_path, out.sha.hexdigest(), out.bytes, count)


def write_index(
    df: pl.DataFrame, url: str, rel_path: str, storage_options: dict[str, Any] | None = None
) -> WrittenFile:
    """Write a table as parquet and describe it for the manifest."""
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd")
    data = buf.getvalue()
    storage.write_bytes(url, data, storage_options)
    return WrittenFile(rel_path, hashlib.sha256(data).hexdigest(), len(data), df.height)


def write_file(
    url: str, rel_path: str, data: bytes, storage_options: dict[str, Any] | None = None
) -> WrittenFile:
    storage.write_bytes(url, data, storage_options)
    return WrittenFile(rel_path, hashlib.sha256(data).hexdigest(), len(data))


def write_sizes(
    written: list[WrittenFile], stage_url: str, storage_options: dict[str, Any] | None = None
) -> WrittenFile:
    """`shards/sizes.json`: {shard file name: sample count}, as open_clip's loader reads it."""
    sizes = {w.path.removeprefix("shards/"): w.count for w in written if w.path.endswith(".tar")}
    data = json.dumps(dict(sorted(sizes.items())), indent=2).encode()
    url = f"{stage_url.rstrip('/')}/shards/sizes.json"
    return write_file(url, "shards/sizes.json", data, storage_options)


def describe_file(
    url: str, rel_path: str, storage_options: dict[str, Any] | None = None
) -> WrittenFile:
    """Describe a file another writer already put in place (e.g. report plots)."""
    data = storage.read_bytes(url, storage_options)
    return WrittenFile(rel_path, hashlib.sha256(data).hexdigest(), len(data))


def pool_sample_json(row: dict[str, Any]) -> bytes:
    """The `{key}.json` member of a published pool sample."""
    meta = {
        "uid": row["uid"],
        "clip_score": row["clip_score"],
        "source": row["source"],
        "source_key": row["key"],
        "url": row.get("url"),
        "width": row.get("width"),
        "height": row.get("height"),
        "caption": row["caption"],
    }
    if row.get("keep_prob") is not None:
        meta["keep_prob"] = row["keep_prob"]
        meta["entry_ids"] = list(row.get("entry_ids") or [])
    return json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()


def shard_index(rows: pl.DataFrame) -> pl.DataFrame:
    return conform(rows, SHARD_INDEX)
