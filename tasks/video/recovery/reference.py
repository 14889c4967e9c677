"""Which videos of a night need a reference, and which healthy recordings may serve.

A moov-less MP4/MOV (the top-level boxes hold media data but no index) can be rebuilt from
a healthy recording of the same camera (`rebuild.py`). The same camera is, in order:

1. the same `vehicle_id` in the sidecars (a fleet names its cameras): only those;
2. else any healthy H.264 recording of the night; one of another picture size or coding
   is turned down when its parameters are tried on the media data (`rebuild.fits`).

Candidates in the lost file's own folder come first, then by URL, so the choice does not
depend on the order videos finished scoring in.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

from tasks.io import storage
from tasks.video.recovery.mdat import media_region, top_level_boxes

MAX_CANDIDATES = 8
REFERENCE_CODECS = ("h264",)
HEAD_BYTES = 64 << 10


def moov_lost(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether the file is an ISO-BMFF file with media data and no index (box headers only:
    a few small reads, also on object stores)."""
    fs, path = storage.get_fs(url, storage_options)
    size = int(fs.size(path))
    with fs.open(path, "rb") as f:
        head = f.read(HEAD_BYTES)

        def read_at(offset: int, n: int) -> bytes:
            f.seek(offset)
            return f.read(n)

        boxes = top_level_boxes(head, size, read_at)
    return media_region(boxes, size) is not None


def candidates(
    url: str, rows: Mapping[str, Mapping[str, Any]], vehicles: Mapping[str, str | None]
) -> tuple[list[str], str]:
    """(reference candidates in the order to try, what was looked for) for the lost `url`.

    `rows` are the night's probe rows by URL, `vehicles` every video's sidecar vehicle_id."""
    vehicle = vehicles.get(url)
    ok = [u for u, row in rows.items() if u != url and row.get("status") == "ok"]
    if vehicle is not None:
        ok = [u for u in ok if vehicles.get(u) == vehicle]
        wanted = f"healthy H.264 recording of vehicle {vehicle}"
    else:
        wanted = "healthy H.264 recording of the same size"
    healthy = [u for u in ok if rows[u].get("codec") in REFERENCE_CODECS]
    others = sorted({str(rows[u].get("codec")) for u in ok} - set(REFERENCE_CODECS))
    if not healthy and others:  # an HEVC camera, say: its siblings cannot serve
        wanted += f" (its healthy recordings are {', '.join(others)}; only H.264 is rebuilt)"
    folder = posixpath.dirname(url)
    healthy.sort(key=lambda u: (posixpath.dirname(u) != folder, u))
    return healthy[:MAX_CANDIDATES], wanted
