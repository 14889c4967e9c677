"""Reshard kept pool samples into output WebDataset shards.

Each output shard is independent: it knows which (source shard, index) pairs it holds, in
input order, and streams just those source shards again to copy the original image bytes.
So output shards can be written in parallel, and a source shard is read at most twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import polars as pl

from schemas.config import PoolConfig
from tasks.pool.sources import iter_selected
from tasks.publish.commit import Staging
from tasks.publish.writer import (
    WrittenFile,
    pool_sample_json,
    shard_index,
    write_index,
    write_tar,
)


def plan_shards(samples: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
    """Kept rows per output shard name, in shard order and input order within a shard."""
    kept = samples.filter(pl.col("status") == "kept")
    return [(str(name), rows) for (name,), rows in kept.group_by("shard", maintain_order=True)]


def _members(
    rows: pl.DataFrame, pool: PoolConfig, so: dict[str, Any]
) -> Iterator[tuple[str, dict[str, bytes]]]:
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
                raise RuntimeError(f"{source}#{sample.key}: image vanished since scoring")
            yield (
                row["out_key"],
                {
                    row["image_ext"] or "jpg": sample.image,
                    "txt": (row["caption"] or "").encode(),
                    "json": pool_sample_json(row),
                },
            )
            found += 1
        if found != len(wanted):
            raise RuntimeError(f"{source}: {len(wanted) - found} kept samples missing on re-read")


def write_pool_shard(
    name: str, rows: pl.DataFrame, stage: Staging, pool: PoolConfig
) -> list[WrittenFile]:
    """Write `shards/{name}` and its parquet index; return both for the manifest."""
    so = stage.storage_options
    tar = write_tar(stage.url(f"shards/{name}"), f"shards/{name}", _members(rows, pool, so), so)
    index_name = name.removesuffix(".tar") + ".parquet"
    index = write_index(
        shard_index(rows), stage.url(f"shards/{index_name}"), f"shards/{index_name}", so
    )
    return [tar, index]
