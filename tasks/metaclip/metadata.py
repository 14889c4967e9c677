"""MetaCLIP metadata: the entry list (an entry's id is its position) and how it is loaded.

MetaCLIP's `metadata.json` is a JSON array of strings, plain or gzipped, on any fsspec URL.
Matching captions against it lives in `tasks.metaclip.matcher`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tasks.io import storage

logger = logging.getLogger(__name__)


class MetadataError(ValueError):
    """The metadata file is unusable; the message is one line naming the file and the reason."""


@dataclass(frozen=True)
class Metadata:
    """The entry list (an entry's id is its position) and a hash identifying it.

    `sha256` hashes the canonical JSON of the entries (compact, ASCII-escaped), not the file
    bytes, so the same list plain or gzipped, or re-serialised, keys the same caches and counts.
    """

    entries: tuple[str, ...]
    sha256: str

    @classmethod
    def from_entries(cls, entries: Sequence[str]) -> Metadata:
        entries = tuple(entries)
        canon = json.dumps(list(entries), ensure_ascii=True, separators=(",", ":"))
        return cls(entries, hashlib.sha256(canon.encode("ascii")).hexdigest())

    def __len__(self) -> int:
        return len(self.entries)


def load_metadata(url: str, storage_options: dict[str, Any] | None = None) -> Metadata:
    """Read MetaCLIP's metadata.json (a JSON array of strings), plain or gzipped, from any URL.

    Gzip is detected by its magic bytes, not the file name. Duplicate entries keep their
    positions (ids) but only the first occurrence is ever reported as a match.
    """
    try:
        raw = storage.read_bytes(url, storage_options)
    except OSError as e:
        raise MetadataError(f"metadata: cannot read {url} ({e.strerror or e})") from None
    return parse_metadata(raw, url)


def parse_metadata(raw: bytes, url: str) -> Metadata:
    """A metadata file's bytes (plain or gzipped JSON list of strings) as `Metadata`."""
    entries = _parse(_gunzip(raw, url), url)
    dups = len(entries) - len(set(entries))
    if dups:
        logger.warning(
            "metadata %s has %d duplicate entries; only the first id of each is matched", url, dups
        )
    return Metadata.from_entries(entries)


def _gunzip(raw: bytes, url: str) -> bytes:
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise MetadataError(f"metadata: {url} is not valid gzip ({e})") from None


def _parse(raw: bytes, url: str) -> list[str]:
    try:
        obj = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise MetadataError(f"metadata: {url} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        where = f"line {e.lineno} column {e.colno}"
        raise MetadataError(f"metadata: {url} is not valid JSON ({e.msg} at {where})") from None
    if not isinstance(obj, list):
        raise MetadataError(f"metadata: {url} is not a JSON list of strings")
    for i, e in enumerate(obj):
        if not isinstance(e, str):
            kind = type(e).__name__
            raise MetadataError(f"metadata: {url} is not a JSON list of strings (item {i}: {kind})")
    if not obj:
        raise MetadataError(f"metadata: {url} is an empty list")
    try:
        "".join(obj).encode("utf-8")
    except UnicodeEncodeError:
        raise MetadataError(f"metadata: {url} has an entry with a lone surrogate") from None
    return obj
