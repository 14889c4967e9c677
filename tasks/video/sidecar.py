"""A video's optional sidecar JSON: fleet metadata, read apart from decoding.

Which file: `<file name>.json` beside the video (`cam01.mp4.json`) belongs to that video
alone. Failing that, `<stem>.json` (`cam01.json`) is read too, but only when no other input
of the partition in the same folder has that stem: `cam01.mp4` and `cam01.mov` never share
`cam01.json` (it is ignored for both, with a warning; name them `cam01.mp4.json` and
`cam01.mov.json`).

The sidecar is part of the input (it lands in `videos.parquet`), so its fingerprint is part
of the video's (`video_fingerprint`, used for the run key); it is not needed to score the
frames, so the score cache ignores it and a changed sidecar never re-decodes a video.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection
from typing import Any

from tasks.errors import short
from tasks.io import storage

logger = logging.getLogger(__name__)
TELEMETRY_EXTS = (".csv", ".gpx", ".nmea")  # telemetry files beside a video


def _stem(url: str) -> str | None:
    base, ext = os.path.splitext(url)
    return base if ext and "/" not in ext else None


def sidecar_url(
    url: str, storage_options: dict | None = None, inputs: Collection[str] = (), ext: str = ".json"
) -> str | None:
    """The URL of the video's sidecar of extension `ext` (module docstring's rule: telemetry
    files `.csv`, `.gpx`, `.nmea` follow it too), None when it has none.

    `inputs` are the partition's videos; without them `<stem>{ext}` is taken as it is."""
    full = f"{url}{ext}"
    if storage.exists(full, storage_options):
        return full
    stem = _stem(url)
    if stem is None or not storage.exists(f"{stem}{ext}", storage_options):
        return None
    sharing = sorted(u for u in inputs if u != url and _stem(u) == stem)
    if sharing:
        logger.warning(
            "ignoring sidecar %s%s: %s and %s share its name (use <file name>%s)",
            stem,
            ext,
            url,
            ", ".join(sharing),
            ext,
        )
        return None
    return f"{stem}{ext}"


def read_sidecar(
    url: str, storage_options: dict | None = None, inputs: Collection[str] = ()
) -> dict[str, str | None]:
    """`vehicle_id` and `start_time` from the optional sidecar JSON; None when absent or bad.

    A sidecar is metadata from the fleet, not the data itself: a broken one is logged and
    ignored, never a reason to drop the video.
    """
    out: dict[str, str | None] = {"vehicle_id": None, "start_time": None}
    try:
        side = sidecar_url(url, storage_options, inputs)
        if side is None:
            return out
        data = json.loads(storage.read_bytes(side, storage_options))
    except (OSError, ValueError) as err:
        logger.warning("ignoring sidecar of %s: %s", url, short(err))
        return out
    if not isinstance(data, dict):
        logger.warning("ignoring sidecar %s: not a JSON object", side)
        return out
    for key in out:
        value = data.get(key)
        out[key] = None if value is None else str(value)
    return out


def video_fingerprint(
    url: str, storage_options: dict | None = None, inputs: Collection[str] = ()
) -> dict[str, Any]:
    """The video's fingerprint plus its sidecar's (None when there is none) and, when it
    has telemetry files beside it, theirs (`tasks.video.telemetry`)."""
    fp = storage.fingerprint(url, storage_options)
    side = sidecar_url(url, storage_options, inputs)
    fp["sidecar"] = None if side is None else storage.fingerprint(side, storage_options)
    files = {}
    for ext in TELEMETRY_EXTS:
        found = sidecar_url(url, storage_options, inputs, ext)
        if found is not None:
            files[ext] = storage.fingerprint(found, storage_options)
    if files:  # absent otherwise: run keys of videos without telemetry stay as they were
        fp["telemetry"] = files
    return fp
