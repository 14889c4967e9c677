"""The select stage's dedup step on hand-made rows: published rows always survive, copies of
one image with one caption tie exactly, semantic dedup without comparable history."""

from __future__ import annotations

import numpy as np
import polars as pl

from schemas.config import DedupConfig
from tasks.dedup_index.query import Matches, match_rows
from tasks.pool.dedup_step import deduplicate


def cand(rows: list[tuple[str, str, int, float, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={"uid": pl.String, "sha256": pl.String, "phash": pl.UInt64,
                "clip_score": pl.Float32, "caption": pl.String},
        orient="row",
    )  # fmt: skip


def prior(
    rows: list[tuple[str, str, int, str]],
    c: pl.DataFrame,
    cfg: DedupConfig,
    emb: np.ndarray | None = None,
    cand_emb: np.ndarray | None = None,
) -> Matches:
    """The earlier rows the index would find for the candidates `c` (looked up for real)."""
    df = pl.DataFrame(
        rows, schema={"uid": pl.String, "sha256": pl.String, "phash": pl.UInt64,
                      "partition": pl.String}, orient="row",
    )  # fmt: skip
    return match_rows(df, emb, c, cand_emb, cfg)


def test_published_rows_linked_through_a_new_sample_both_stay_published():
    """Monday kept A, Tuesday kept B (pHash distance 8); Wednesday's C is within 4 of both:
    C is Monday's duplicate, and neither A nor B is taken back."""
    a, b = 0, 0xFF  # distance 8
    c = 0x0F  # distance 4 to both
    cfg = DedupConfig(exact=True, perceptual={"max_distance": 4})
    far = 0xFFFF_FFFF_0000_0000  # 32 bits from A
    c_rows = cand([("C", "sc", c, 0.3, "x"), ("D", "sd", far, 0.3, "y")])
    p = prior([("A", "sa", a, "2026-01-05"), ("B", "sb", b, "2026-01-06")], c_rows, cfg)
    assert p.rows["uid"].to_list() == ["A", "B"]  # both within 4 of C; nothing near D
    res = deduplicate(c_rows, None, cfg, p)
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
    emb = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]], np.float16)
    c_rows = cand([("x", "s1", 1, 0.2, "c"), ("y", "s2", 2, 0.1, "c"), ("z", "s3", 3, 0.1, "d")])
    # A was published before semantic dedup was on: no embedding to compare
    p = prior([("A", "sa", 1, "2026-01-05")], c_rows, cfg, emb=None, cand_emb=emb)
    res = deduplicate(c_rows, emb, cfg, p)
    assert res.duplicate_of.to_list() == [None, "x", None]
    empty = deduplicate(cand([]), np.zeros((0, 0), np.float16), cfg, p)
    assert empty.duplicate_of.len() == 0 and empty.groups.height == 0


def test_semantic_copy_of_an_earlier_night_is_a_duplicate_of_it():
    cfg = DedupConfig(exact=False, perceptual=None, semantic={"threshold": 0.95})
    old = np.array([[1, 0, 0, 0], [0, 0, 1, 0]], np.float16)
    emb = np.array([[0.98, 0.199, 0, 0], [0, 1, 0, 0]], np.float16)  # x ~ A (cos ~0.98)
    c_rows = cand([("x", "s1", 1, 0.2, "c"), ("y", "s2", 2, 0.1, "d")])
    p = prior([("A", "sa", 1, "2026-01-05"), ("B", "sb", 2, "2026-01-06")], c_rows, cfg, old, emb)
    res = deduplicate(c_rows, emb, cfg, p)
    assert res.duplicate_of.to_list() == ["A", None]
    assert res.code.to_list() == ["duplicate:semantic", None]
    assert "cosine 0.98" in res.detail[0] and "2026-01-05" in res.detail[0]
