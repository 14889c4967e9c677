"""The select stage's dedup step on hand-made rows: published rows always survive, copies of
one image with one caption tie exactly, semantic dedup without comparable history."""

from __future__ import annotations

import numpy as np
import polars as pl

from schemas.config import DedupConfig
from tasks.pool.dedup_step import PriorIndex, deduplicate


def cand(rows: list[tuple[str, str, int, float, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={"uid": pl.String, "sha256": pl.String, "phash": pl.UInt64,
                "clip_score": pl.Float32, "caption": pl.String},
        orient="row",
    )  # fmt: skip


def prior(rows: list[tuple[str, str, int, str]], emb: np.ndarray | None = None) -> PriorIndex:
    df = pl.DataFrame(
        rows, schema={"uid": pl.String, "sha256": pl.String, "phash": pl.UInt64,
                      "partition": pl.String}, orient="row",
    )  # fmt: skip
    return PriorIndex(df, emb, {p: "v" for p in df["partition"]})


def test_published_rows_linked_through_a_new_sample_both_stay_published():
    """Monday kept A, Tuesday kept B (pHash distance 8); Wednesday's C is within 4 of both:
    C is Monday's duplicate, and neither A nor B is taken back."""
    a, b = 0, 0xFF  # distance 8
    c = 0x0F  # distance 4 to both
    p = prior([("A", "sa", a, "2026-01-05"), ("B", "sb", b, "2026-01-06")])
    cfg = DedupConfig(exact=True, perceptual={"max_distance": 4})
    far = 0xFFFF_FFFF_0000_0000  # 32 bits from A
    res = deduplicate(cand([("C", "sc", c, 0.3, "x"), ("D", "sd", far, 0.3, "y")]), None, cfg, p)
    assert res.duplicate_of.to_list() == ["A", None]
    assert res.code.to_list() == ["duplicate:perceptual", None]
    assert "2026-01-05" in res.detail[0]


def test_copies_with_one_caption_tie_whatever_their_last_bits():
    """Byte copies scored in different batches: the earliest in input order survives even
    when a later copy's score is higher by float noise (and would round differently)."""
    cfg = DedupConfig(exact=True, perceptual=None, keep="best_score")
    rows = [("u1", "s", 7, 0.280049, "a cat"), ("u2", "s", 7, 0.280051, "a cat")]
    res = deduplicate(cand(rows), None, cfg)
    assert res.duplicate_of.to_list() == [None, "u1"]
    # another caption is another pair: its real score difference decides
    rows = [("u1", "s", 7, 0.20, "a cat"), ("u2", "s", 7, 0.30, "a black cat on a sofa")]
    assert deduplicate(cand(rows), None, cfg).duplicate_of.to_list() == ["u2", None]


def test_semantic_with_history_lacking_embeddings_and_with_no_candidates():
    cfg = DedupConfig(exact=False, perceptual=None, semantic={"threshold": 0.99})
    p = prior([("A", "sa", 1, "2026-01-05")], emb=None)  # published before semantic was on
    emb = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]], np.float16)
    res = deduplicate(cand([("x", "s1", 1, 0.2, "c"), ("y", "s2", 2, 0.1, "c"),
                            ("z", "s3", 3, 0.1, "d")]), emb, cfg, p)  # fmt: skip
    assert res.duplicate_of.to_list() == [None, "x", None]
    empty = deduplicate(cand([]), np.zeros((0, 0), np.float16), cfg, p)
    assert empty.duplicate_of.len() == 0 and empty.groups.height == 0


def test_history_with_an_empty_night_keeps_the_other_nights_embeddings(tmp_path):
    """A night that kept nothing stores a (0, 0) array; it must not switch off semantic
    comparison against every other night."""
    from tasks.pool.dedup_step import EMB_FILE, INDEX_FILE, read_prior

    nights = {"2026-01-01": 2, "2026-01-02": 0}
    planned = {}
    for night, n in nights.items():
        base = tmp_path / "d" / "pool" / night / "v-1"
        (base / "dedup").mkdir(parents=True)
        pl.DataFrame(
            {"uid": [f"{night}-{i}" for i in range(n)], "sha256": ["s"] * n, "phash": [1] * n},
            schema={"uid": pl.String, "sha256": pl.String, "phash": pl.UInt64},
        ).write_parquet(base / INDEX_FILE)
        emb = np.ones((n, 4), np.float16) if n else np.zeros((0, 0), np.float16)
        np.save(base / EMB_FILE, emb)
        planned[night] = {"version": "v-1", "model": {}, "embeddings": True}
    got = read_prior(str(tmp_path), "d", planned, True, None, model=None)
    assert got.rows.height == 2 and got.emb is not None and got.emb.shape == (2, 4)
    assert got.versions == {"2026-01-01": "v-1", "2026-01-02": "v-1"}
