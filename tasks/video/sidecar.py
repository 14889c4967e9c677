"""A video's optional sidecar JSON (`<stem>.json`): fleet metadata, read apart from decoding.

The sidecar is part of the input (it lands in `videos.parquet`), so its fingerprint is part
of the video's (`video_fingerprint`, used for the run key); it is not needed to score the
frames, so the score cache ignores it and a changed sidecar never re-decodes a video.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from tasks.errors import short
from tasks.io import storage

logger = logging.getLogger(__name__)


def sidecar_url(url: str) -> str:
    """The sidecar's URL: the video's, with its extension replaced by `.json`."""
    base, ext = os.path.splitext(url)
    return f"{base}.json" if ext and "/" not in ext else f"{url}.json"


def read_sidecar(url: str, storage_options: dict | None = None) -> dict[str, str | None]:
    """`vehicle_id` and `start_time` from the optional sidecar JSON; None when absent or bad.

    A sidecar is metadata from the fleet, not the data itself: a broken one is logged and
    ignored, never a reason to drop the video.
    """
    out: dict[str, str | None] = {"vehicle_id": None, "start_time": None}
    side = sidecar_url(url)
    try:
        if not storage.exists(side, storage_options):
            return out
        data = json.loads(storage.read_bytes(side, storage_options))
    except (OSError, ValueError) as err:
        logger.warning("ignoring sidecar %s: %s", side, short(err))
        return out
    if not isinstance(data, dict):
        logger.warning("ignoring sidecar %s: not a JSON object", side)
        return out
    for key in out:
        value = data.get(key)
        out[key] = None if value is None else str(value)
    return out


def video_fingerprint(url: str, storage_options: dict | None = None) -> dict[str, Any]:
    """The video's fingerprint plus its sidecar's (None when there is none)."""
    fp = storage.fingerprint(url, storage_options)
    try:
        fp["sidecar"] = storage.fingerprint(sidecar_url(url), storage_options)
    except FileNotFoundError:
        fp["sidecar"] = None
    return fp
