"""Score stage: one input shard in, one cached scores table (+ fp16 image embeddings) out.

The shard is streamed: a producer thread reads samples, decodes and preprocesses images and
tokenizes captions, handing ready batches through a bounded queue to the model, so decode
overlaps with compute and memory is bounded by the queue, never by the shard or the pool.
The result is cached under a key of (input fingerprint, score config, model identity):
a second run with the same key reads the table back and never touches the model.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import torch

from schemas.config import ModelConfig, PoolConfig, config_hash
from schemas.tables import SCORES, conform
from tasks.io import storage
from tasks.io.prefetch import prefetch
from tasks.model.clip import ClipModel, load_model, model_identity
from tasks.pool.decode import ImageError, decode_for_model
from tasks.pool.sources import RawSample, ShardReadError, iter_samples, sample_uid, sample_url

logger = logging.getLogger(__name__)

SCORE_VERSION = 1  # bump when the scores table's meaning changes: invalidates every cache
PREFETCH_BATCHES = 2
DECODE_THREADS = 2


@dataclass
class _Batch:
    """Rows of one batch plus the model inputs for the rows that decoded."""

    rows: list[dict[str, Any]]
    model_rows: list[int] = field(default_factory=list)
    pixels: list[torch.Tensor] = field(default_factory=list)
    batch: torch.Tensor | None = None  # the stacked pixels (pinned on CUDA)
    captions: list[str] = field(default_factory=list)
    tokens: torch.Tensor | None = None


def score_settings(pool: PoolConfig, model_cfg: ModelConfig) -> dict[str, Any]:
    """Everything a shard's scores depend on besides its bytes."""
    return {
        "version": SCORE_VERSION,
        "model": model_identity(model_cfg),
        "format": pool.format,
        "columns": [pool.image_column, pool.caption_column, pool.uid_column],
        "max_image_pixels": pool.max_image_pixels,
    }


def cache_key(fingerprint: dict[str, Any], settings: dict[str, Any]) -> str:
    return config_hash({"input": fingerprint, "settings": settings})


def _row(sample: RawSample, source: str, uid_column: str | None) -> dict[str, Any]:
    return {
        "uid": sample_uid(sample, uid_column),
        "source": source,
        "key": sample.key,
        "index": sample.index,
        "caption": sample.caption,
        "url": sample_url(sample),
        "image_ext": sample.image_ext,
        "width": None,
        "height": None,
        "clip_score": None,
        "emb_row": None,
        "error": sample.error,
    }


def _prepare(
    samples: list[RawSample],
    source: str,
    model: ClipModel,
    pool: PoolConfig,
    ex: ThreadPoolExecutor,
) -> _Batch:
    """Decode + preprocess a batch (threads: PIL releases the GIL) and tokenize its captions."""
    batch = _Batch(rows=[_row(s, source, pool.uid_column) for s in samples])

    def decode(s: RawSample) -> Any:
        try:
            return decode_for_model(
                s.image, model.preprocess, model.image_size, pool.max_image_pixels
            )
        except ImageError as err:
            return err

    todo = [i for i, s in enumerate(samples) if s.error is None]
    for i, res in zip(todo, ex.map(decode, [samples[i] for i in todo]), strict=True):
        row = batch.rows[i]
        if isinstance(res, ImageError):
            row["error"] = res.reason
            continue
        tensor, row["width"], row["height"] = res
        if samples[i].caption is None:
            row["error"] = "missing_caption"
            continue
        batch.model_rows.append(i)
        batch.pixels.append(tensor)
        batch.captions.append(samples[i].caption)
    if batch.captions:
        batch.tokens = model.tokenize(batch.captions)
        batch.batch, batch.pixels = model.stage(batch.pixels), []
    return batch


def _chunks(it: Iterable[RawSample], size: int) -> Iterator[list[RawSample]]:
    buf: list[RawSample] = []
    for s in it:
        buf.append(s)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def _prepared(
    samples: Iterable[RawSample], source: str, model: ClipModel, pool: PoolConfig, batch_size: int
) -> Iterator[_Batch]:
    with ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode") as ex:
        for chunk in _chunks(samples, batch_size):
            yield _prepare(chunk, source, model, pool, ex)


def score_samples(
    samples: Iterable[RawSample], source: str, model: ClipModel, pool: PoolConfig, batch_size: int
) -> tuple[pl.DataFrame, np.ndarray]:
    """Score a stream of samples; returns the scores table and fp16 image embeddings."""
    rows: list[dict[str, Any]] = []
    embs: list[np.ndarray] = []
    n_emb = 0
    batches = _prepared(samples, source, model, pool, batch_size)
    for item in prefetch(batches, PREFETCH_BATCHES, name="score-producer"):
        if item.model_rows:
            img = model.encode_images(item.batch)
            txt = model.encode_tokens(item.tokens)
            scores = np.einsum("ij,ij->i", img, txt)
            for j, i in enumerate(item.model_rows):
                item.rows[i]["clip_score"] = float(scores[j])
                item.rows[i]["emb_row"] = n_emb + j
            embs.append(img.astype(np.float16))
            n_emb += len(item.model_rows)
        rows.extend(item.rows)
    dim = embs[0].shape[1] if embs else 0
    emb = np.concatenate(embs) if embs else np.zeros((0, dim), np.float16)
    table = pl.DataFrame(rows, schema=SCORES) if rows else pl.DataFrame(schema=SCORES)
    return conform(table, SCORES), emb


@dataclass
class ShardScores:
    """Where a shard's cached scores live and what they hold."""

    url: str
    key: str
    table: str
    embeddings: str
    stats: dict[str, Any]
    cached: bool


def cache_paths(cache_root: str, key: str) -> tuple[str, str, str]:
    base = storage.join(cache_root, "pool", "scores", key)
    return f"{base}.parquet", f"{base}.emb.npy", f"{base}.stats.json"


def score_shard(
    url: str,
    pool: PoolConfig,
    model_cfg: ModelConfig,
    cache_root: str,
    storage_options: dict[str, Any] | None = None,
    force: bool = False,
) -> ShardScores:
    """Score one input shard unless its cache entry exists (the stats file is written last)."""
    fp = storage.fingerprint(url, storage_options)
    key = cache_key(fp, score_settings(pool, model_cfg))
    table_url, emb_url, stats_url = cache_paths(cache_root, key)
    if not force and storage.exists(stats_url, storage_options):
        stats = storage.read_json(stats_url, storage_options)
        return ShardScores(url, key, table_url, emb_url, stats, cached=True)
    start = time.perf_counter()
    model = load_model(model_cfg)
    samples = iter_samples(
        url, storage_options, pool.format, pool.image_column, pool.caption_column, pool.uid_column
    )
    shard_error = None
    try:
        table, emb = score_samples(samples, url, model, pool, model_cfg.batch_size)
    except ShardReadError as err:
        shard_error = str(err)
        logger.warning("shard %s unreadable: %s", url, err)
        table, emb = pl.DataFrame(schema=SCORES), np.zeros((0, 0), np.float16)
    buf = io.BytesIO()
    np.save(buf, emb, allow_pickle=False)
    storage.write_bytes(emb_url, buf.getvalue(), storage_options)
    storage.write_parquet(table, table_url, storage_options)
    stats = {
        "url": url,
        "fingerprint": fp,
        "key": key,
        "samples": table.height,
        "embedded": int(emb.shape[0]),
        "errors": dict(table.group_by("error").len().drop_nulls("error").iter_rows()),
        "shard_error": shard_error,
        "seconds": round(time.perf_counter() - start, 3),
    }
    storage.write_json(stats_url, stats, storage_options)
    logger.info("scored %s: %d samples in %.1fs", url, table.height, stats["seconds"])
    return ShardScores(url, key, table_url, emb_url, stats, cached=False)


def read_embeddings(url: str, storage_options: dict[str, Any] | None = None) -> np.ndarray:
    """Load a shard's fp16 embeddings (plain .npy; pickles are refused)."""
    return np.load(io.BytesIO(storage.read_bytes(url, storage_options)), allow_pickle=False)
