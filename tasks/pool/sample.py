"""The sample type, errors and constants shared by the pool readers.

Kept apart from `tasks.pool.sources` so that the tar and parquet readers can use them without
importing the dispatcher that imports them (no cycle); `tasks.pool.sources` re-exports all of it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schemas.tables import IMAGE_EXTS  # noqa: F401 (re-exported to the readers)

CAPTION_EXT = "txt"
META_EXT = "json"
MAX_MEMBER_BYTES = 128 << 20
PARQUET_BATCH_ROWS = 256

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
    detail: str | None = None  # the error in words (e.g. img2dataset's error_message)


def download_failure(meta: dict[str, Any]) -> tuple[str, str] | None:
    """(code, detail) of a sample img2dataset failed to download, from its own fields.

    img2dataset records every URL it tried, with `status` ("success" or the failure) and
    `error_message`; a failed one has no image and is quarantined with that message.
    """
    status = meta.get("status")
    if status in (None, "success"):
        return None
    return "download_failed", f"{status}: {meta.get('error_message') or ''}".strip()


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


def decode_caption(data: bytes) -> tuple[str | None, str | None]:
    """(caption, error): strict UTF-8, a leading BOM dropped (an encoding mark, not text).

    Nothing else is touched: rules that count the text as written (DataComp's length rule)
    see it whole, and the published ``.txt`` holds what the input held.
    """
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        return None, "caption_not_utf8"


def parse_meta(data: bytes) -> tuple[dict[str, Any], str | None]:
    """(meta, error) from a json sidecar; anything but a JSON object is ``bad_json``."""
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError):
        return {}, "bad_json"
    return (meta, None) if isinstance(meta, dict) else ({}, "bad_json")
