"""Per-shard MetaCLIP matches, cached apart from the CLIP scores.

Keyed by (the shard's scores key, metadata sha256): changing the metadata re-matches the
captions (cheap) without re-running CLIP; a second run with the same key reads them back.
"""

from __future__ import annotations

from typing import Any

from schemas.config import config_hash
from schemas.tables import MATCHES, conform
from tasks.io import storage
from tasks.metaclip.matcher import get_matcher
from tasks.metaclip.metadata import load_metadata


def matches_url(cache_root: str, scores_key: str, metadata_sha256: str) -> str:
    key = config_hash({"scores": scores_key, "metadata": metadata_sha256})
    return storage.join(cache_root, "pool", "matches", f"{key}.parquet")


def match_shard(
    scores_table_url: str,
    scores_key: str,
    metadata_url: str,
    cache_root: str,
    storage_options: dict[str, Any] | None = None,
    force: bool = False,
) -> str:
    """Match a shard's captions against the metadata (once per key); returns the table URL."""
    md = load_metadata(metadata_url, storage_options)
    url = matches_url(cache_root, scores_key, md.sha256)
    if not force and storage.exists(url, storage_options):
        return url
    scores = storage.read_parquet(scores_table_url, storage_options)
    ids = get_matcher(md).match_series(scores["caption"])
    table = scores.select("uid", "index").with_columns(ids.alias("entry_ids"))
    storage.write_parquet(conform(table, MATCHES), url, storage_options)
    return url
