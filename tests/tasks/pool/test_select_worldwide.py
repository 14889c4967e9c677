"""Worldwide balancing in the select stage, and how the language filter comes before it."""

from __future__ import annotations

import polars as pl
import pytest

from schemas.config import BalanceConfig, PoolConfig
from schemas.tables import SCORES, conform
from tasks.metaclip.counts import BalanceInputs
from tasks.metaclip.metadata import Metadata
from tasks.metaclip.worldwide import WorldwideInputs, match_captions
from tasks.pool.select import select

LISTS = {"en": Metadata.from_entries(["dog", "cat"]), "zh": Metadata.from_entries(["狗", "猫"])}
ROWS = [  # caption, identifier language
    ("a dog on the beach", "en"),
    ("a dog and a cat", "en"),
    ("my dog sleeps here", "en"),
    ("一只狗在海滩上", "zh"),
    ("狗和猫在一起", "zh"),
    ("小狗在跑步", "zh"),
]


def frames() -> tuple[pl.DataFrame, pl.DataFrame]:
    n = len(ROWS)
    data = {c: [None] * n for c in SCORES}
    data |= {
        "uid": [f"u{i}" for i in range(n)], "source": ["s.tar"] * n,
        "key": [f"k{i}" for i in range(n)], "index": list(range(n)),
        "caption": [c for c, _ in ROWS], "image_ext": ["jpg"] * n, "width": [8] * n,
        "height": [8] * n, "clip_score": [0.3] * n, "emb_row": list(range(n)),
        "lang": [lang for _, lang in ROWS], "lang_score": [0.99] * n,
    }  # fmt: skip
    scores = conform(pl.DataFrame(data, schema=SCORES), SCORES)
    codes = scores["lang"].alias("meta_lang")
    ids = match_captions(scores["caption"], codes, LISTS)
    matches = scores.select("source", "index").with_columns(ids, codes)
    return scores, matches


def run(order: str) -> tuple:
    scores, matches = frames()
    cfg = BalanceConfig(metadata="lists/", t=1, seed=0, order=order)
    bal = BalanceInputs(cfg, 4, "x", worldwide=WorldwideInputs(LISTS, 1, None, 0))
    pool = PoolConfig(input="x", text_filter={"languages": ["en"], "min_words": 1})
    sel = select(scores, pool, matches, bal)
    return sel, sel.samples.with_columns(pl.col("status").cast(pl.String))


def test_language_filter_drops_before_balancing_by_default() -> None:
    sel, got = run("after_filters")
    zh = got.filter(pl.col("lang") == "zh")
    assert set(zh["status"]) == {"filtered_text"} and set(zh["error"]) == {"text:language"}
    assert zh["keep_prob"].null_count() == zh.height  # never reached balancing
    assert zh["meta_lang"].to_list() == ["zh"] * 3  # still recorded per sample
    assert sel.pool_counts.vectors["zh"].tolist() == [0, 0]  # not counted
    assert sel.pool_counts.vectors["en"].tolist() == [3, 1]
    assert set(sel.extra["worldwide"]["languages"]) == {"en"}
    # en: dog 3, cat 1, t = 1: p = 0 / 4 = 0 -> p_en = [1/3, 1]
    en = got.filter(pl.col("lang") == "en")
    assert en["keep_prob"].to_list() == pytest.approx([1 / 3, 1.0, 1 / 3], abs=1e-15)


def test_balancing_first_counts_what_the_filter_later_drops() -> None:
    sel, got = run("before_filters")
    zh = got.filter(pl.col("lang") == "zh")
    assert zh["keep_prob"].null_count() == 0  # balanced, then the language rule applies
    assert sel.pool_counts.vectors["zh"].tolist() == [3, 1]
    assert set(zh["status"]) <= {"filtered_text", "filtered_balance"}
