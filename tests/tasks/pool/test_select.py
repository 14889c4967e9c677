"""Select stage: status precedence, DataComp's two CLIP modes, duplicates, shard assignment."""

from __future__ import annotations

import polars as pl
import pytest

from schemas.config import PoolConfig
from schemas.tables import SCORES, conform
from tasks.pool.select import out_key, select


def scores(rows: list[tuple]) -> pl.DataFrame:
    """rows: (uid, caption, clip_score, error) in input order, all in one source shard."""
    data = [
        {
            "uid": u,
            "source": "s.tar",
            "key": f"k{i}",
            "index": i,
            "caption": c,
            "url": None,
            "image_ext": "jpg",
            "width": 8,
            "height": 8,
            "clip_score": sc,
            "emb_row": i,
            "error": e,
            "error_detail": None,
            "source_meta": None,
        }
        for i, (u, c, sc, e) in enumerate(rows)
    ]
    return conform(pl.DataFrame(data, schema=SCORES), SCORES)


GOOD = "a dog running on the beach"


def test_threshold_mode_and_precedence():
    df = scores(
        [
            ("a", GOOD, 0.40, None),
            ("b", GOOD, 0.10, None),  # below threshold
            ("c", "IMG_2034.JPG", 0.90, None),  # text filter wins over a high score
            ("a", GOOD, 0.90, None),  # duplicate uid: first one wins
            ("d", None, None, "truncated_image"),  # quarantined
            ("e", GOOD, 0.30, None),  # exactly at threshold: kept
        ]
    )
    pool = PoolConfig(input="x", clip_filter={"threshold": 0.30})
    sel = select(df, pool)
    assert sel.samples["status"].cast(pl.String).to_list() == [
        "kept",
        "filtered_clip",
        "filtered_text",
        "duplicate",
        "quarantined",
        "kept",
    ]
    assert sel.samples["error"].to_list() == [
        None,
        "clip:threshold",
        "text:filename_or_url",
        "duplicate:uid",
        "truncated_image",
        None,
    ]
    assert sel.samples["error_detail"][1] == "clip_score 0.1 < 0.3"
    assert sel.threshold == 0.30 and sel.mode == "threshold"


def test_top_fraction_is_exact_and_tie_broken_by_uid():
    vals = [0.5, 0.9, 0.1, 0.7, 0.7, 0.3, 0.2, 0.8, 0.4, 0.6]
    df = scores([(f"u{i}", GOOD, v, None) for i, v in enumerate(vals)])
    sel = select(df, PoolConfig(input="x", clip_filter={"top_fraction": 0.3}))
    kept = sel.samples.filter(pl.col("status") == "kept")["uid"].to_list()
    # independent: sort by (-score, uid) and take ceil(0.3 * 10) = 3
    expected = [u for _, u in sorted((-v, f"u{i}") for i, v in enumerate(vals))][:3]
    assert sorted(kept) == sorted(expected)
    # the tie at 0.7 between u3 and u4: only one fits after 0.9 and 0.8; uid order decides
    assert "u3" in kept and "u4" not in kept


def test_shards_fill_in_input_order():
    df = scores([(f"u{i}", GOOD, 0.5, None) for i in range(7)])
    pool = PoolConfig(input="x", shard={"max_samples": 3})
    sel = select(df, pool)
    assert sel.samples["shard"].to_list() == ["000000.tar"] * 3 + ["000001.tar"] * 3 + [
        "000002.tar"
    ]
    assert sel.samples["out_key"].to_list() == [f"u{i}" for i in range(7)]


def test_counts_add_up():
    df = scores([("a", GOOD, 0.5, None), ("b", "", 0.5, None), ("c", None, None, "missing_image")])
    sel = select(df, PoolConfig(input="x"))
    counts = sel.samples.group_by("status").len()
    assert counts["len"].sum() == df.height


@pytest.mark.parametrize(
    "uid,safe", [("abc_DEF-1", True), ("a/b", False), ("x.y", False), ("", False)]
)
def test_out_key_is_tar_safe(uid, safe):
    key = out_key(uid)
    assert (key == uid) is safe
    assert "." not in key and "/" not in key and key


def test_a_quarantined_first_copy_does_not_make_the_good_copy_a_duplicate():
    """Defect: duplicates were found over all rows, so a uid whose first copy was broken
    lost its good second copy too (both were dropped). Only undecided rows compete."""
    df = scores(
        [
            ("a", None, None, "truncated_image"),  # first copy of a: broken
            ("a", GOOD, 0.5, None),  # the good copy: must be kept
            ("a", GOOD, 0.6, None),  # a real duplicate of the good copy
            ("b", None, None, "missing_image"),
            ("b", None, None, "missing_image"),  # quarantined twice: both quarantined
        ]
    )
    sel = select(df, PoolConfig(input="x"))
    assert sel.samples["status"].cast(pl.String).to_list() == [
        "quarantined",
        "kept",
        "duplicate",
        "quarantined",
        "quarantined",
    ]
