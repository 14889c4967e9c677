"""The image-text pool flow: score each input shard, select globally, publish atomically."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import polars as pl
from prefect import flow, get_run_logger, task

from flows.common import (
    IO_RETRIES,
    cache_root,
    execution,
    model_runs_here,
    publish_artifacts,
    summary_markdown,
)
from flows.plan import read_planned
from flows.progress import Progress
from flows.run import (
    RunPlan,
    already_published,
    call_flow,
    finish,
    gather,
    plan_run,
    report_url,
    resolved_model,
    run_partition,
    skipped,
    total_time,
    versioned,
)
from schemas.config import ConfigError, CurateConfig, ModelConfig, PoolConfig, parse_config
from tasks.dedup_index.compact import compact
from tasks.dedup_index.query import Matches, query_history
from tasks.dedup_index.runs import PointerMoved
from tasks.io import storage
from tasks.metaclip.counts import (
    BalanceInputs,
    balance_inputs,
    load_matches,
    save_partition_counts,
    with_languages,
    worldwide_stats,
)
from tasks.metaclip.folder import MetadataFolder
from tasks.model.heads import (
    EmbeddingHead,
    HeadMismatch,
    apply_embedding_head,
    load_embedding_head,
)
from tasks.pool.dedup_step import (
    EMB_FILE,
    INDEX_FILE,
    MODEL_KEYS,
    embedding_reader,
    index_table,
)
from tasks.pool.examples import read_images
from tasks.pool.report import entry_distribution_summary, write_pool_report
from tasks.pool.score import ShardScores, score_shard
from tasks.pool.select import PriorLookup, Selection, select
from tasks.pool.shards import plan_shards, write_pool_shard
from tasks.pool.sources import iter_selected
from tasks.pool.stats import pool_stats
from tasks.publish.catalog import HistoryChanged, flow_folder
from tasks.publish.commit import Version
from tasks.publish.writer import WrittenFile, describe_file, write_sizes, write_table
from tasks.stats import Counts


@task(name="score-shard", task_run_name="score {url}", **IO_RETRIES)
def score_shard_task(
    url: str,
    pool: PoolConfig,
    model: ModelConfig,
    cache: str,
    so: dict[str, Any],
    force: bool,
    run: str,
) -> ShardScores:
    return score_shard(url, pool, model, cache, so, force, run)


@task(name="match-shard", **IO_RETRIES)
def match_shard_task(
    scores: ShardScores, metadata: str | MetadataFolder, cache: str, so: dict, force: bool
) -> str:
    from tasks.metaclip.matches import match_shard, match_shard_worldwide

    if isinstance(metadata, MetadataFolder):
        return match_shard_worldwide(scores.table, scores.key, metadata, cache, so, force)
    return match_shard(scores.table, scores.key, metadata, cache, so, force)


@task(name="write-shard", task_run_name="write {name}", **IO_RETRIES)
def write_shard_task(
    name: str, rows: pl.DataFrame, base: str, pool: PoolConfig, so: dict[str, Any]
) -> list[WrittenFile]:
    return write_pool_shard(name, rows, base, pool, so)


def load_scores(results: list[ShardScores], so: dict[str, Any]) -> pl.DataFrame:
    """All shards' score tables, in input order (sorted input URLs, then index)."""
    frames = [storage.read_parquet(r.table, so) for r in results]
    return pl.concat(frames, how="vertical") if frames else pl.DataFrame()


def score_all(cfg: CurateConfig, force: bool, plan: RunPlan, run: str) -> list[ShardScores]:
    """One task per input shard; cached shards return at once."""
    cache, so = cache_root(cfg), cfg.storage_options
    futures = [
        score_shard_task.submit(u, cfg.pool, cfg.model, cache, so, force, run) for u in plan.urls
    ]
    progress = Progress("pool", cfg.dataset, plan.partition, len(futures), "samples")
    return gather(futures, run, progress, lambda r: float(r.stats["samples"]))


def match_all(
    cfg: CurateConfig, results: list[ShardScores], bal: BalanceInputs, force: bool, run: str
) -> pl.DataFrame:
    """One task per shard: MetaCLIP matches of its captions (cached apart from the scores);
    worldwide, each caption against its own language's list."""
    cache, so = cache_root(cfg), cfg.storage_options
    meta = bal.folder if bal.folder is not None else cfg.pool.balance.metadata
    futures = [match_shard_task.submit(r, meta, cache, so, force) for r in results]
    return load_matches(gather(futures, run), [r.url for r in results], so)


def balance_for(
    cfg: CurateConfig, plan: RunPlan, results: list[ShardScores], force: bool, run: str
) -> tuple[BalanceInputs | None, pl.DataFrame | None]:
    """Balancing's inputs and the shards' matches (None, None without balancing).
    Worldwide, the lists of the languages the matches found are read after matching."""
    bal = balance_inputs(cfg, plan.partition, plan.files)
    if bal is None:
        return None, None
    matches = match_all(cfg, results, bal, force, run)
    if bal.folder is not None:
        present = set(matches["meta_lang"].drop_nulls().unique().to_list())
        bal = with_languages(bal, cfg, plan.partition, present, cache_root(cfg))
    return bal, matches


def publish(
    cfg: CurateConfig,
    plan: RunPlan,
    sel: Selection,
    results: list[ShardScores],
    bal: BalanceInputs | None,
    timings: dict[str, float],
    run: str,
    embeddings: Callable[[pl.DataFrame], np.ndarray],
) -> dict[str, Any]:
    """Reshard the kept samples into a new version, write tables, stats, report; commit."""
    so = cfg.storage_options
    with versioned(plan, so) as version:
        t0 = time.perf_counter()
        shards = plan_shards(sel.samples)
        futures = [
            write_shard_task.submit(n, rows, version.root, cfg.pool, so) for n, rows in shards
        ]
        outputs: list[WrittenFile] = [w for ws in gather(futures, run) for w in ws]
        outputs.append(write_sizes(outputs, version.root, so))
        samples_url = version.url("samples.parquet")
        outputs.append(write_table(sel.samples, samples_url, "samples.parquet", so))
        if bal is not None:  # running counts commit with the partition they describe
            for name in save_partition_counts(version.root, bal, sel.pool_counts, so):
                outputs.append(describe_file(version.url(name), name, so))
        if cfg.pool.dedup is not None:  # what later partitions dedup against (scope: dataset)
            outputs += write_dedup_index(sel, cfg.pool, embeddings, version, so)
        timings["publish_s"] = time.perf_counter() - t0
        stats = partition_stats(cfg, plan.partition, sel, results, bal, total_time(timings))
        stats["shards"]["output"] = len(shards)
        counts = (sel.counts_before, sel.counts_after) if bal is not None else None

        def report(version: Version) -> list[str]:
            groups = sel.extra.get("dedup_groups")
            images = source_images(cfg.pool, so)
            return write_pool_report(sel.samples, stats, version.root, so, counts, images, groups)

        lineage: dict[str, Any] = {"balance": stats["balance"]}
        if cfg.pool.dedup is not None:
            lineage["dedup"] = {
                "scope": cfg.pool.dedup.scope,
                "against": sel.extra.get("dedup_prior", {}),  # partition -> version read
            }
        finish(cfg, plan, version, outputs, stats, report, lineage)
    return stats


def load_pool_heads(
    cfg: CurateConfig, plan: RunPlan, results: list[ShardScores]
) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The configured embedding heads, each checked against the model that embedded the
    images (as the score stage resolved it) and against the bytes planned into the run key."""
    if not cfg.pool or not cfg.pool.heads:
        return {}
    identities = [r.stats["model"] for r in results if r.stats.get("samples")]
    out: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    for name in sorted(cfg.pool.heads):
        if not identities:  # nothing was embedded: the head has no rows to score
            pool_head(cfg, plan, name, None)
            out[name] = _no_rows
            continue
        # one model per run: every shard resolved the same architecture and checkpoint
        head = pool_head(cfg, plan, name, identities[0])
        out[name] = functools.partial(apply_embedding_head, head)
    return out


def check_pool_heads(cfg: CurateConfig, plan: RunPlan) -> None:
    """Fail fast on a head made for another model, before any shard is scored, where the
    model's identity resolves on this machine (else `load_pool_heads` checks after scoring)."""
    from tasks.model.clip import model_identity

    if not cfg.pool or not cfg.pool.heads or not model_runs_here(cfg):
        return
    identity = model_identity(cfg.model)
    for name in sorted(cfg.pool.heads):
        pool_head(cfg, plan, name, identity)


def pool_head(
    cfg: CurateConfig, plan: RunPlan, name: str, model: dict[str, Any] | None
) -> EmbeddingHead | None:
    """Head `name` read and checked: its bytes are the ones planned into the run key, and,
    given the `model` identity, it was made for that model and has one output."""
    head_cfg = cfg.pool.heads[name]
    key = f"pool.heads.{name}.path"
    data = read_planned(cfg, plan.files, key, head_cfg.path)
    if model is None:
        return None
    try:
        head = load_embedding_head(data, model)
    except HeadMismatch as err:
        raise ConfigError(f"config: invalid value for '{key}': {head_cfg.path}: {err}") from None
    if head.weights[-1].shape[0] != 1:
        msg = (
            f"config: invalid value for '{key}': {head_cfg.path} has "
            f"{head.weights[-1].shape[0]} outputs; a pool head needs one (one column)"
        )
        raise ConfigError(msg)
    return head


def _no_rows(emb: np.ndarray) -> np.ndarray:
    return np.zeros(len(emb), np.float32)


def source_images(pool: PoolConfig, so: dict[str, Any]) -> Any:
    """`rows -> {uid: image bytes}` read back from the input shards (the report's pictures)."""

    def read(source: str, indices: list[int]) -> Iterator[tuple[int, bytes | None]]:
        for sample in iter_selected(
            source, indices, storage_options=so, fmt=pool.format,
            image_column=pool.image_column, caption_column=pool.caption_column,
            uid_column=pool.uid_column,
        ):  # fmt: skip
            yield sample.index, sample.image

    return lambda rows: read_images(rows, read)


def write_dedup_index(
    sel: Selection,
    pool: PoolConfig,
    embeddings: Callable[[pl.DataFrame], np.ndarray],
    version: Version,
    so: dict[str, Any],
) -> list[WrittenFile]:
    """The kept samples' fingerprints (and embeddings, for semantic dedup), in input order."""
    kept = sel.samples.filter(pl.col("status") == "kept")
    out = [write_table(index_table(kept), version.url(INDEX_FILE), INDEX_FILE, so)]
    if pool.dedup is not None and pool.dedup.semantic is not None:
        # the samples table carries each row's source and emb_row; the run's one reader
        # has the shards' files already (read once for the select stage)
        emb = embeddings(kept)
        storage.write_bytes(version.url(EMB_FILE), storage.npy_bytes(emb), so)
        out.append(describe_file(version.url(EMB_FILE), EMB_FILE, so))
    return out


def history_lookup(cfg: CurateConfig, plan: RunPlan) -> PriorLookup | None:
    """With `scope: dataset`, how the select stage looks its candidates up in the index of
    the earlier partitions the plan read (their versions are the plan's)."""
    dedup = cfg.pool.dedup
    if dedup is None or dedup.scope != "dataset":
        return None
    folder = flow_folder(cfg.output, cfg.dataset, "pool")
    model = {k: plan.model.get(k) for k in MODEL_KEYS}

    def lookup(cand: pl.DataFrame, emb: np.ndarray | None) -> Matches:
        try:
            return query_history(folder, plan.prior, cand, emb, dedup, model, cfg.storage_options)
        except FileNotFoundError as err:  # a version the plan read was replaced meanwhile
            raise HistoryChanged(f"{plan.partition}: earlier dedup data changed: {err}") from None

    return lookup


def compact_index(cfg: CurateConfig, log: Any) -> None:
    """After a commit with `scope: dataset`: fold the new segment into the index. The index is
    derived data: a failure here costs the next night a segment read, never a wrong answer."""
    dedup = cfg.pool.dedup
    if dedup is None or dedup.scope != "dataset":
        return
    t0 = time.perf_counter()
    try:
        done = compact(
            flow_folder(cfg.output, cfg.dataset, "pool"),
            cfg.storage_options,
            semantic=dedup.semantic is not None,
            max_distance=dedup.perceptual.max_distance if dedup.perceptual else None,
        )
    except PointerMoved as err:  # another run moved the pointer first: the next run compacts
        log.info("dedup index: %s", err)
        return
    except Exception as err:  # derived data: the published partition stands either way
        log.warning("dedup index not compacted (the next run retries): %s: %s",
                    type(err).__name__, err)  # fmt: skip
        return
    log.info("dedup index: %s in %.2f s", done, time.perf_counter() - t0)


def partition_stats(
    cfg: CurateConfig,
    partition: str,
    sel: Selection,
    results: list[ShardScores],
    bal: BalanceInputs | None,
    timings: dict[str, float],
) -> dict[str, Any]:
    shards = {
        "input": len(results),
        "unreadable": sum(1 for r in results if r.stats.get("shard_error")),
        "empty": sum(1 for r in results if r.stats["samples"] == 0),
        "scored": sum(1 for r in results if not r.cached),
        "cached": sum(1 for r in results if r.cached),
        "output": 0,
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
        if bal.folder is not None:
            balance |= worldwide_stats(bal, sel.extra.get("worldwide", {}))
    stats = pool_stats(
        sel.samples,
        dataset=cfg.dataset,
        partition=partition,
        shards=shards,
        mode=sel.mode,
        threshold=sel.threshold,
        balance=balance,
        timings=timings,
    )
    stats["stages"] = {"score": Counts.total(r.stats["counts"] for r in results).sorted()}
    stats["model"] = resolved_model(r.stats.get("model") for r in results if r.stats["samples"])
    stats["unreadable_shards"] = {
        r.url: r.stats["shard_error"] for r in results if r.stats.get("shard_error")
    }
    return stats


@flow(name="curate-pool", log_prints=False)
def pool_flow(config: dict[str, Any], partition: str | None = None, force: bool = False) -> dict:
    """Score every pair with CLIP, drop bad captions and poor matches, publish shards."""
    cfg = parse_config(config)
    if cfg.pool is None:
        raise ConfigError("config: the pool flow needs a 'pool' section")
    return run_partition(cfg, "pool", partition, force, _pool_run, get_run_logger())


def _pool_run(cfg: CurateConfig, plan: RunPlan, force: bool, run: str) -> dict:
    """score -> select -> publish for one partition (the caller holds its lock)."""
    log = get_run_logger()
    check_pool_heads(cfg, plan)
    t0 = time.perf_counter()
    results = score_all(cfg, force, plan, run)
    scored = sum(not r.cached for r in results)
    log.info("scores ready: %d shards scored, %d from cache", scored, len(results) - scored)
    bal, matches = balance_for(cfg, plan, results, force, run)
    timings = {"score_s": time.perf_counter() - t0}

    t1 = time.perf_counter()
    so = cfg.storage_options
    prior = history_lookup(cfg, plan)
    embeddings = embedding_reader({r.url: r.embeddings for r in results}, so)
    heads = load_pool_heads(cfg, plan, results)
    scores = load_scores(results, so)
    sel = select(scores, cfg.pool, matches, bal, embeddings, prior, heads)
    timings["select_s"] = time.perf_counter() - t1
    log.info("selected: %s", sel.samples.group_by("status").len().sort("status").rows())

    stats = publish(cfg, plan, sel, results, bal, timings, run, embeddings)
    compact_index(cfg, log)
    publish_artifacts("pool", stats, summary_markdown(stats, plan.final))
    log.info("published %s: %s", plan.final, stats["counts"])
    return {
        "status": "published",
        "partition": plan.partition,
        "uri": plan.final,
        "report": report_url(plan.final, cfg.storage_options),
        "counts": stats["counts"],
    }


def run_pool(cfg: CurateConfig, partition: str | None = None, force: bool = False) -> dict:
    """Run the pool flow with the config's task runner.

    Inputs and model are checked, and a partition already published with the same inputs
    and config is skipped, before any task runner or API starts.
    """
    if cfg.pool is None:
        raise ConfigError("config: the pool flow needs a 'pool' section")
    plan = plan_run(cfg, "pool", partition)
    if not force and already_published(plan, cfg.storage_options):
        return skipped(plan, cfg.storage_options)
    check_pool_heads(cfg, plan)  # before a runner, a cluster or a Prefect server starts
    with execution(cfg) as runner:
        return call_flow(
            pool_flow.with_options(task_runner=runner),
            plan.final,
            config=cfg.model_dump(mode="json"),
            partition=plan.partition,
            force=force,
        )
