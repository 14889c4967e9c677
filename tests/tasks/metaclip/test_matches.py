"""Per-shard MetaCLIP matches: cached by scores key, metadata and matching algorithm version."""

from __future__ import annotations

import json

import polars as pl
import pytest

from schemas.tables import SCORES, conform
from tasks.io import storage
from tasks.metaclip import matches


@pytest.fixture
def scores_url(tmp_path) -> str:
    rows = [
        {"uid": f"u{i}", "index": i, "caption": c}
        for i, c in enumerate(["a red car", "a dog", "new york city at night"])
    ]
    df = pl.DataFrame(rows).with_columns(
        [pl.lit(None).alias(c) for c in SCORES if c not in ("uid", "index", "caption")]
    )
    url = str(tmp_path / "scores.parquet")
    storage.write_parquet(conform(df, SCORES), url)
    return url


def test_matches_are_cached_and_rematched_when_the_algorithm_changes(
    tmp_path, scores_url, monkeypatch
):
    """Defect: the match cache key had no algorithm version, so a change to how captions
    are matched kept serving matches computed the old way."""
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(["red car", "dog", "new york"]))
    cache, calls = str(tmp_path / "cache"), []
    real = matches.get_matcher
    monkeypatch.setattr(matches, "get_matcher", lambda md: calls.append(1) or real(md))

    first = matches.match_shard(scores_url, "k1", str(meta), cache)
    assert matches.match_shard(scores_url, "k1", str(meta), cache) == first and calls == [1]
    got = storage.read_parquet(first)["entry_ids"].to_list()
    assert got == [[0], [1], [2]]
    monkeypatch.setattr(matches, "MATCH_VERSION", matches.MATCH_VERSION + 1)
    again = matches.match_shard(scores_url, "k1", str(meta), cache)
    assert again != first and calls == [1, 1]
    meta.write_text(json.dumps(["red car", "dog"]))  # other metadata: matched again
    matches.match_shard(scores_url, "k1", str(meta), cache)
    assert calls == [1, 1, 1]
