"""One walk over a WebDataset tar's members, for everything that reads published shards.

`curate verify` (which keys and extensions a shard holds) and the consumer API's loader
(each sample's files) split member names the same way WebDataset does: the key is the member's
path up to the first dot of its file name, the extension is the rest. Members are streamed;
nothing is extracted to disk, so no member name can reach outside a folder.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterator
from typing import Any

from tasks.io import storage


def split_name(name: str) -> tuple[str, str]:
    """(key, extension) of a member name, as WebDataset splits it ("" without a dot)."""
    base = posixpath.basename(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(posixpath.dirname(name), stem), ext


def walk_tar(
    url: str, so: dict[str, Any] | None, read: bool = True
) -> Iterator[tuple[str, str, bytes | None]]:
    """(key, extension, bytes or None without `read`) of each regular member, in order."""
    with storage.open_read(url, so) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = split_name(member.name)
            data = tar.extractfile(member).read() if read else None
            yield key, ext, data
            tar.members = []  # streamed: keep no list of every member seen


def samples(url: str, so: dict[str, Any] | None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample: consecutive members of one key."""
    key, files = None, {}
    for k, ext, data in walk_tar(url, so):
        if k != key and key is not None:
            yield key, files
            files = {}
        key = k
        files[ext] = data
    if key is not None:
        yield key, files
