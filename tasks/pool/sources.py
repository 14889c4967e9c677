"""Read web image-text pools one sample at a time: WebDataset tars and parquet files.

Shards are streamed (tarfile stream mode, parquet record batches) over fsspec, so memory is
bounded by one sample (tar) or one record batch (parquet) whatever the shard size, and
nothing is ever extracted to disk. This module opens a shard and dispatches to the reader
(`tasks.pool.tar`, `tasks.pool.parquet`); the types they share live in `tasks.pool.sample`
and are re-exported here, so callers import everything from `tasks.pool.sources`.

Error policy, in one place: a problem with one sample becomes a `RawSample` with a short
``error`` reason (counted and quarantined downstream); only a shard that cannot be opened at
all raises `ShardReadError`, so the caller can quarantine the shard as a whole. The reader
reports what it sees while reading; whether image bytes decode is the decoder's business.

Sample errors (first that applies): ``unsafe_member_path`` (absolute or ``..`` member name,
never read), ``truncated_tar`` (the group being read when the tar ended early),
``member_too_large``, ``duplicate_member`` (the same extension twice in one group),
``bad_json`` (sidecar not a JSON object: quarantined rather than silently losing its uid),
``missing_image``, ``caption_not_utf8``, ``missing_caption``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import IO, Any

from tasks.io.storage import exists, fingerprint, get_fs, named_store
from tasks.pool.parquet import iter_parquet
from tasks.pool.sample import (
    CAPTION_EXT,
    IMAGE_EXTS,
    MAX_MEMBER_BYTES,
    META_EXT,
    PARQUET_BATCH_ROWS,
    RawSample,
    Select,
    ShardReadError,
    decode_caption,
    download_failure,
    parse_meta,
    sniff_image_ext,
)
from tasks.pool.tar import iter_tar, split_member_name

__all__ = [
    "CAPTION_EXT",
    "IMAGE_EXTS",
    "MAX_MEMBER_BYTES",
    "META_EXT",
    "PARQUET_BATCH_ROWS",
    "RawSample",
    "Select",
    "ShardReadError",
    "decode_caption",
    "detect_format",
    "iter_samples",
    "iter_selected",
    "parse_meta",
    "sample_uid",
    "sample_url",
    "sniff_image_ext",
    "split_member_name",
]


def sample_uid(sample: RawSample, uid_column: str | None = "uid") -> str:
    """The source's uid when it has one, else a content hash of image bytes and caption.

    The hash frames each part with a presence byte and its length, so (image, caption) pairs
    can never collide by shifting bytes from one to the other, and a missing caption differs
    from an empty one. Stable across runs, machines and Python versions. The caption is
    hashed without surrounding whitespace (``str.strip``): the readers used to strip it, and
    uids published since then stay the same now that the caption is kept as written.
    """
    if uid_column:
        value = sample.meta.get(uid_column)
        if value is not None and str(value) != "":
            return str(value)
    h = hashlib.sha256()
    caption = None if sample.caption is None else sample.caption.strip().encode("utf-8")
    for part in (sample.image, caption):
        if part is None:
            h.update(b"\x00")
        else:
            h.update(b"\x01" + len(part).to_bytes(8, "big") + part)
    return h.hexdigest()[:32]


def sample_url(sample: RawSample) -> str | None:
    """The source URL from the json sidecar or parquet column (``url``, or LAION's ``URL``)."""
    value = sample.meta.get("url", sample.meta.get("URL"))
    return None if value is None else str(value)


def detect_format(url: str) -> str:
    """``webdataset`` or ``parquet`` from the file name."""
    name = url.lower().rsplit("/", 1)[-1].split("?", 1)[0]
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return "webdataset"
    if name.endswith(".parquet"):
        return "parquet"
    raise ShardReadError(url, "unknown format (expected .tar, .tar.gz, .tgz or .parquet)")


def iter_samples(
    url: str,
    storage_options: dict[str, Any] | None = None,
    fmt: str = "auto",
    image_column: str = "image",
    caption_column: str = "caption",
    uid_column: str | None = "uid",
    *,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    select: Select | None = None,
) -> Iterator[RawSample]:
    """Stream the samples of one shard, in shard order.

    `select(key, index)` (optional) says which samples to yield; the others are skipped
    without reading their bytes. Raises `ShardReadError` (on the first ``next()``) when the
    shard cannot be opened; other I/O errors (a dropped connection) propagate, so that a
    retry re-reads the shard instead of caching a partial result.
    """
    fmt = detect_format(url) if fmt == "auto" else fmt
    if fmt not in ("webdataset", "parquet"):
        raise ShardReadError(url, f"unknown format {fmt!r} (use webdataset or parquet)")
    with _open_shard(url, storage_options) as f:
        if fmt == "webdataset":
            # the failed rows follow every tar sample, selected or not: a selection must
            # number them as the full read does
            in_tar = yield from iter_tar(f, url, max_member_bytes, select)
            yield from failed_downloads(url, storage_options, select, first_index=in_tar)
        else:
            columns = (image_column, caption_column, uid_column)
            yield from iter_parquet(f, url, columns, select)


def sidecar_url(url: str) -> str | None:
    """img2dataset's per-shard metadata beside a tar: `00000.tar` -> `00000.parquet`."""
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if url.endswith(suffix):
            return url[: -len(suffix)] + ".parquet"
    return None


def failed_downloads(
    url: str, storage_options: dict[str, Any] | None, select: Select | None, first_index: int
) -> Iterator[RawSample]:
    """The samples img2dataset tried for a tar shard and failed to download.

    Its WebDataset output holds only the successes; the sidecar parquet lists every URL
    with `status` and `error_message`. The failures follow the tar's samples (in sidecar
    order), quarantined with img2dataset's own error, so input counts stay complete. A
    sidecar that is not img2dataset's (no `status` column) is ignored.
    """
    import pyarrow.parquet as pq

    side = sidecar_url(url)
    if side is None or not exists(side, storage_options):
        return
    with _open_shard(side, storage_options) as f:
        table = pq.read_table(f)
    if "status" not in table.column_names:
        return
    index = first_index
    for row in table.to_pylist():
        failure = download_failure(row)
        if failure is None:
            continue
        key = str(row.get("key") or f"failed{index:09d}")
        if select is None or select(key, index):
            caption = row.get("caption")
            meta = {k: v for k, v in row.items() if not isinstance(v, bytes)}
            yield RawSample(key, index, None, None, caption, meta, *failure)
        index += 1


def shard_fingerprint(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A shard's fingerprint plus its img2dataset sidecar's (the failed rows come from it)."""
    fp = fingerprint(url, storage_options)
    side = sidecar_url(url)
    if side is not None and exists(side, storage_options):
        fp["sidecar"] = fingerprint(side, storage_options)
    return fp


def pool_inputs(urls: list[str]) -> list[str]:
    """The shards of a pool among listed files: img2dataset's `*_stats.json` files and the
    metadata parquet beside each of its tars are not shards of their own."""
    tars = {s for u in urls if (s := sidecar_url(u))}
    return [u for u in urls if not u.endswith("_stats.json") and u not in tars]


def iter_selected(
    url: str, wanted: Collection[int] | Collection[str], **kwargs: Any
) -> Iterator[RawSample]:
    """Stream only the wanted samples of a shard, in shard order (for publishing).

    `wanted` holds sample indices (ints: exact, and reading stops after the last one) or keys
    (strs: every sample with that key, since a shard may repeat a key). `kwargs` are those of
    `iter_samples`.
    """
    wanted_set = set(wanted)
    if not wanted_set:
        return
    by_index = all(isinstance(w, int) for w in wanted_set)
    last = max(w for w in wanted_set if isinstance(w, int)) if by_index else -1

    def select(key: str, index: int) -> bool:
        if by_index and index > last:
            raise _StopReading
        return (index if by_index else key) in wanted_set

    try:
        yield from iter_samples(url, select=select, **kwargs)
    except _StopReading:
        return


class _StopReading(Exception):
    """Raised by a selection predicate once nothing further can be wanted."""


@contextmanager
def _open_shard(url: str, storage_options: dict[str, Any] | None) -> Iterator[IO[bytes]]:
    """Open through fsspec, turning "cannot be opened" into a `ShardReadError`."""
    fs, path = get_fs(url, storage_options)
    try:
        with named_store(url, storage_options):
            f = fs.open(path, "rb")
    except FileNotFoundError:
        raise ShardReadError(url, "not found") from None
    except IsADirectoryError:
        raise ShardReadError(url, "is a directory") from None
    except PermissionError:
        raise ShardReadError(url, "permission denied") from None
    with named_store(url, storage_options), f:
        yield f
