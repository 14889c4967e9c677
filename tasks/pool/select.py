"""Select stage: global, cheap decisions over the partition's cached score tables.

Everything here is a polars pass over small columns (no images, no model), so changing a
threshold, a text rule or the balancing parameters re-runs this stage and publishing only.
Statuses are decided in a fixed precedence: quarantined > duplicate uid > (balance when it
runs first) > text > image > duplicate copies (exact, perceptual, semantic) > embedding heads
> clip > (balance, by default) > kept. Dedup comes after the caption and image rules so that a copy
with a good caption can survive a copy whose caption a rule rejects, and before the CLIP
filter and balancing so that those see each image once: a top fraction or a per-entry cap is
not spent on copies. Each step only looks at rows no earlier
step decided, so a quarantined copy never makes a good copy of the same uid a duplicate.
Every decided row gets an error *code* (`error`) and the same reason in words with its
numbers (`error_detail`).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from schemas.config import PoolConfig
from schemas.tables import SAMPLES, conform
from tasks.dedup_index.query import Matches
from tasks.metaclip.counts import BalanceInputs, balance
from tasks.metaclip.langcounts import LangCounts
from tasks.metaclip.worldwide import flat_counts, worldwide_summary
from tasks.pool.dedup_step import deduplicate
from tasks.pool.language import language_reasons
from tasks.pool.quality import boilerplate_reasons, image_reasons, short_caption_reasons
from tasks.pool.text_rules import text_filter_reasons

PriorLookup = Callable[[pl.DataFrame, np.ndarray | None], Matches]
_SAFE_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass
class Selection:
    samples: pl.DataFrame
    threshold: float | None
    mode: str | None
    counts_before: np.ndarray | None = None
    counts_after: np.ndarray | None = None
    # this partition's counts (for running totals); per language in worldwide mode
    pool_counts: np.ndarray | LangCounts | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def out_key(uid: str) -> str:
    """Output member key for a uid: the uid itself when tar/webdataset-safe, else its hash."""
    if _SAFE_KEY.fullmatch(uid):
        return uid
    return "u" + hashlib.sha256(uid.encode()).hexdigest()[:31]


def _undecided() -> pl.Expr:
    return pl.col("status").is_null()


def _set(
    df: pl.DataFrame, mask: pl.Series | pl.Expr, status: str, code: pl.Expr, detail: pl.Expr
) -> pl.DataFrame:
    """Give `status`, `error` (code) and `error_detail` to still-undecided rows where `mask`."""
    cond = _undecided() & mask
    return df.with_columns(
        pl.when(cond).then(pl.lit(status)).otherwise(pl.col("status")).alias("status"),
        pl.when(cond).then(code).otherwise(pl.col("error")).alias("error"),
        pl.when(cond).then(detail).otherwise(pl.col("error_detail")).alias("error_detail"),
    )


def _duplicates(df: pl.DataFrame) -> pl.DataFrame:
    """A uid seen again among the undecided rows: the first one in input order survives."""
    first = pl.when(_undecided()).then(pl.col("uid")).is_first_distinct()
    detail = pl.lit("uid seen earlier in the partition (first one in input order is kept)")
    df = df.with_columns(pl.when(_undecided() & ~first).then(pl.col("uid")).alias("duplicate_of"))
    return _set(df, ~first, "duplicate", pl.lit("duplicate:uid"), detail)


def _first_reason(*reasons: pl.Series) -> pl.Series:
    """Per row, the first non-null reason in the order given."""
    return pl.DataFrame(reasons).select(pl.coalesce(*(r.name for r in reasons)))[:, 0]


def _text_rules(df: pl.DataFrame, pool: PoolConfig) -> pl.DataFrame:
    """Caption rules, first failing rule wins: the string heuristics (`text_rules`), then
    length in characters, language, and boilerplate (distinct images per normalised caption
    among the rows still undecided here, i.e. the partition's usable samples, not per
    shard: an image re-posted with its caption is dedup's business, not a template)."""
    cfg = pool.text_filter
    caption = df["caption"]
    reasons = [text_filter_reasons(caption, cfg).alias("a")]
    if cfg.min_chars:
        reasons.append(short_caption_reasons(caption, cfg.min_chars).alias("b"))
    if cfg.languages or cfg.min_lang_score > 0:
        lang = language_reasons(df["lang"], df["lang_score"], cfg.languages, cfg.min_lang_score)
        reasons.append(lang.alias("c"))
    if cfg.max_caption_repeats is not None or cfg.max_caption_fraction is not None:
        open_rows = df.select(_undecided())["status"]
        repeats = boilerplate_reasons(
            caption.filter(open_rows),
            cfg.max_caption_repeats,
            cfg.max_caption_fraction,
            df["sha256"].filter(open_rows),  # distinct images per caption: copies count once
        )
        full = pl.Series("d", [None] * df.height, pl.String).scatter(open_rows.arg_true(), repeats)
        reasons.append(full)
    text = _first_reason(*reasons).alias("_text")
    df = df.with_columns(text)
    return _set(
        df, pl.col("_text").is_not_null(), "filtered_text", pl.col("_text"), _text_detail()
    ).drop("_text")


def _text_detail() -> pl.Expr:
    reason = pl.col("_text")
    return (
        pl.when(reason == "text:language")
        .then(
            pl.format(
                "language {} (score {})",
                pl.col("lang").fill_null("none"),
                pl.col("lang_score").round(3),
            )
        )
        .otherwise(reason)
    )


def _image_rules(df: pl.DataFrame, pool: PoolConfig) -> pl.DataFrame:
    """Size and shape, on the original size where the source json records it (img2dataset's
    original_width/height; DataComp filters on those), else the decoded one."""
    cfg = pool.image_filter
    if cfg.min_side is None and cfg.max_aspect_ratio is None:
        return df
    orig = [
        df["source_meta"].str.json_path_match(f"$.original_{side}").cast(pl.Int64, strict=False)
        for side in ("width", "height")
    ]
    both = orig[0].is_not_null() & orig[1].is_not_null()
    width = pl.select(pl.when(both).then(orig[0]).otherwise(df["width"]))[:, 0]
    height = pl.select(pl.when(both).then(orig[1]).otherwise(df["height"]))[:, 0]
    reason = image_reasons(width, height, cfg.min_side, cfg.max_aspect_ratio)
    df = df.with_columns(reason.alias("_img"), width.alias("_w"), height.alias("_h"))
    detail = pl.format("{} ({}x{} px)", pl.col("_img"), pl.col("_w"), pl.col("_h"))
    df = _set(df, pl.col("_img").is_not_null(), "filtered_image", pl.col("_img"), detail)
    return df.drop("_img", "_w", "_h")


def _heads(
    df: pl.DataFrame,
    pool: PoolConfig,
    embeddings: Callable[[pl.DataFrame], np.ndarray] | None,
    heads: dict[str, Callable[[np.ndarray], np.ndarray]],
) -> pl.DataFrame:
    """One column per configured head (every embedded row), and its min/max rule on the rows
    still undecided: status `filtered_head`, reason `head:<name>`. Heads are checked in
    name order; a row fails on the first head whose range it leaves."""
    missing = sorted(set(pool.heads) - set(heads))
    if missing or embeddings is None:
        raise ValueError(f"heads configured but not loaded: {missing or sorted(pool.heads)}")
    embedded = df["emb_row"].is_not_null()
    emb = embeddings(df.filter(embedded))
    idx = embedded.arg_true()
    for name in sorted(pool.heads):
        values = np.asarray(heads[name](emb), dtype=np.float64) if len(emb) else np.zeros(0)
        if values.shape != (len(idx),):  # one number per embedded row, or the rows would shift
            raise ValueError(f"head {name}: output shape {values.shape}, want ({len(idx)},)")
        full = pl.Series(name, [None] * df.height, pl.Float64).scatter(idx, pl.Series(values))
        df = df.with_columns(full)
    for name in sorted(pool.heads):
        cfg, col = pool.heads[name], pl.col(name)
        low = (col < cfg.min) if cfg.min is not None else pl.lit(False)
        high = (col > cfg.max) if cfg.max is not None else pl.lit(False)
        detail = pl.format(
            "{} {} outside [{}, {}]", pl.lit(name), col.round(4),
            pl.lit(str(cfg.min)), pl.lit(str(cfg.max)),
        )  # fmt: skip
        mask = (low | high).fill_null(False)
        df = _set(df, mask, "filtered_head", pl.lit(f"head:{name}"), detail)
    return df


def _dedup(
    df: pl.DataFrame,
    pool: PoolConfig,
    sel: Selection,
    embeddings: Callable[[pl.DataFrame], np.ndarray] | None,
    prior: PriorLookup | None,
) -> pl.DataFrame:
    """Exact, perceptual and semantic copies among the undecided rows (`dedup_step`), and
    with `prior`, of earlier published rows (the candidates looked up in the index)."""
    cfg = pool.dedup
    assert cfg is not None
    open_rows = df.select(_undecided())["status"]
    cand = df.filter(open_rows)
    emb = None
    if cfg.semantic is not None:
        if embeddings is None:
            raise ValueError("semantic dedup needs the score stage's embeddings")
        emb = embeddings(cand)
    found = prior(cand, emb) if prior is not None else None
    res = deduplicate(cand, emb, cfg, found)
    sel.extra["dedup_groups"] = res.groups
    sel.extra["dedup_prior"] = dict(found.versions) if found is not None else {}
    sel.extra["dedup_read"] = dict(found.read) if found is not None else {}
    idx = open_rows.arg_true()
    blank = pl.Series([None] * df.height, dtype=pl.String)
    df = df.with_columns(
        blank.scatter(idx, res.code).alias("_dup"),
        blank.scatter(idx, res.detail).alias("_dup_detail"),
        pl.coalesce(pl.col("duplicate_of"), blank.scatter(idx, res.duplicate_of)).alias(
            "duplicate_of"
        ),
    )
    dup = pl.col("_dup")
    df = _set(df, dup.is_not_null(), "duplicate", dup, pl.col("_dup_detail"))
    return df.drop("_dup", "_dup_detail")


def _clip_filter(
    df: pl.DataFrame, pool: PoolConfig
) -> tuple[pl.DataFrame, float | None, str | None]:
    cfg = pool.clip_filter
    if cfg.threshold is not None:
        thr = float(cfg.threshold)
        mask = pl.col("clip_score") < thr
        detail = pl.format("clip_score {} < {}", pl.col("clip_score").round(4), pl.lit(thr))
        return _set(df, mask, "filtered_clip", pl.lit("clip:threshold"), detail), thr, "threshold"
    if cfg.top_fraction is None:
        return df, None, None
    cand = df.filter(_undecided()).sort(["clip_score", "uid"], descending=[True, False])
    k = math.ceil(cfg.top_fraction * cand.height - 1e-9)
    if k >= cand.height:
        return df, (float(cand["clip_score"].min()) if cand.height else None), "top_fraction"
    keep = cand.head(k).select("source", "index").with_columns(pl.lit(True).alias("_top"))
    thr = float(cand["clip_score"][k - 1]) if k > 0 else math.inf
    df = df.join(keep, on=["source", "index"], how="left", maintain_order="left")
    detail = pl.format(
        "clip_score {} below the top {}", pl.col("clip_score").round(4), pl.lit(cfg.top_fraction)
    )
    code = pl.lit("clip:top_fraction")
    df = _set(df, pl.col("_top").is_null(), "filtered_clip", code, detail).drop("_top")
    return df, thr, "top_fraction"


def _balance(df: pl.DataFrame, bal: BalanceInputs, sel: Selection) -> pl.DataFrame:
    cand = df.select(_undecided())["status"]
    codes = df["meta_lang"].filter(cand) if "meta_lang" in df.columns else None
    out = balance(df["entry_ids"].filter(cand), df["uid"].filter(cand), bal, codes)
    idx = np.flatnonzero(cand.to_numpy())
    kp = np.full(df.height, np.nan)
    kp[idx] = out.keep_prob
    drop = np.zeros(df.height, bool)
    drop[idx] = ~out.keep
    df = df.with_columns(pl.Series("keep_prob", kp).fill_nan(None))
    detail = pl.format("keep_prob {}", pl.col("keep_prob").round(6))
    df = _set(df, pl.Series(drop), "filtered_balance", pl.lit("balance"), detail)
    sel.pool_counts = sel.counts_before = out.pool_counts
    sel.counts_after = out.counts_after
    if out.worldwide is not None:
        lids = df["lang"].filter(cand)
        sel.extra["worldwide"] = worldwide_summary(out.worldwide, codes, lids)
        sel.counts_before = flat_counts(out.worldwide.pool_counts)
        sel.counts_after = flat_counts(out.worldwide.counts_after)
    return df


def select(
    scores: pl.DataFrame,
    pool: PoolConfig,
    matches: pl.DataFrame | None = None,
    balance: BalanceInputs | None = None,
    embeddings: Callable[[pl.DataFrame], np.ndarray] | None = None,
    prior: PriorLookup | None = None,
    heads: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None,
) -> Selection:
    """Decide a status for every input sample. `scores` must be in input order.

    `embeddings(rows)` returns the image embeddings of the given score rows (semantic dedup,
    heads); `prior(candidates, their embeddings)` finds the earlier published rows they copy
    (dedup with `scope: dataset`); `heads[name](embeddings)` scores embeddings with the
    configured head `name`.
    """
    df = scores.with_columns(
        pl.lit(None, pl.String).alias("status"),
        pl.lit(None, pl.Float64).alias("keep_prob"),
        pl.lit(None, pl.String).alias("duplicate_of"),
    )
    if matches is not None:
        wanted = ["source", "index", "entry_ids", "meta_lang"]
        df = df.join(
            matches.select(c for c in wanted if c in matches.columns),
            on=["source", "index"],
            how="left",
            maintain_order="left",
        )
    else:
        df = df.with_columns(pl.lit(None, pl.List(pl.UInt32)).alias("entry_ids"))
    quarantined = pl.col("error").is_not_null()
    df = _set(df, quarantined, "quarantined", pl.col("error"), pl.col("error_detail"))
    df = _duplicates(df)
    sel = Selection(df, None, None)
    if balance is not None and balance.cfg.order == "before_filters":
        df = _balance(df, balance, sel)
    if pool.text_filter.enabled:
        df = _text_rules(df, pool)
    df = _image_rules(df, pool)
    if pool.dedup is not None:
        df = _dedup(df, pool, sel, embeddings, prior)
    if pool.heads:
        df = _heads(df, pool, embeddings, heads or {})
    df, sel.threshold, sel.mode = _clip_filter(df, pool)
    if balance is not None and balance.cfg.order == "after_filters":
        df = _balance(df, balance, sel)
    df = df.with_columns(pl.col("status").fill_null("kept"))
    sel.samples = _assign_shards(df, pool.shard.max_samples, pool.passthrough)
    return sel


def passthrough_columns(source_meta: pl.Series, fields: list[str]) -> list[pl.Series]:
    """Allow-listed fields of the source json as columns (ints and floats typed as such).

    Fields the samples table already has (`url`, ours) are left to ours; a field no row
    carries still gets its (all-null) column, so partitions agree on their schema.
    """
    out = []
    for name in dict.fromkeys(fields):
        if name in SAMPLES:
            continue
        values = source_meta.str.json_path_match(f"$.{name}")
        for dtype in (pl.Int64, pl.Float64):
            typed = values.cast(dtype, strict=False)
            if typed.null_count() == values.null_count():
                values = typed
                break
        out.append(values.alias(name))
    return out


def _assign_shards(df: pl.DataFrame, max_samples: int, passthrough: list[str]) -> pl.DataFrame:
    """Kept samples, in input order, fill output shards of `max_samples` each."""
    kept = pl.col("status") == "kept"
    rank = kept.cast(pl.Int64).cum_sum() - 1
    df = df.with_columns(
        pl.when(kept)
        .then(pl.format("{}.tar", (rank // max_samples).cast(pl.String).str.zfill(6)))
        .alias("shard"),
        pl.when(kept)
        .then(pl.col("uid").map_elements(out_key, return_dtype=pl.String))
        .alias("out_key"),
        *passthrough_columns(df["source_meta"], passthrough),
    )
    return conform(df.drop("source_meta"), SAMPLES, extra=True)
