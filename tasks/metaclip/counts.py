"""What balancing a pool partition needs besides its scores: metadata, matches, earlier counts.

Counts across partitions are stored inside each partition's published version (tied to the
metadata sha256): `entry_counts.parquet`, its own counts, and with `running_counts`
`running_counts.parquet`, its counts plus those of every earlier partition. Both commit
atomically with the samples they describe (a crash can never leave a published partition
without its counts, or counts without their partition), re-running a partition replaces its
own contribution instead of counting it twice, and a night reads one running total (the
previous night's) instead of every earlier partition's counts. A total is only used while its
partition's history is unchanged (`tasks.publish.catalog`): re-publishing an earlier date makes
the later ones stale, and they are re-run in date order before a later night reads them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from schemas.config import BalanceConfig, CurateConfig
from schemas.tables import ENTRY_COUNTS_FILE, RUNNING_COUNTS_FILE
from tasks.io import storage
from tasks.metaclip.balance import (
    entry_counts,
    keep_mask,
    keep_probabilities,
    load_running_counts,
    save_running_counts,
)
from tasks.metaclip.metadata import load_metadata
from tasks.publish.catalog import flow_folder, read_catalog

logger = logging.getLogger(__name__)

COUNTS_FILE = ENTRY_COUNTS_FILE
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
    """Sum of the entry counts of published partitions before `partition` (same metadata).

    The latest earlier partition that kept a running total (its counts plus every earlier
    partition's) and whose history has not changed since gives the sum in one read; own
    counts of partitions published after it (without a total) are added on top.
    """
    so = cfg.storage_options
    cat = read_catalog(flow_folder(cfg.output, cfg.dataset, "pool"), so)
    total = np.zeros(n, np.int64)
    for name in reversed(cat.before(partition)):
        entry = cat.entries[name]
        files, version = entry.get("history_files") or [], entry.get("version")
        base = storage.join(cfg.output, cfg.dataset, "pool", name)
        if version and RUNNING_COUNTS_FILE in files and not cat.stale(name):
            running = load_running_counts(storage.join(base, version, RUNNING_COUNTS_FILE), sha, so)
            if running is not None:
                return total + running
        if version and COUNTS_FILE in files:
            url = storage.join(base, version, COUNTS_FILE)
        elif not version:  # published before versioning
            url = storage.join(cfg.output, cfg.dataset, "pool", LEGACY_FOLDER, f"{name}.parquet")
        else:
            continue
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
    folder: str, bal: BalanceInputs, counts: np.ndarray, so: dict[str, Any] | None
) -> list[str]:
    """This partition's own counts, and with running counts the total through it (what the
    next night reads), written into its version `folder` before the commit; their names."""
    save_running_counts(storage.join(folder, COUNTS_FILE), counts, bal.metadata_sha256, so)
    if bal.prior_counts is None:
        return [COUNTS_FILE]
    total = bal.prior_counts + counts
    save_running_counts(storage.join(folder, RUNNING_COUNTS_FILE), total, bal.metadata_sha256, so)
    return [COUNTS_FILE, RUNNING_COUNTS_FILE]


def load_matches(urls: list[str], sources: list[str], so: dict[str, Any] | None) -> pl.DataFrame:
    """The shards' match tables, in input order, with their source shard."""
    frames = [
        storage.read_parquet(u, so).with_columns(pl.lit(src).alias("source"))
        for u, src in zip(urls, sources, strict=True)
    ]
    return pl.concat(frames) if frames else pl.DataFrame()
