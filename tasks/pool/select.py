"""Select stage: global, cheap decisions over the partition's cached score tables.

Everything here is a polars pass over small columns (no images, no model), so changing a
threshold, a text rule or the balancing parameters re-runs this stage and publishing only.
Statuses are decided in a fixed precedence: quarantined > duplicate > (balance when it runs
first) > text > clip > (balance, by default) > kept. Each step only looks at rows no earlier
step decided, so a quarantined copy never makes a good copy of the same uid a duplicate.
Every decided row gets an error *code* (`error`) and the same reason in words with its
numbers (`error_detail`).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from schemas.config import PoolConfig
from schemas.tables import SAMPLES, conform
from tasks.metaclip.counts import BalanceInputs, balance
from tasks.pool.text_rules import text_filter_reasons

_SAFE_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass
class Selection:
    samples: pl.DataFrame
    threshold: float | None
    mode: str | None
    counts_before: np.ndarray | None = None
    counts_after: np.ndarray | None = None
    pool_counts: np.ndarray | None = None  # this partition's counts (for running totals)
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
    return _set(df, ~first, "duplicate", pl.lit("duplicate:uid"), detail)


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
    out = balance(df["entry_ids"].filter(cand), df["uid"].filter(cand), bal)
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
    return df


def select(
    scores: pl.DataFrame,
    pool: PoolConfig,
    matches: pl.DataFrame | None = None,
    balance: BalanceInputs | None = None,
) -> Selection:
    """Decide a status for every input sample. `scores` must be in input order."""
    df = scores.with_columns(
        pl.lit(None, pl.String).alias("status"),
        pl.lit(None, pl.Float64).alias("keep_prob"),
    )
    if matches is not None:
        df = df.join(
            matches.select("source", "index", "entry_ids"),
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
        reasons = text_filter_reasons(df["caption"], pool.text_filter)
        df = df.with_columns(reasons.alias("_text"))
        text = pl.col("_text")
        df = _set(df, text.is_not_null(), "filtered_text", text, text).drop("_text")
    df, sel.threshold, sel.mode = _clip_filter(df, pool)
    if balance is not None and balance.cfg.order == "after_filters":
        df = _balance(df, balance, sel)
    df = df.with_columns(pl.col("status").fill_null("kept"))
    sel.samples = _assign_shards(df, pool.shard.max_samples)
    return sel


def _assign_shards(df: pl.DataFrame, max_samples: int) -> pl.DataFrame:
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
    )
    return conform(df, SAMPLES)
