"""Per-shard MetaCLIP matches, cached apart from the CLIP scores.

Keyed by (the shard's scores key, metadata sha256, matching algorithm version): changing
the metadata re-matches the captions (cheap) without re-running CLIP; a change to how
matching works (`MATCH_VERSION`) re-matches everything; a second run with the same key
reads them back.
"""

from __future__ import annotations

from typing import Any

from schemas.tables import MATCHES, conform
from tasks.io import storage
from tasks.io.cache import Attempt, Cache
from tasks.metaclip.matcher import get_matcher
from tasks.metaclip.metadata import load_metadata

MATCH_VERSION = 1  # bump when matching semantics change (normalisation, dedup of ids, ...)
NAMESPACE = "metaclip-matches"


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

    def compute(attempt: Attempt) -> dict[str, Any]:
        scores = storage.read_parquet(scores_table_url, storage_options)
        ids = get_matcher(md).match_series(scores["caption"])
        table = scores.select("uid", "index").with_columns(ids.alias("entry_ids"))
        attempt.write_parquet("matches.parquet", conform(table, MATCHES))
        return {"rows": table.height}

    parts = {"version": MATCH_VERSION, "scores": scores_key, "metadata": md.sha256}
    hit = Cache(cache_root, storage_options).get_or_compute(NAMESPACE, parts, compute, force=force)
    return hit.files["matches.parquet"]
