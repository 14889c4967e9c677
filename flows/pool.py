"""The image-text pool flow: score each input shard, select globally, publish atomically."""

from __future__ import annotations

import time
from typing import Any

import polars as pl
from prefect import flow, get_run_logger, task

from flows.common import (
    IO_RETRIES,
    InputError,
    cache_root,
    execution,
    list_inputs,
    output_config,
    publish_artifacts,
    resolve_partition,
    run_key,
    summary_markdown,
    to_json,
)
from schemas.config import (
    CurateConfig,
    ModelConfig,
    PoolConfig,
    config_hash,
    parse_config,
    redacted,
)
from tasks import storage
from tasks.gate import apply_gate
from tasks.lock import partition_lock
from tasks.model import model_identity
from tasks.pool_publish import plan_shards, write_pool_shard, write_sizes
from tasks.publish import Staging, abort, begin, code_version, commit, partition_url, read_manifest
from tasks.report import entry_distribution_summary, write_pool_report
from tasks.score import ShardScores, score_shard
from tasks.select import BalanceInputs, Selection, select
from tasks.shards import WrittenFile, describe_file, write_file, write_index
from tasks.stats import pool_stats


@task(name="score-shard", task_run_name="score {url}", **IO_RETRIES)
def score_shard_task(
    url: str, pool: PoolConfig, model: ModelConfig, cache: str, so: dict[str, Any], force: bool
) -> ShardScores:
    return score_shard(url, pool, model, cache, so, force)


@task(name="match-shard", **IO_RETRIES)
def match_shard_task(scores: ShardScores, metadata: str, cache: str, so: dict, force: bool) -> str:
    from tasks.matches import match_shard

    return match_shard(scores.table, scores.key, metadata, cache, so, force)


@task(name="write-shard", task_run_name="write {name}", **IO_RETRIES)
def write_shard_task(name: str, rows: pl.DataFrame, stage: Staging, pool: PoolConfig) -> list:
    return write_pool_shard(name, rows, stage, pool)


def load_scores(results: list[ShardScores], so: dict[str, Any]) -> pl.DataFrame:
    """All shards' score tables, in input order (sorted input URLs, then index)."""
    frames = [storage.read_parquet(r.table, so) for r in results]
    return pl.concat(frames, how="vertical") if frames else pl.DataFrame()


def balance_inputs(
    pool: PoolConfig, so: dict[str, Any], cfg: CurateConfig, partition: str
) -> BalanceInputs | None:
    if pool.balance is None:
        return None
    from tasks.metadata import load_metadata

    md = load_metadata(pool.balance.metadata, so)
    prior = None
    if pool.balance.running_counts:
        prior = earlier_counts(cfg, partition, md.sha256, len(md.entries))
    return BalanceInputs(pool.balance, len(md.entries), md.sha256, prior)


def counts_url(cfg: CurateConfig, partition: str) -> str:
    """Per-partition entry counts; earlier partitions' files sum to the running counts."""
    return storage.join(cfg.output, cfg.dataset, "pool", "_entry_counts", f"{partition}.parquet")


def earlier_counts(cfg: CurateConfig, partition: str, sha: str, n: int) -> Any:
    """Sum of the entry counts of partitions before `partition` (same metadata only).

    Stored per partition rather than as one running total, so re-running or backfilling a
    partition replaces its own contribution instead of counting it twice.
    """
    import numpy as np

    from tasks.balance import load_running_counts

    total = np.zeros(n, np.int64)
    folder = storage.join(cfg.output, cfg.dataset, "pool", "_entry_counts")
    for url in storage.listdir(folder, cfg.storage_options):
        name = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".parquet")
        if name < partition:
            counts = load_running_counts(url, sha, cfg.storage_options)
            if counts is not None:
                total += counts
    return total


def load_matches(urls: list[str], so: dict[str, Any], results: list[ShardScores]) -> pl.DataFrame:
    frames = [
        storage.read_parquet(u, so).with_columns(pl.lit(r.url).alias("source"))
        for u, r in zip(urls, results, strict=True)
    ]
    return pl.concat(frames) if frames else pl.DataFrame()


def publish_partition(
    cfg: CurateConfig,
    partition: str,
    sel: Selection,
    results: list[ShardScores],
    bal: BalanceInputs | None,
    key: str,
    timings: dict[str, float],
    model: dict[str, Any],
) -> dict[str, Any]:
    """Stage shards + tables + report + manifest, then commit with `_SUCCESS` last."""
    pool, so = cfg.pool, cfg.storage_options
    final = partition_url(cfg.output, cfg.dataset, "pool", partition)
    stage = begin(final, so)
    try:
        t0 = time.perf_counter()
        futures = [
            write_shard_task.submit(n, rows, stage, pool) for n, rows in plan_shards(sel.samples)
        ]
        outputs: list[WrittenFile] = [w for f in futures for w in f.result()]
        outputs.append(write_sizes(outputs, stage))
        outputs.append(
            write_index(sel.samples, stage.url("samples.parquet"), "samples.parquet", so)
        )
        timings["publish_s"] = time.perf_counter() - t0
        timings["total_s"] = sum(v for k, v in timings.items() if k != "total_s")
        stats = partition_stats(cfg, partition, sel, results, bal, timings, outputs)
        outputs.append(write_file(stage.url("stats.json"), "stats.json", to_json(stats), so))
        entry_counts = (sel.counts_before, sel.counts_after) if bal is not None else None
        for rel in write_pool_report(sel.samples, stats, stage.staging, so, entry_counts):
            outputs.append(describe_file(stage.url(rel), rel, so))
        manifest = {
            "flow": "pool",
            "dataset": cfg.dataset,
            "partition": partition,
            "config": redacted(cfg),
            "config_hash": config_hash(output_config(cfg, "pool")),
            "model": model,
            "code_version": code_version(),
            "run_key": key,
            "inputs": [r.stats["fingerprint"] for r in results],
            "balance": stats["balance"],
        }
        apply_gate(cfg, "pool", stats, stage)
        commit(stage, manifest, outputs)
    except BaseException:
        abort(stage)
        raise
    return stats


def partition_stats(
    cfg: CurateConfig,
    partition: str,
    sel: Selection,
    results: list[ShardScores],
    bal: BalanceInputs | None,
    timings: dict[str, float],
    outputs: list[WrittenFile],
) -> dict[str, Any]:
    shards = {
        "input": len(results),
        "unreadable": sum(1 for r in results if r.stats.get("shard_error")),
        "empty": sum(1 for r in results if r.stats["samples"] == 0),
        "scored": sum(1 for r in results if not r.cached),
        "cached": sum(1 for r in results if r.cached),
        "output": sum(1 for o in outputs if o.path.endswith(".tar")),
    }
    balance = None
    if bal is not None:
        balance = {
            "t": bal.cfg.t,
            "seed": bal.cfg.seed,
            "metadata_sha256": bal.metadata_sha256,
            "order": bal.cfg.order,
            "running_counts": bal.cfg.running_counts,
            "entries": bal.n_entries,
            **entry_distribution_summary(sel.counts_before, sel.counts_after),
        }
    return pool_stats(
        sel.samples,
        dataset=cfg.dataset,
        partition=partition,
        shards=shards,
        mode=sel.mode,
        threshold=sel.threshold,
        balance=balance,
        timings=timings,
    ) | {
        "unreadable_shards": {
            r.url: r.stats["shard_error"] for r in results if r.stats.get("shard_error")
        }
    }


@flow(name="curate-pool", log_prints=False)
def pool_flow(config: dict[str, Any], partition: str | None = None, force: bool = False) -> dict:
    """Score every pair with CLIP, drop bad captions and poor matches, publish shards."""
    log = get_run_logger()
    cfg = parse_config(config)
    if cfg.pool is None:
        raise InputError("config: the pool flow needs a 'pool' section")
    partition = resolve_partition(partition, cfg.schedule.timezone)
    so = cfg.storage_options
    urls = list_inputs(cfg.pool.input, partition, so)
    log.info("partition %s: %d input shards", partition, len(urls))
    model = model_identity(cfg.model)
    inputs = [storage.fingerprint(u, so) for u in urls]
    key = run_key(inputs, output_config(cfg, "pool"), model)
    final = partition_url(cfg.output, cfg.dataset, "pool", partition)
    with partition_lock(final, so):
        published = read_manifest(final, so)
        if not force and published and published.get("run_key") == key:
            log.info("partition %s already published with the same inputs and config", partition)
            return {"status": "skipped", "partition": partition, "uri": final}
        return _pool_run(cfg, partition, urls, key, model, force)


def _pool_run(
    cfg: CurateConfig, partition: str, urls: list[str], key: str, model: dict, force: bool
) -> dict:
    """score -> select -> publish for one partition (the caller holds its lock)."""
    log = get_run_logger()
    so, cache = cfg.storage_options, cache_root(cfg)
    final = partition_url(cfg.output, cfg.dataset, "pool", partition)
    t0 = time.perf_counter()
    futures = [score_shard_task.submit(u, cfg.pool, cfg.model, cache, so, force) for u in urls]
    results = [f.result() for f in futures]
    scored = sum(not r.cached for r in results)
    log.info("scores ready: %d shards scored, %d from cache", scored, len(results) - scored)
    bal = balance_inputs(cfg.pool, so, cfg, partition)
    matches = None
    if bal is not None:
        mfut = [
            match_shard_task.submit(r, cfg.pool.balance.metadata, cache, so, force) for r in results
        ]
        matches = load_matches([f.result() for f in mfut], so, results)
    timings = {"score_s": time.perf_counter() - t0}

    t1 = time.perf_counter()
    sel = select(load_scores(results, so), cfg.pool, matches, bal)
    timings["select_s"] = time.perf_counter() - t1
    log.info("selected: %s", sel.samples.group_by("status").len().sort("status").rows())

    stats = publish_partition(cfg, partition, sel, results, bal, key, timings, model)
    if bal is not None and bal.cfg.running_counts:
        from tasks.balance import save_running_counts

        save_running_counts(counts_url(cfg, partition), sel.pool_counts, bal.metadata_sha256, so)
    publish_artifacts("pool", stats, summary_markdown(stats, final))
    log.info("published %s: %s", final, stats["counts"])
    return {"status": "published", "partition": partition, "uri": final, "counts": stats["counts"]}


def run_pool(cfg: CurateConfig, partition: str | None = None, force: bool = False) -> dict:
    """Run the pool flow with the config's task runner.

    Inputs and model are checked before the flow starts, so a wrong input root or model
    fails fast with one line instead of a failed flow run.
    """
    if cfg.pool is None:
        raise InputError("config: the pool flow needs a 'pool' section")
    partition = resolve_partition(partition, cfg.schedule.timezone)
    list_inputs(cfg.pool.input, partition, cfg.storage_options)
    model_identity(cfg.model)
    with execution(cfg) as runner:
        return pool_flow.with_options(task_runner=runner)(
            config=cfg.model_dump(mode="json"), partition=partition, force=force
        )
