"""Per-shard MetaCLIP matches, cached apart from the CLIP scores.

Keyed by (the shard's scores key, metadata sha256, matching algorithm version): changing
the metadata re-matches the captions (cheap) without re-running CLIP; a change to how
matching works (`MATCH_VERSION`) re-matches everything; a second run with the same key
reads them back.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from schemas.tables import MATCHES, MATCHES_WORLDWIDE, conform
from tasks.io import storage
from tasks.io.cache import Attempt, Cache
from tasks.metaclip.folder import MetadataFolder, load_language
from tasks.metaclip.matcher import entry_ids_series, get_matcher
from tasks.metaclip.metadata import load_metadata
from tasks.metaclip.worldwide import match_by_language

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


def metadata_codes(lids: pl.Series, folder: MetadataFolder) -> pl.Series:
    """Each caption's metadata language: its identifier code through the mapping, null when
    the code is unknown (no letters), mapped to nothing, or has no list in the folder."""
    codes = {lid: folder.metadata_code(lid) for lid in lids.drop_nulls().unique().to_list()}
    return lids.replace_strict(codes, default=None, return_dtype=pl.String).alias("meta_lang")


def match_shard_worldwide(
    scores_table_url: str,
    scores_key: str,
    folder: MetadataFolder,
    cache_root: str,
    storage_options: dict[str, Any] | None = None,
    force: bool = False,
) -> str:
    """Match each caption of a shard against its own metadata language's list (tight
    padding), reading only the lists of the languages in the shard; cached like
    `match_shard`, keyed by every list's content and the language mapping."""
    so = storage_options

    def compute(attempt: Attempt) -> dict[str, Any]:
        scores = storage.read_parquet(scores_table_url, so)
        codes = metadata_codes(scores["lang"], folder)
        present = sorted(codes.drop_nulls().unique().to_list())
        matchers = {
            code: get_matcher(load_language(folder.files[code], cache_root, so), "tight")
            for code in present
        }
        ids = entry_ids_series(*match_by_language(scores["caption"], codes, matchers))
        table = scores.select("uid", "index").with_columns(ids, codes)
        attempt.write_parquet("matches.parquet", conform(table, MATCHES_WORLDWIDE))
        return {"rows": table.height, "languages": present}

    parts = {
        "version": MATCH_VERSION,
        "scores": scores_key,
        "metadata": folder.identity,
        "padding": "tight",
    }
    hit = Cache(cache_root, so).get_or_compute(NAMESPACE, parts, compute, force=force)
    return hit.files["matches.parquet"]
