"""Partition statistics: counts that add up, reasons, score quantiles.

Counts are derived from the samples table itself (one row per input sample), so by
construction input = kept + every filtered status + duplicate + quarantined; `check_counts`
asserts it anyway before anything is published.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from schemas.tables import STATUSES

QUANTILES = {
    "p01": 0.01,
    "p05": 0.05,
    "p25": 0.25,
    "p50": 0.5,
    "p75": 0.75,
    "p95": 0.95,
    "p99": 0.99,
}


class CountsDontAddUp(AssertionError):
    pass


def status_counts(samples: pl.DataFrame) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for status, n in samples.group_by("status").len().iter_rows():
        counts[str(status)] = int(n)
    counts = {"input": samples.height, **counts}
    return counts


def reason_counts(samples: pl.DataFrame) -> dict[str, int]:
    """Rows per error code (every status but kept has one), most frequent first."""
    codes = samples.select(pl.col("error").alias("reason")).drop_nulls()
    rows = codes.group_by("reason").len().sort(["len", "reason"], descending=[True, False])
    return {str(r): int(n) for r, n in rows.iter_rows()}


def score_quantiles(scores: pl.Series) -> dict[str, float | None]:
    s = scores.drop_nulls()
    if s.is_empty():
        return dict.fromkeys(QUANTILES)
    return {k: round(float(s.quantile(q, "linear")), 6) for k, q in QUANTILES.items()}


def check_counts(counts: dict[str, int]) -> None:
    total = sum(counts[s] for s in STATUSES)
    if total != counts["input"]:
        raise CountsDontAddUp(f"input {counts['input']} != sum of statuses {total}: {counts}")


def pool_stats(
    samples: pl.DataFrame,
    *,
    dataset: str,
    partition: str,
    shards: dict[str, int],
    mode: str | None,
    threshold: float | None,
    balance: dict[str, Any] | None,
    timings: dict[str, float],
) -> dict[str, Any]:
    counts = status_counts(samples)
    check_counts(counts)
    return {
        "flow": "pool",
        "dataset": dataset,
        "partition": partition,
        "counts": counts,
        "kept_fraction": round(counts["kept"] / counts["input"], 6) if counts["input"] else 0.0,
        "reasons": reason_counts(samples),
        "shards": shards,
        "clip_score": {
            "quantiles": score_quantiles(samples["clip_score"]),
            "mode": mode,
            "threshold": threshold,
        },
        "balance": balance,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
