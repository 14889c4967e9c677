"""MetaCLIP balancing inside the pool flow: decisions independent of sharding and runner."""

from __future__ import annotations

import json
import random
from pathlib import Path

import polars as pl
import pytest

from flows.pool import run_pool
from schemas.config import parse_config
from tests.helpers import published_dir
from tests.pool_factory import PoolSample, make_image, write_tar

WORDS = ["dog", "cat", "red car", "beach", "sunset", "tree", "city", "New York", "bike", "snow"]


def samples(n: int) -> list[PoolSample]:
    rng = random.Random(7)
    out = []
    for i in range(n):
        # skewed: "dog" and "cat" are frequent, the rest rare -> balancing drops some
        words = rng.choices(WORDS, weights=[30, 20, 3, 3, 2, 2, 2, 1, 1, 1], k=2)
        caption = f"a photo of {words[0]} and {words[1]} today"
        out.append(
            PoolSample(f"{i:06d}", make_image(seed=i), caption=caption, meta={"uid": f"uid{i:05d}"})
        )
    return out


def write_pool(folder: Path, parts: int, pool: list[PoolSample]) -> None:
    folder.mkdir(parents=True)
    size = -(-len(pool) // parts)
    for s in range(parts):
        write_tar(folder / f"{s:05d}.tar", pool[s * size : (s + 1) * size])


def run(tmp_path: Path, tiny_model: dict, name: str, parts: int, runner: str) -> pl.DataFrame:
    pool = samples(70)
    write_pool(tmp_path / name, parts, pool)
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps(WORDS))
    cfg = parse_config(
        {
            "dataset": name,
            "output": str(tmp_path / "out"),
            "model": {**tiny_model, "precision": "fp32", "batch_size": 8},
            "runner": {"kind": runner, "workers": 2},
            "pool": {
                "input": str(tmp_path / name / "*.tar"),
                "balance": {"metadata": str(meta), "t": 5, "seed": 3},
                "shard": {"max_samples": 16},
            },
        }
    )
    result = run_pool(cfg, "2026-03-01")
    return pl.read_parquet(published_dir(result["uri"]) / "samples.parquet")


@pytest.mark.parametrize("runner", ["threads", "processes"])
def test_balance_decisions_independent_of_sharding(tmp_path, tiny_model, prefect_harness, runner):
    one = run(tmp_path, tiny_model, "one", 1, "threads")
    seven = run(tmp_path, tiny_model, "seven", 7, runner)
    cols = ["uid", "status", "keep_prob", "entry_ids"]
    assert one.select(cols).equals(seven.select(cols))
    counts = one.group_by("status").len()
    assert set(counts["status"].cast(pl.String)) >= {"kept", "filtered_balance"}
    # independent check of keep_prob for one caption: 1 - prod(1 - t / max(count, t))
    ids = one["entry_ids"].explode().drop_nulls()
    count = ids.value_counts().rows()
    cnt = {int(e): int(n) for e, n in count}
    row = one.row(0, named=True)
    expected = 1.0
    for e in row["entry_ids"]:
        expected *= 1 - 5 / max(cnt[e], 5)
    assert row["keep_prob"] == pytest.approx(1 - expected, abs=1e-12)
