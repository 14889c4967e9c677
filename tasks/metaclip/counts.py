"""What balancing a pool partition needs besides its scores: metadata, matches, earlier counts.

Counts across partitions are stored per partition (`_entry_counts/{partition}.parquet`, tied
to the metadata sha256) rather than as one running total, so re-running or backfilling a
partition replaces its own contribution instead of counting it twice.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from schemas.config import CurateConfig
from tasks.io import storage
from tasks.metaclip.balance import load_running_counts, save_running_counts
from tasks.metaclip.metadata import load_metadata
from tasks.pool.select import BalanceInputs


def counts_folder(cfg: CurateConfig) -> str:
    return storage.join(cfg.output, cfg.dataset, "pool", "_entry_counts")


def earlier_counts(cfg: CurateConfig, partition: str, sha: str, n: int) -> np.ndarray:
    """Sum of the entry counts of partitions before `partition` (same metadata only)."""
    total = np.zeros(n, np.int64)
    for url in storage.listdir(counts_folder(cfg), cfg.storage_options):
        name = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".parquet")
        if name < partition:
            counts = load_running_counts(url, sha, cfg.storage_options)
            if counts is not None:
                total += counts
    return total


def balance_inputs(cfg: CurateConfig, partition: str) -> BalanceInputs | None:
    """Metadata identity and, with `running_counts`, the earlier partitions' counts."""
    bal = cfg.pool.balance if cfg.pool else None
    if bal is None:
        return None
    md = load_metadata(bal.metadata, cfg.storage_options)
    prior = (
        earlier_counts(cfg, partition, md.sha256, len(md.entries)) if bal.running_counts else None
    )
    return BalanceInputs(bal, len(md.entries), md.sha256, prior)


def save_partition_counts(
    cfg: CurateConfig, partition: str, bal: BalanceInputs, counts: np.ndarray
) -> None:
    url = storage.join(counts_folder(cfg), f"{partition}.parquet")
    save_running_counts(url, counts, bal.metadata_sha256, cfg.storage_options)


def load_matches(urls: list[str], sources: list[str], so: dict[str, Any] | None) -> pl.DataFrame:
    """The shards' match tables, in input order, with their source shard."""
    frames = [
        storage.read_parquet(u, so).with_columns(pl.lit(src).alias("source"))
        for u, src in zip(urls, sources, strict=True)
    ]
    return pl.concat(frames) if frames else pl.DataFrame()
