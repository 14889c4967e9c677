"""What balancing a pool partition needs besides its scores: metadata, matches, earlier counts.

Counts across partitions are stored per partition, as `entry_counts.parquet` inside the
partition's published version (tied to the metadata sha256), rather than as one running
total: they commit atomically with the samples they describe (a crash can never leave a
published partition without its counts, or counts without their partition), and re-running
or backfilling a partition replaces its own contribution instead of counting it twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from schemas.config import BalanceConfig, CurateConfig
from tasks.io import storage
from tasks.metaclip.balance import (
    entry_counts,
    keep_mask,
    keep_probabilities,
    load_running_counts,
    save_running_counts,
)
from tasks.metaclip.metadata import load_metadata
from tasks.publish.manifest import partition_url, partitions, read_published

logger = logging.getLogger(__name__)

COUNTS_FILE = "entry_counts.parquet"
LEGACY_FOLDER = "_entry_counts"  # where partitions published before versioning kept them


@dataclass
class BalanceInputs:
    """What balancing needs beyond the samples: the config, the metadata's identity, and
    the summed counts of earlier partitions (with `running_counts`)."""

    cfg: BalanceConfig
    n_entries: int
    metadata_sha256: str
    prior_counts: np.ndarray | None = None


@dataclass
class Balanced:
    """The outcome of balancing the candidate rows of a partition."""

    keep_prob: np.ndarray  # per candidate row
    keep: np.ndarray  # per candidate row
    pool_counts: np.ndarray  # this partition's counts over the candidates
    counts_after: np.ndarray  # counts over the kept candidates


def balance(entry_ids: pl.Series, uids: pl.Series, bal: BalanceInputs) -> Balanced:
    """MetaCLIP's decision for each candidate (their entry ids and uids, in input order)."""
    pool_counts = entry_counts(entry_ids, bal.n_entries)
    counts = pool_counts + (bal.prior_counts if bal.prior_counts is not None else 0)
    probs = keep_probabilities(entry_ids, counts, bal.cfg.t)
    keep = keep_mask(probs, uids, bal.cfg.seed)
    after = entry_counts(entry_ids.filter(pl.Series(keep)), bal.n_entries)
    return Balanced(probs, keep, pool_counts, after)


def earlier_counts(cfg: CurateConfig, partition: str, sha: str, n: int) -> np.ndarray:
    """Sum of the entry counts of published partitions before `partition` (same metadata)."""
    so = cfg.storage_options
    total = np.zeros(n, np.int64)
    for name in partitions(cfg.output, cfg.dataset, "pool", so):
        if name >= partition:
            continue
        published = read_published(partition_url(cfg.output, cfg.dataset, "pool", name), so)
        if published is None:
            continue
        if published.has(COUNTS_FILE):
            url = published.url(COUNTS_FILE)
        else:
            url = storage.join(cfg.output, cfg.dataset, "pool", LEGACY_FOLDER, f"{name}.parquet")
        counts = load_running_counts(url, sha, so)
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
    url: str, bal: BalanceInputs, counts: np.ndarray, so: dict[str, Any] | None
) -> None:
    """This partition's own counts, written into its version folder before the commit."""
    save_running_counts(url, counts, bal.metadata_sha256, so)


def load_matches(urls: list[str], sources: list[str], so: dict[str, Any] | None) -> pl.DataFrame:
    """The shards' match tables, in input order, with their source shard."""
    frames = [
        storage.read_parquet(u, so).with_columns(pl.lit(src).alias("source"))
        for u, src in zip(urls, sources, strict=True)
    ]
    return pl.concat(frames) if frames else pl.DataFrame()
