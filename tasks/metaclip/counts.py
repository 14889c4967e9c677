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
from collections.abc import Iterator, Mapping
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
from tasks.metaclip.folder import MetadataFolder, is_folder, load_language, metadata_folder
from tasks.metaclip.langcounts import (
    LangCounts,
    from_parquet_bytes,
    is_lang_counts,
    merge_history,
    restrict,
    to_parquet_bytes,
)
from tasks.metaclip.metadata import load_metadata
from tasks.metaclip.worldwide import ENGLISH, WorldwideInputs, WorldwideResult, balance_worldwide
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
    # worldwide mode: the folder of lists, then (`with_languages`) the lists in use
    folder: MetadataFolder | None = None
    worldwide: WorldwideInputs | None = None
    lang_history: LangCounts | None = None  # with running counts: every earlier language


@dataclass
class Balanced:
    """The outcome of balancing the candidate rows of a partition."""

    keep_prob: np.ndarray  # per candidate row
    keep: np.ndarray  # per candidate row
    pool_counts: np.ndarray | LangCounts  # this partition's counts over the candidates
    counts_after: np.ndarray | LangCounts  # counts over the kept candidates
    worldwide: WorldwideResult | None = None  # thresholds and per-language figures


def balance(
    entry_ids: pl.Series, uids: pl.Series, bal: BalanceInputs, codes: pl.Series | None = None
) -> Balanced:
    """MetaCLIP's decision for each candidate (their entry ids and uids, in input order);
    worldwide, `codes` are the candidates' metadata languages."""
    if bal.worldwide is not None:
        if codes is None:
            raise ValueError("worldwide balancing needs each candidate's metadata language")
        res = balance_worldwide(entry_ids, codes, uids, bal.worldwide)
        return Balanced(res.keep_prob, res.keep, res.pool_counts, res.counts_after, res)
    pool_counts = entry_counts(entry_ids, bal.n_entries)
    counts = pool_counts + (bal.prior_counts if bal.prior_counts is not None else 0)
    probs = keep_probabilities(entry_ids, counts, bal.cfg.t)
    keep = keep_mask(probs, uids, bal.cfg.seed)
    after = entry_counts(entry_ids.filter(pl.Series(keep)), bal.n_entries)
    return Balanced(probs, keep, pool_counts, after)


def _earlier_count_files(cfg: CurateConfig, partition: str) -> Iterator[tuple[str, bool]]:
    """(url, is_total) of the count files a night reads, latest earlier partition first:
    a partition's running total (its counts plus every earlier one's) while its history is
    unchanged, else its own counts. A reader that can use a total stops there."""
    so = cfg.storage_options
    cat = read_catalog(flow_folder(cfg.output, cfg.dataset, "pool"), so)
    for name in reversed(cat.before(partition)):
        entry = cat.entries[name]
        files, version = entry.get("history_files") or [], entry.get("version")
        base = storage.join(cfg.output, cfg.dataset, "pool", name)
        if version and RUNNING_COUNTS_FILE in files and not cat.stale(name):
            yield storage.join(base, version, RUNNING_COUNTS_FILE), True
        if version and COUNTS_FILE in files:
            yield storage.join(base, version, COUNTS_FILE), False
        elif not version:  # published before versioning
            yield (
                storage.join(cfg.output, cfg.dataset, "pool", LEGACY_FOLDER, f"{name}.parquet"),
                False,
            )


def earlier_counts(cfg: CurateConfig, partition: str, sha: str, n: int) -> np.ndarray:
    """Sum of the entry counts of published partitions before `partition` (same metadata).

    The latest earlier partition that kept a running total (its counts plus every earlier
    partition's) and whose history has not changed since gives the sum in one read; own
    counts of partitions published after it (without a total) are added on top.
    """
    so = cfg.storage_options
    total = np.zeros(n, np.int64)
    for url, is_total in _earlier_count_files(cfg, partition):
        counts = load_running_counts(url, sha, so)
        if counts is not None:
            total += counts
            if is_total:
                break
    return total


def earlier_lang_counts(cfg: CurateConfig, partition: str) -> LangCounts:
    """Every language's counts of published partitions before `partition`, read as
    `earlier_counts` reads English-only ones (one running total, own counts after it). A
    language counted against different lists on different nights keeps the newer counts."""
    so, total = cfg.storage_options, LangCounts()
    for url, is_total in _earlier_count_files(cfg, partition):
        if not storage.exists(url, so):
            continue
        data = storage.read_bytes(url, so)
        if not is_lang_counts(data):
            logger.warning("ignoring running counts %s: not worldwide counts", url)
            continue
        total = merge_history(total, from_parquet_bytes(data, None, f"running counts {url}"))
        if is_total:
            break
    return total


def balance_inputs(
    cfg: CurateConfig, partition: str, planned: Mapping[str, str] | None = None
) -> BalanceInputs | None:
    """Metadata identity and, with `running_counts`, the earlier partitions' counts.

    Worldwide (a folder of lists): the folder, with the hashes planning took of its files
    (`planned`); which lists are read is decided once the captions' languages are known
    (`with_languages`).
    """
    bal = cfg.pool.balance if cfg.pool else None
    if bal is None:
        return None
    if is_folder(bal.metadata, cfg.storage_options):
        folder = metadata_folder(bal, cfg.storage_options, planned)
        return BalanceInputs(bal, 0, folder.identity, folder=folder)
    md = load_metadata(bal.metadata, cfg.storage_options)
    prior = (
        earlier_counts(cfg, partition, md.sha256, len(md.entries)) if bal.running_counts else None
    )
    return BalanceInputs(bal, len(md.entries), md.sha256, prior)


def with_languages(
    bal: BalanceInputs, cfg: CurateConfig, partition: str, present: set[str], cache: str
) -> BalanceInputs:
    """Worldwide inputs for the metadata languages `present` among the captions (and
    English, whose counts give the tail fraction when `t` is set): their lists (parsed once
    per file content, `folder.load_language`) and, with `running_counts`, earlier counts."""
    assert bal.folder is not None
    so, c = cfg.storage_options, bal.cfg
    needed = set(present) | ({ENGLISH} if c.tail_fraction is None else set())
    lists = {
        code: load_language(bal.folder.files[code], cache, so)
        for code in sorted(needed)
        if code in bal.folder.files
    }
    prior = LangCounts()
    if c.running_counts:  # the whole history goes into this night's total; the lists in use
        bal.lang_history = earlier_lang_counts(cfg, partition)  # balance on their own part
        prior = restrict(bal.lang_history, {k: md.sha256 for k, md in lists.items()})
    t = c.t if c.tail_fraction is None else None
    bal.worldwide = WorldwideInputs(lists, t, c.tail_fraction, c.seed, prior)
    bal.n_entries = sum(len(md) for md in lists.values())
    return bal


def save_partition_counts(
    folder: str, bal: BalanceInputs, counts: np.ndarray | LangCounts, so: dict[str, Any] | None
) -> list[str]:
    """This partition's own counts, and with running counts the total through it (what the
    next night reads), written into its version `folder` before the commit; their names.
    Worldwide counts are one vector per language (`tasks.metaclip.langcounts`)."""
    if isinstance(counts, LangCounts):
        storage.write_bytes(storage.join(folder, COUNTS_FILE), to_parquet_bytes(counts), so)
        if bal.lang_history is None:
            return [COUNTS_FILE]
        total = to_parquet_bytes(merge_history(counts, bal.lang_history))
        storage.write_bytes(storage.join(folder, RUNNING_COUNTS_FILE), total, so)
        return [COUNTS_FILE, RUNNING_COUNTS_FILE]
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


def worldwide_stats(bal: BalanceInputs, summary: Mapping[str, Any]) -> dict[str, Any]:
    """The worldwide part of a partition's balance stats: p (configured or from English's
    t), the folder's languages, and per language with captions its figures (`summary`)."""
    assert bal.folder is not None
    return {
        "mode": "worldwide",
        "tail_fraction": summary.get("tail_fraction"),
        "tail_fraction_from": "t" if bal.cfg.tail_fraction is None else "config",
        "metadata_languages": sorted(bal.folder.files),
        "language_mapping": dict(bal.folder.languages),
        "languages": summary.get("languages", {}),
        "without_metadata": summary.get("without_metadata", {}),
    }
