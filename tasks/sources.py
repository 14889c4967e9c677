"""Read web image-text pools one sample at a time: WebDataset tars and parquet files.

Shards are streamed (tarfile stream mode, parquet record batches) over fsspec, so memory is
bounded by one sample (tar) or one record batch (parquet) whatever the shard size, and
nothing is ever extracted to disk.

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
import json
import logging
import re
import tarfile
import zlib
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from tasks.storage import get_fs

logger = logging.getLogger(__name__)

IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "avif"})
CAPTION_EXT = "txt"
META_EXT = "json"
MAX_MEMBER_BYTES = 128 << 20
PARQUET_BATCH_ROWS = 256

# webdataset's own split: key = path up to the first '.' of the basename, extension = the rest.
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_WDS_META = re.compile(r"__[^/]*__($|/)")  # webdataset skips members like __meta__.json

Select = Callable[[str, int], bool]  # (key, index) -> yield this sample?


class ShardReadError(Exception):
    """A shard that cannot be read at all (missing, not a tar/parquet, wrong columns)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot read shard {url}: {reason}")
        self.url = url
        self.reason = reason


@dataclass
class RawSample:
    """One sample as read from its source shard, before any decoding."""

    key: str
    index: int  # position in the source shard, in order
    image: bytes | None
    image_ext: str | None
    caption: str | None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


_MAGIC = {
    b"\xff\xd8\xff": "jpg",
    b"\x89PNG\r\n\x1a\n": "png",
    b"GIF87a": "gif",
    b"GIF89a": "gif",
    b"BM": "bmp",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
}


def sniff_image_ext(data: bytes | None) -> str | None:
    """The image format from magic bytes (parquet pools carry no file extension)."""
    if not data:
        return None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "avif"
    return next((ext for magic, ext in _MAGIC.items() if data.startswith(magic)), None)


def sample_uid(sample: RawSample, uid_column: str | None = "uid") -> str:
    """The source's uid when it has one, else a content hash of image bytes and caption.

    The hash frames each part with a presence byte and its length, so (image, caption) pairs
    can never collide by shifting bytes from one to the other, and a missing caption differs
    from an empty one. Stable across runs, machines and Python versions.
    """
    if uid_column:
        value = sample.meta.get(uid_column)
        if value is not None and str(value) != "":
            return str(value)
    h = hashlib.sha256()
    caption = None if sample.caption is None else sample.caption.encode("utf-8")
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
            yield from _iter_tar(f, url, max_member_bytes, select)
        else:
            columns = (image_column, caption_column, uid_column)
            yield from _iter_parquet(f, url, columns, select)


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
        f = fs.open(path, "rb")
    except FileNotFoundError:
        raise ShardReadError(url, "not found") from None
    except IsADirectoryError:
        raise ShardReadError(url, "is a directory") from None
    except PermissionError:
        raise ShardReadError(url, "permission denied") from None
    with f:
        yield f


# --- WebDataset tars -----------------------------------------------------------------------

_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error)


@dataclass
class _Group:
    """The members of one sample: consecutive tar members sharing a key."""

    key: str
    index: int
    wanted: bool
    parts: dict[str, bytes] = field(default_factory=dict)
    exts: set[str] = field(default_factory=set)
    error: str | None = None

    def to_sample(self) -> RawSample:
        if self.error:  # nothing of a broken group is trusted
            return RawSample(self.key, self.index, None, None, None, {}, self.error)
        image_ext = next((e for e in self.parts if e in IMAGE_EXTS), None)
        meta, meta_error = ({}, None)
        if META_EXT in self.parts:
            meta, meta_error = parse_meta(self.parts[META_EXT])
        caption, caption_error = (None, "missing_caption")
        if CAPTION_EXT in self.parts:
            caption, caption_error = decode_caption(self.parts[CAPTION_EXT])
        image = self.parts.get(image_ext) if image_ext else None
        error = meta_error or (None if image_ext else "missing_image") or caption_error
        return RawSample(self.key, self.index, image, image_ext, caption, meta, error)


def split_member_name(name: str) -> tuple[str | None, str, bool]:
    """(key, lower-cased extension, unsafe) of a tar member, keyed as webdataset does.

    Members without an extension get key None (webdataset skips them), unless unsafe.
    """
    unsafe = name.startswith(("/", "\\")) or ".." in re.split(r"[/\\]", name)
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    match = _KEY_EXT.match(name)
    if match is None:
        return (name, "", True) if unsafe else (None, "", False)
    return match.group(1), match.group(2).lower(), unsafe


def _iter_tar(
    f: IO[bytes], url: str, max_member_bytes: int, select: Select | None
) -> Iterator[RawSample]:
    stream = _open_tar(f, url)
    if stream is None:
        return
    group: _Group | None = None
    try:
        for info in _regular_members(stream):
            key, ext, unsafe = split_member_name(info.name)
            if key is None:
                logger.debug("%s: skipping member without extension %r", url, info.name)
                continue
            if group is None or key != group.key:
                if group is not None and group.wanted:
                    yield group.to_sample()
                index = 0 if group is None else group.index + 1
                group = _Group(key, index, select is None or select(key, index))
            _add_member(stream, info, group, ext, unsafe, max_member_bytes)
        truncated = not _ended_cleanly(stream)
    except _TAR_ERRORS as err:
        logger.warning("%s: tar ends early or is unreadable: %s", url, err)
        truncated = True
    if group is not None and truncated:
        group.error = "truncated_tar"
    if group is not None and group.wanted:
        yield group.to_sample()


def _open_tar(f: IO[bytes], url: str) -> tarfile.TarFile | None:
    """A stream-mode tarfile over `f` (None for a zero-byte shard)."""
    if not f.read(1):
        return None
    f.seek(0)
    try:
        return tarfile.open(fileobj=f, mode="r|*")
    except _TAR_ERRORS as err:
        raise ShardReadError(url, f"not a readable tar ({err})") from None


def _regular_members(stream: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Regular-file members, skipping webdataset meta members, dirs and links.

    Clears tarfile's member list as it goes: in stream mode it would otherwise keep one
    TarInfo per member for the whole shard.
    """
    for info in stream:
        if info.isreg() and not _WDS_META.match(info.name):
            yield info
        stream.members = []


def _add_member(
    stream: tarfile.TarFile,
    info: tarfile.TarInfo,
    group: _Group,
    ext: str,
    unsafe: bool,
    max_member_bytes: int,
) -> None:
    if not group.wanted or group.error:
        return
    if unsafe:
        group.error = "unsafe_member_path"
    elif ext in group.exts:
        group.error = "duplicate_member"
    elif info.size > max_member_bytes:
        group.error = "member_too_large"
    else:
        member = stream.extractfile(info)
        group.parts[ext] = member.read() if member is not None else b""
    group.exts.add(ext)


def _ended_cleanly(stream: tarfile.TarFile) -> bool:
    """Whether the archive ended on its end-of-archive marker (two zero blocks).

    tarfile stops silently, without an error, when a header is cut short or missing, which
    is exactly what a tar truncated at (or in) a header looks like.
    """
    block = tarfile.BLOCKSIZE
    if stream.fileobj is None or stream.fileobj.tell() - stream.offset != block:
        return False
    return stream.fileobj.read(block) == bytes(block)


# --- parquet -------------------------------------------------------------------------------


def _iter_parquet(
    f: IO[bytes], url: str, columns: tuple[str, str, str | None], select: Select | None
) -> Iterator[RawSample]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
    except (pa.ArrowException, OSError) as err:
        raise ShardReadError(url, f"not a readable parquet file ({err})") from None
    names = _parquet_columns(pf.schema_arrow, url, columns)
    start = 0
    for group in range(pf.metadata.num_row_groups):
        end = start + pf.metadata.row_group(group).num_rows
        yield from _parquet_row_group(pf, group, names, url, range(start, end), columns, select)
        start = end


def _parquet_row_group(
    pf: Any,
    group: int,
    names: list[str],
    url: str,
    rows: range,
    columns: tuple[str, str, str | None],
    select: Select | None,
) -> Iterator[RawSample]:
    """One row group's samples; if it cannot be decoded, its unread rows as errors."""
    import pyarrow as pa

    index = rows.start
    batches = pf.iter_batches(PARQUET_BATCH_ROWS, row_groups=[group], columns=names)
    try:
        for batch in batches:
            for row in batch.to_pylist():
                raw_key = row.pop("key", None)
                key = f"{index:09d}" if raw_key is None else str(raw_key)
                if select is None or select(key, index):
                    yield _parquet_sample(row, key, index, columns[0], columns[1])
                index += 1
    except (pa.ArrowException, OSError) as err:
        if not isinstance(err, pa.ArrowException) and type(err) is not OSError:
            raise  # FileNotFoundError, ConnectionError...: the store failed, not the file
        logger.warning("%s: row group %d unreadable from row %d: %s", url, group, index, err)
        for i in range(index, rows.stop):
            if select is None or select(f"{i:09d}", i):
                yield RawSample(f"{i:09d}", i, None, None, None, {}, "corrupt_parquet")


def _parquet_columns(schema: Any, url: str, columns: tuple[str, str, str | None]) -> list[str]:
    """Columns to read: image, caption, and every scalar column (key, uid, url, ...) as meta."""
    import pyarrow as pa

    image_column, caption_column, uid_column = columns
    binary = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view)
    text = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    for name, kinds in ((image_column, binary), (caption_column, text + binary)):
        if name not in schema.names:
            raise ShardReadError(url, f"no column {name!r} (columns: {schema.names})")
        t = schema.field(name).type
        is_image_struct = pa.types.is_struct(t) and t.get_field_index("bytes") >= 0
        if not any(k(t) for k in kinds) and not (name == image_column and is_image_struct):
            raise ShardReadError(url, f"column {name!r} has unsupported type {t}")
    scalar = [
        fld.name
        for fld in schema
        if fld.name not in columns
        and (pa.types.is_primitive(fld.type) or any(k(fld.type) for k in text))
    ]
    if uid_column in schema.names and uid_column not in scalar:
        scalar.append(uid_column)
    return [image_column, caption_column, *scalar]


def _parquet_sample(
    row: dict[str, Any], key: str, index: int, image_column: str, caption_column: str
) -> RawSample:
    image = row.pop(image_column)
    if isinstance(image, dict):  # HuggingFace datasets' Image feature: {bytes, path}
        image = image.get("bytes")
    caption, caption_error = row.pop(caption_column), None
    if isinstance(caption, bytes):
        caption, caption_error = decode_caption(caption)
    elif caption is not None:
        caption = caption.strip()
    if image is None:
        error = "missing_image"
    else:
        error = caption_error or (None if caption is not None else "missing_caption")
    return RawSample(key, index, image, sniff_image_ext(image), caption, row, error)


def decode_caption(data: bytes) -> tuple[str | None, str | None]:
    """(caption, error): strict UTF-8 (a BOM is dropped), surrounding whitespace stripped."""
    try:
        return data.decode("utf-8-sig").strip(), None
    except UnicodeDecodeError:
        return None, "caption_not_utf8"


def parse_meta(data: bytes) -> tuple[dict[str, Any], str | None]:
    """(meta, error) from a json sidecar; anything but a JSON object is ``bad_json``."""
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError):
        return {}, "bad_json"
    return (meta, None) if isinstance(meta, dict) else ({}, "bad_json")
