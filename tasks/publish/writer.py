"""The one shard writer (img2dataset's writer): deterministic tars plus a parquet index each.

Both flows publish WebDataset shards the same way: `write_shard` streams samples
`(key, {ext: bytes}, index row)` into `shards/{name}` and writes the rows of the samples
it wrote to `shards/{stem}.parquet`; `write_sizes` then lists every shard's sample count
in `shards/sizes.json` (open_clip's loader reads it). Tar members carry fixed metadata
(mtime 0, uid/gid 0, mode 0644), so the same samples always give the same bytes and the
same sha256, whatever the run, machine or worker count. Every file is described by a
`WrittenFile` (path relative to the version folder, sha256, size, count) for the manifest.
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

from schemas.tables import conform
from tasks.io import storage

SIZES = "shards/sizes.json"
Sample = tuple[str, dict[str, bytes], dict[str, Any]]  # (key, {ext: bytes}, index row)


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
    path: str  # relative to the version folder
    sha256: str
    bytes: int
    count: int = 0


def write_shard(
    base: str,
    name: str,
    samples: Iterable[Sample],
    index_schema: dict[str, pl.DataType],
    storage_options: dict[str, Any] | None = None,
) -> list[WrittenFile]:
    """Write `shards/{name}` (a tar, samples in the given order) and its parquet index."""
    rel = f"shards/{name}"
    rows: list[dict[str, Any]] = []
    with storage.open_write(storage.join(base, rel), storage_options) as raw:
        out = _HashingWriter(raw)
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
            for key, files, row in samples:
                for ext, data in files.items():
                    tar.addfile(*_member(f"{key}.{ext}", data))
                rows.append(row)
    tar_file = WrittenFile(rel, out.sha.hexdigest(), out.bytes, len(rows))
    index = pl.DataFrame(rows, schema=index_schema) if rows else pl.DataFrame(schema=index_schema)
    index_rel = f"shards/{name.removesuffix('.tar')}.parquet"
    index_url = storage.join(base, index_rel)
    index_file = write_table(conform(index, index_schema), index_url, index_rel, storage_options)
    return [tar_file, index_file]


def write_table(
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
    written: list[WrittenFile], base: str, storage_options: dict[str, Any] | None = None
) -> WrittenFile:
    """`shards/sizes.json`: {shard file name: sample count}, as open_clip's loader reads it."""
    sizes = {w.path.removeprefix("shards/"): w.count for w in written if w.path.endswith(".tar")}
    data = json.dumps(dict(sorted(sizes.items())), indent=2).encode()
    return write_file(storage.join(base, SIZES), SIZES, data, storage_options)


def describe_file(
    url: str, rel_path: str, storage_options: dict[str, Any] | None = None
) -> WrittenFile:
    """Describe a file another writer already put in place (e.g. report plots)."""
    data = storage.read_bytes(url, storage_options)
    return WrittenFile(rel_path, hashlib.sha256(data).hexdigest(), len(data))
