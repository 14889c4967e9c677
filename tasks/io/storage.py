"""Storage helpers over fsspec: one place that knows local paths and s3:// (or any fsspec URL).

Everything that reads or writes goes through these so that local disk and object stores
behave the same: globbing inputs, fingerprints for cache keys, whole-file writes that never
leave a half-written file under the final name, and checksums for lineage.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import IO, Any

import fsspec
from fsspec.core import split_protocol, url_to_fs

from tasks.errors import StoreError, is_store_failure, short

HASH_CHUNK = 4 << 20


# botocore's "standard" retry mode retries throttling (SlowDown), 500/502/503/504, timeouts and
# dropped connections with exponential backoff and jitter; s3fs retries interrupted body reads
# on top. Users' own `config_kwargs.retries` win.
S3_RETRIES: dict[str, Any] = {"max_attempts": 5, "mode": "standard"}


def with_defaults(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The storage options for `url`, with retry defaults added for S3."""
    so = dict(storage_options or {})
    if split_protocol(url)[0] not in ("s3", "s3a"):
        return so
    config = dict(so.get("config_kwargs") or {})
    config.setdefault("retries", dict(S3_RETRIES))
    so["config_kwargs"] = config
    return so


def store_name(url: str, storage_options: dict[str, Any] | None = None) -> str:
    """`s3://bucket at ENDPOINT`: the store a URL lives in, as a person would look it up
    (the endpoint from the options or the environment; never a credential)."""
    protocol, path = split_protocol(url)
    name = f"{protocol}://{path.split('/', 1)[0]}"
    so = storage_options or {}
    endpoint = (
        (so.get("client_kwargs") or {}).get("endpoint_url")
        or so.get("endpoint_url")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    return f"{name} at {endpoint}" if endpoint and protocol in ("s3", "s3a") else name


@contextmanager
def named_store(url: str, storage_options: dict[str, Any] | None = None) -> Iterator[None]:
    """Re-raise a remote store's failure (after its client's retries) as one `StoreError`
    naming the store and the object; anything else (a missing file, a bad request, a local
    disk's own error) passes unchanged."""
    try:
        yield
    except Exception as err:
        if isinstance(err, StoreError) or not is_store_failure(err):
            raise
        if split_protocol(url)[0] in (None, "file", "local"):
            raise
        where = split_protocol(url)[1]
        why = err.strerror if isinstance(err, OSError) and err.strerror else short(err)
        msg = f"store {store_name(url, storage_options)} kept failing on {where}: {why}"
        raise StoreError(errno.EIO, msg) from err


def get_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """Return (filesystem, path-within-it) for a local path or URL."""
    return url_to_fs(url, **with_defaults(url, storage_options))


def _fresh(fs: Any, path: str | None = None) -> None:
    """Drop cached listings: another process (a killed run, a concurrent one) may have changed
    the store since this process last looked, and `_SUCCESS` checks must see the truth."""
    if not is_local(fs):
        fs.invalidate_cache(path)


def is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def unstrip(fs: Any, path: str) -> str:
    """Turn a filesystem-relative path back into a URL the user would recognise."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def join(base: str, *parts: str) -> str:
    """Join URL/path parts with '/', which every fsspec backend accepts."""
    out = base.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def expand_inputs(
    patterns: str | list[str], storage_options: dict[str, Any] | None = None
) -> list[str]:
    """Expand input globs into a sorted, de-duplicated list of file URLs.

    Sorted order is what makes "first one in input order wins" and output sharding
    independent of listing order across stores.
    """
    found: set[str] = set()
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        fs, path = get_fs(pattern, storage_options)
        _fresh(fs)
        with named_store(pattern, storage_options):
            if any(ch in path for ch in "*?["):
                matches = fs.glob(path)
            else:
                matches = [path] if fs.exists(path) else []
            found.update(unstrip(fs, m) for m in matches if not fs.isdir(m))
    return sorted(found)


def fingerprint(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A cheap identity of a file's content: size plus mtime (local) or ETag/checksum (stores).

    Used in cache keys: a changed file gets a new key, an unchanged one is never re-scored.
    """
    fs, path = get_fs(url, storage_options)
    with named_store(url, storage_options):
        info = fs.info(path)
    fp: dict[str, Any] = {"url": url, "size": int(info.get("size") or 0)}
    for field in ("ETag", "etag", "md5", "checksum", "crc32c"):
        if info.get(field):
            fp["etag"] = str(info[field]).strip('"')
            break
    else:
        mtime = info.get("mtime") or info.get("LastModified") or info.get("created")
        fp["mtime"] = str(mtime)
    return fp


def fingerprint_key(fp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()


def sha256_file(url: str, storage_options: dict[str, Any] | None = None) -> str:
    fs, path = get_fs(url, storage_options)
    h = hashlib.sha256()
    with named_store(url, storage_options), fs.open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def exists(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    fs, path = get_fs(url, storage_options)
    _fresh(fs, path)
    with named_store(url, storage_options):
        return bool(fs.exists(path))


@contextmanager
def open_read(url: str, storage_options: dict[str, Any] | None = None) -> Iterator[IO[bytes]]:
    fs, path = get_fs(url, storage_options)
    with named_store(url, storage_options), fs.open(path, "rb") as f:
        yield f


@contextmanager
def open_write(url: str, storage_options: dict[str, Any] | None = None) -> Iterator[IO[bytes]]:
    """Write a whole file so that the final name only ever holds complete content.

    Locally: write a sibling temp file, fsync, then rename. On object stores an upload
    only becomes visible when it completes, so the final key is written directly; if the
    writer raises, the upload is discarded (fsspec would otherwise complete it on close,
    publishing a half-written object).
    """
    fs, path = get_fs(url, storage_options)
    if is_local(fs):
        parent = os.path.dirname(path)
        os.makedirs(parent or ".", exist_ok=True)
        tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    else:
        with named_store(url, storage_options):
            f = fs.open(path, "wb")
            try:
                yield f
            except BaseException:
                _discard(f)
                raise
            f.close()


def _discard(f: Any) -> None:
    """Abandon an unfinished upload: nothing appears under its key.

    fsspec's buffered files (S3, GCS, Azure) drop their buffer and abort a multipart upload
    on `discard()`; marking them closed keeps garbage collection from completing the upload.
    """
    discard = getattr(f, "discard", None)
    if discard is not None:
        discard()
    with suppress(AttributeError):  # a file type whose close state is read-only
        f.closed = True


def write_bytes(url: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    with open_write(url, storage_options) as f:
        f.write(data)


def read_bytes(url: str, storage_options: dict[str, Any] | None = None) -> bytes:
    with open_read(url, storage_options) as f:
        return f.read()


def write_json(url: str, obj: Any, storage_options: dict[str, Any] | None = None) -> None:
    write_bytes(
        url, json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), storage_options
    )


def read_json(url: str, storage_options: dict[str, Any] | None = None) -> Any:
    return json.loads(read_bytes(url, storage_options))


def write_parquet(df: Any, url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Write a polars frame as parquet through `open_write` (atomic locally)."""
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=True)
    write_bytes(url, buf.getvalue(), storage_options)


def npy_bytes(array: Any) -> bytes:
    """A numpy array as .npy bytes (no pickles: object arrays are refused)."""
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def read_npy(url: str, storage_options: dict[str, Any] | None = None) -> Any:
    """Load a .npy file; pickled content is refused, so a hostile file cannot run code."""
    import numpy as np

    return np.load(io.BytesIO(read_bytes(url, storage_options)), allow_pickle=False)


def read_npy_rows(url: str, rows: Any, storage_options: dict[str, Any] | None = None) -> Any:
    """Rows `rows` (ascending or not) of a 2-D .npy file, reading only their bytes (ranged
    reads; locally `pread`, not a memory map: the kernel maps pages around every touched
    row into the process, so a few rows from each of many files would grow its resident
    memory with the files' size). Pickled content is refused."""
    import numpy as np

    rows = np.asarray(rows, dtype=np.int64)
    fs, path = get_fs(url, storage_options)
    if is_local(fs):
        return _npy_rows(fs, path, url, rows, _local_ranges)
    with named_store(url, storage_options):
        return _npy_rows(fs, path, url, rows, _remote_ranges)


def _local_ranges(fs: Any, path: str, starts: list[int], width: int) -> list[bytes]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return [os.pread(fd, width, start) for start in starts]
    finally:
        os.close(fd)


def _remote_ranges(fs: Any, path: str, starts: list[int], width: int) -> list[Any]:
    return fs.cat_ranges([path] * len(starts), starts, [s + width for s in starts])


def _npy_rows(fs: Any, path: str, url: str, rows: Any, ranges: Any) -> Any:
    import numpy as np

    with fs.open(path, "rb", block_size=1 << 16) as f:
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if fortran or len(shape) != 2 or dtype.hasobject:
        raise ValueError(f"{url}: not a C-ordered 2-D numeric array")
    width = shape[1] * dtype.itemsize
    out = np.empty((len(rows), shape[1]), dtype=dtype)
    if not len(rows):
        return out
    if rows.min() < 0 or rows.max() >= shape[0]:
        raise IndexError(f"{url}: rows out of range 0..{shape[0] - 1}")
    starts = (offset + rows * width).tolist()
    for i, chunk in enumerate(ranges(fs, path, starts, width)):
        if isinstance(chunk, Exception):
            raise chunk
        if len(chunk) != width:
            raise ValueError(f"{url}: row {int(rows[i])} is cut short")
        out[i] = np.frombuffer(chunk, dtype=dtype)
    return out


def read_parquet(url: str, storage_options: dict[str, Any] | None = None) -> Any:
    import polars as pl

    with open_read(url, storage_options) as f:
        return pl.read_parquet(f)


def remove(
    url: str, storage_options: dict[str, Any] | None = None, recursive: bool = False
) -> None:
    fs, path = get_fs(url, storage_options)
    _fresh(fs, path)
    with named_store(url, storage_options):
        if fs.exists(path):
            fs.rm(path, recursive=recursive)


def listdir(url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    fs, path = get_fs(url, storage_options)
    _fresh(fs, path)
    with named_store(url, storage_options):
        if not fs.exists(path):
            return []
        return sorted(unstrip(fs, p) for p in fs.ls(path, detail=False))


def fsspec_open(url: str, mode: str = "rb", storage_options: dict[str, Any] | None = None) -> Any:
    """An OpenFile for libraries that want one (e.g. to stream a remote video)."""
    return fsspec.open(url, mode, **with_defaults(url, storage_options))
