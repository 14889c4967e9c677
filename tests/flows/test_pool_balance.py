"""MetaCLIP balancing inside the pool flow: decisions independent of sharding and runner."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from flows.pool import run_pool
from schemas.config import parse_config
from tasks.publish.manifest import read_published
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


def candidate_counts(samples: pl.DataFrame, n_entries: int) -> np.ndarray:
    """Entry counts over the rows that reached balancing (kept or dropped by it), here."""
    reached = samples.filter(pl.col("status").cast(pl.String).is_in(["kept", "filtered_balance"]))
    ids = reached["entry_ids"].explode().drop_nulls().to_numpy().astype(np.int64)
    return np.bincount(ids, minlength=n_entries)


def expected_keep_prob(samples: pl.DataFrame, counts: np.ndarray, t: int) -> list[float | None]:
    out = []
    for row in samples.iter_rows(named=True):
        if row["status"] not in ("kept", "filtered_balance"):
            out.append(None)
            continue
        miss = 1.0
        for e in row["entry_ids"]:
            miss *= 1 - t / max(int(counts[e]), t)
        out.append(1 - miss if row["entry_ids"] else 0.0)
    return out


def test_running_counts_commit_with_their_partition(
    tmp_path, tiny_model, prefect_harness, monkeypatch
):
    """Defect: running counts were saved after the commit, so a crash between left a
    published partition whose counts were missing, and later nights balanced on history
    that silently lacked it. The counts are now a file of the partition's own version: a
    run that gets its manifest in place has its counts in place too."""
    import tasks.publish.commit as commit

    pool = samples(60)
    days = ["2026-03-01", "2026-03-02", "2026-03-03"]
    for i, day in enumerate(days):
        write_pool(tmp_path / "in" / day, 1, pool[i * 20 : (i + 1) * 20])
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps(WORDS))
    t = 3
    cfg = parse_config(
        {
            "dataset": "rc",
            "output": str(tmp_path / "out"),
            "model": {**tiny_model, "precision": "fp32", "batch_size": 8},
            "pool": {
                "input": str(tmp_path / "in" / "{date}" / "*.tar"),
                "text_filter": {"enabled": False},
                "balance": {"metadata": str(meta), "t": t, "seed": 1, "running_counts": True},
            },
        }
    )
    run_pool(cfg, days[0])

    def crash_after_the_pointer(*a, **k):  # the manifest has moved: the version is published
        raise OSError(5, "killed right after the commit")

    monkeypatch.setattr(commit, "prune", crash_after_the_pointer)
    with pytest.raises(OSError, match="killed right after the commit"):
        run_pool(cfg, days[1])
    monkeypatch.undo()
    run_pool(cfg, days[2])

    got = {}
    for day in days:
        published = read_published(str(tmp_path / "out" / "rc" / "pool" / day))
        assert published is not None and published.has("entry_counts.parquet")
        got[day] = pl.read_parquet(published.url("samples.parquet"))
    own = {day: candidate_counts(got[day], len(WORDS)) for day in days}
    # day 3 was balanced against days 1 and 2: the crashed run's counts were committed
    prior = own[days[0]] + own[days[1]]
    assert got[days[2]]["keep_prob"].to_list() == pytest.approx(
        expected_keep_prob(got[days[2]], prior + own[days[2]], t), abs=1e-12
    )
