"""WebDataset tar streaming: one sample per group of consecutive members sharing a key.

The tar is read in stream mode, so memory is bounded by one sample whatever the shard size,
and nothing is extracted to disk. Member names are keyed exactly as webdataset keys them.
"""

from __future__ import annotations

import logging
import re
import tarfile
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import IO

from tasks.pool.sample import (
    CAPTION_EXT,
    IMAGE_EXTS,
    META_EXT,
    RawSample,
    Select,
    ShardReadError,
    decode_caption,
    parse_meta,
)

logger = logging.getLogger(__name__)

# webdataset's own split: key = path up to the first '.' of the basename, extension = the rest.
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_WDS_META = re.compile(r"__[^/]*__($|/)")  # webdataset skips members like __meta__.json
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


def iter_tar(
    f: IO[bytes], url: str, max_member_bytes: int, select: Select | None
) -> Generator[RawSample, None, int]:
    """The samples of an open tar, in order; `select(key, index)` skips unwanted bytes.

    Returns (as the generator's value) how many samples the tar holds, selected or not:
    what comes after the tar (img2dataset's failed downloads) is numbered from there.
    """
    stream = _open_tar(f, url)
    if stream is None:
        return 0
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
    return 0 if group is None else group.index + 1


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
