"""Reshard kept pool samples into output WebDataset shards.

Each output shard is independent: it knows which (source shard, index) pairs it holds, in
input order, and streams just those source shards again to copy the original image bytes.
So output shards can be written in parallel, and a source shard is read at most twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import polars as pl

from schemas.config import PoolConfig
from schemas.tables import SHARD_INDEX
from tasks.errors import InfraError
from tasks.pool.phash import sha256_hex
from tasks.pool.sources import iter_selected
from tasks.publish.writer import Sample, WrittenFile, write_shard


def plan_shards(samples: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
    """Kept rows per output shard name, in shard order and input order within a shard."""
    kept = samples.filter(pl.col("status") == "kept")
    return [(str(name), rows) for (name,), rows in kept.group_by("shard", maintain_order=True)]


def sample_json(row: dict[str, Any], source: dict[str, Any] | None = None) -> bytes:
    """The `{key}.json` member of a published pool sample: the source sample's json fields
    (img2dataset's url, sizes, exif...), with ours (uid, score, caption...) on top."""
    meta = {
        **(source or {}),
        "uid": row["uid"],
        "clip_score": row["clip_score"],
        "source": row["source"],
        "source_key": row["key"],
        "url": row.get("url"),
        "width": row.get("width"),
        "height": row.get("height"),
        "caption": row["caption"],
        "sha256": row.get("sha256"),
        # hex, as imagehash prints it: a u64 does not survive JSON readers that use doubles
        "phash": None if row.get("phash") is None else format(row["phash"], "016x"),
    }
    if row.get("keep_prob") is not None:
        meta["keep_prob"] = row["keep_prob"]
        meta["entry_ids"] = list(row.get("entry_ids") or [])
    if "meta_lang" in row:  # worldwide balancing: the list the entry ids point into
        meta["meta_lang"] = row["meta_lang"]
    return json.dumps(meta, sort_keys=True, ensure_ascii=False, default=str).encode()


def _members(rows: pl.DataFrame, pool: PoolConfig, so: dict[str, Any]) -> Iterator[Sample]:
    """The kept samples' original bytes, re-read from their source shards, in order.

    A kept sample that cannot be found again means the input changed under the run: that
    is a broken input store, not a bad sample, so the shard (and the run) fails.
    """
    for (source,), part in rows.group_by("source", maintain_order=True):
        wanted = {r["index"]: r for r in part.iter_rows(named=True)}
        found = 0
        samples = iter_selected(
            source,
            list(wanted),
            storage_options=so,
            fmt=pool.format,
            image_column=pool.image_column,
            caption_column=pool.caption_column,
            uid_column=pool.uid_column,
        )
        for sample in samples:
            row = wanted.get(sample.index)
            if row is None:
                continue
            if sample.image is None:
                raise InfraError(f"{source}#{sample.key}: image vanished since scoring")
            if row.get("sha256") and sha256_hex(sample.image) != row["sha256"]:
                # the input changed under the run: publishing it would break lineage
                raise InfraError(f"{source}#{sample.key}: image bytes changed since scoring")
            files = {
                row["image_ext"]: sample.image,
                "txt": (row["caption"] or "").encode(),
                "json": sample_json(row, sample.meta),
            }
            yield row["out_key"], files, {k: row[k] for k in SHARD_INDEX}
            found += 1
        if found != len(wanted):
            raise InfraError(f"{source}: {len(wanted) - found} kept samples missing on re-read")


def write_pool_shard(
    name: str, rows: pl.DataFrame, base: str, pool: PoolConfig, so: dict[str, Any]
) -> list[WrittenFile]:
    """Write `shards/{name}` and its parquet index into the version folder `base`."""
    return write_shard(base, name, _members(rows, pool, so), SHARD_INDEX, so)
