"""Byte-identical input videos: each distinct video is decoded and embedded once per partition.

Fleets re-upload: the same recording under two names, or twice under one in another folder.
Only files of the same size can be identical, so only those are hashed (a full read); in the
common case of no size collision nothing is read at all. The first copy in input order (the
sorted input URLs) is processed; every later copy is `duplicate` in videos.parquet with the
first one's URL in `duplicate_of`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from tasks.io import storage


def duplicate_videos(
    inputs: Sequence[dict[str, Any]], storage_options: dict[str, Any] | None = None
) -> dict[str, str]:
    """{url of a copy: url of the first video with the same bytes}, from input fingerprints
    (`url`, `size`) in input order. Empty files are left to the probe (quarantined)."""
    by_size: dict[int, list[str]] = defaultdict(list)
    for fp in inputs:
        if int(fp.get("size") or 0) > 0:
            by_size[int(fp["size"])].append(str(fp["url"]))
    copies: dict[str, str] = {}
    for urls in by_size.values():
        if len(urls) < 2:
            continue
        first: dict[str, str] = {}
        for url in urls:
            digest = storage.sha256_file(url, storage_options)
            original = first.setdefault(digest, url)
            if original != url:
                copies[url] = original
    return copies


def duplicate_row(url: str, original: str, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The videos.parquet row of a copy (the flow adds its sidecar fields)."""
    return {
        "video": url,
        "fingerprint": storage.fingerprint_key(
            {k: v for k, v in fingerprint.items() if k != "sidecar"}  # as the score stage keys it
        ),
        "status": "duplicate",
        "error": "duplicate:exact",
        "error_detail": f"same bytes as {original}",
        "duplicate_of": original,
    }
