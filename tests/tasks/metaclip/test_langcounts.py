"""Per-language counts: merge by addition across shards, workers and nights; round trip."""

from __future__ import annotations

import io

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from tasks.metaclip.langcounts import (
    CountsError,
    LangCounts,
    add_counts,
    from_parquet_bytes,
    is_lang_counts,
    to_parquet_bytes,
)
from tasks.metaclip.metadata import Metadata
from tasks.metaclip.worldwide import _counts_by_language, match_captions

LISTS = {
    "en": Metadata.from_entries(["dog", "cat"]),
    "zh": Metadata.from_entries(["狗", "猫", "鸟"]),
}
CAPTIONS = ["a dog", "dog and cat", "狗和猫", "一只鸟", "小狗", "nothing", "cat"]
CODES = ["en", "en", "zh", "zh", "zh", None, "en"]


def counts_of(lo: int, hi: int) -> LangCounts:
    captions, codes = pl.Series(CAPTIONS[lo:hi]), pl.Series(CODES[lo:hi], dtype=pl.String)
    return _counts_by_language(match_captions(captions, codes, LISTS), codes, LISTS)


def test_counts_merge_by_addition_whatever_the_split() -> None:
    whole = counts_of(0, 7)
    assert whole.vectors["en"].tolist() == [2, 2] and whole.vectors["zh"].tolist() == [2, 1, 1]
    for cuts in ([3], [1, 5], [2, 3, 4, 6]):
        bounds = list(zip([0, *cuts], [*cuts, 7], strict=True))
        total = LangCounts()
        for lo, hi in reversed(bounds):  # order does not matter either
            total = add_counts(total, counts_of(lo, hi))
        assert {k: v.tolist() for k, v in total.vectors.items()} == {
            k: v.tolist() for k, v in whole.vectors.items()
        }
        assert total.sha256 == whole.sha256


def test_adding_counts_of_another_list_is_refused() -> None:
    a = LangCounts({"en": np.array([1, 2])}, {"en": "sha-a"})
    b = LangCounts({"en": np.array([1, 2])}, {"en": "sha-b"})
    with pytest.raises(CountsError, match="different metadata lists"):
        add_counts(a, b)
    c = LangCounts({"de": np.array([5])}, {"de": "sha-d"})
    both = add_counts(a, c)
    assert set(both.vectors) == {"en", "de"} and a.vectors["en"].tolist() == [1, 2]  # no aliasing
    both.vectors["en"][0] = 99
    assert a.vectors["en"][0] == 1


def test_round_trip_keeps_every_count_and_list(tmp_path) -> None:
    counts = LangCounts(
        {"en": np.array([0, 3, 0, 7]), "zh": np.array([1]), "xx": np.zeros(2, np.int64)},
        {"en": "e" * 64, "zh": "z" * 64, "xx": "x" * 64},
    )
    data = to_parquet_bytes(counts)
    assert is_lang_counts(data)
    back = from_parquet_bytes(data)
    assert {k: v.tolist() for k, v in back.vectors.items()} == {
        "en": [0, 3, 0, 7], "zh": [1], "xx": [0, 0]
    }  # fmt: skip
    assert back.sha256 == counts.sha256
    path = tmp_path / "c.parquet"
    path.write_bytes(data)
    rows = pl.read_parquet(path)  # plain parquet: any tool reads it
    assert rows.rows() == [("en", 1, 3), ("en", 3, 7), ("zh", 0, 1)]
    # only the wanted languages, and only when counted against that very list
    wanted = from_parquet_bytes(data, {"en": "e" * 64, "zh": "other"})
    assert list(wanted.vectors) == ["en"]


def test_english_only_counts_are_not_worldwide_counts(tmp_path) -> None:
    from tasks.metaclip.balance import save_running_counts

    url = str(tmp_path / "entry_counts.parquet")
    save_running_counts(url, np.array([1, 2]), "sha")
    assert not is_lang_counts((tmp_path / "entry_counts.parquet").read_bytes())
    assert not is_lang_counts(b"not parquet")


def test_corrupt_counts_fail_loudly() -> None:
    data = to_parquet_bytes(LangCounts({"en": np.array([1, 2])}, {"en": "s"}))
    table = pq.read_table(io.BytesIO(data))
    meta = dict(table.schema.metadata)
    meta[b"clip_curate.languages"] = b'{"en": {"sha256": "s", "entries": 1}}'  # id 1 out of range
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), buf)
    with pytest.raises(CountsError, match="out of range"):
        from_parquet_bytes(buf.getvalue())
    with pytest.raises(CountsError, match="unreadable"):
        from_parquet_bytes(b"junk")


def test_history_keeps_the_newer_list_and_restrict_picks_the_lists_in_use() -> None:
    from tasks.metaclip.langcounts import merge_history, restrict

    older = LangCounts(
        {"en": np.array([1, 1]), "fr": np.array([4]), "de": np.array([2, 0, 1])},
        {"en": "e1", "fr": "f1", "de": "d-old"},
    )
    newer = LangCounts(
        {"en": np.array([0, 5]), "de": np.array([7, 7])}, {"en": "e1", "de": "d-new"}
    )
    total = merge_history(newer, older)
    # en: same list, adds; fr: only earlier, carried on; de: its list changed, newer only
    assert {k: v.tolist() for k, v in total.vectors.items()} == {
        "en": [1, 6], "fr": [4], "de": [7, 7]
    }  # fmt: skip
    assert total.sha256 == {"en": "e1", "fr": "f1", "de": "d-new"}
    used = restrict(total, {"en": "e1", "de": "d-other", "zh": "z"})
    assert list(used.vectors) == ["en"] and used.vectors["en"].tolist() == [1, 6]
