"""Nights that read earlier nights (running counts, dataset-scope dedup) publish the in-order
result whatever order or parallelism the dates ran in (issue 25)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from flows.backfill import backfill
from flows.pool import run_pool
from schemas.config import parse_config
from tasks.publish.catalog import flow_folder, read_catalog
from tasks.publish.manifest import read_published
from tests.pool_factory import PoolSample, make_image, write_tar

META = ["dog", "beach", "car", "park", "children", "mountains", "ramen", "kitchen"]
DAY1 = [
    "a dog on the beach",
    "a dog in the park",
    "a red car",
    "a car near the park",
    "children with a dog",
    "ramen in a kitchen",
    "a dog and a car",
    "mountains at dawn",
]
DAY2 = [
    "a dog running",
    "a dog on a beach",
    "a car",
    "children in the park",
    "a car and a dog",
    "mountains and a beach",
    "ramen bowl",
    "a kitchen table",
]
DATES = ["2026-05-01", "2026-05-02"]


def write_day(root: Path, date: str, captions: list[str], offset: int) -> None:
    folder = root / "in" / date
    folder.mkdir(parents=True, exist_ok=True)
    samples = [
        PoolSample(
            f"{i:06d}", make_image(seed=offset + i), caption=c, meta={"uid": f"u{offset + i}"}
        )
        for i, c in enumerate(captions)
    ]
    write_tar(folder / "00000.tar", samples)


def config(root: Path, tiny_model: dict, name: str, **pool: object) -> object:
    meta = root / "metadata.json"
    meta.write_text(json.dumps(META))
    return parse_config(
        {
            "dataset": name,
            "output": str(root / "out"),
            "cache": str(
                root / "cache"
            ),  # one score cache for every output: each shard scored once
            "model": {**tiny_model, "precision": "fp32", "batch_size": 8},
            "pool": {
                "input": str(root / "in" / "{date}" / "*.tar"),
                "text_filter": {"enabled": False},
                "balance": {"metadata": str(meta), "t": 1, "seed": 0, "running_counts": True},
                **pool,
            },
        }
    )


def published(cfg: object, date: str) -> pl.DataFrame:
    found = read_published(f"{cfg.output}/{cfg.dataset}/pool/{date}")
    assert found is not None, date
    df = pl.read_parquet(found.url("samples.parquet"))
    return df.select("uid", pl.col("status").cast(pl.String), "keep_prob", "entry_ids")


@pytest.fixture
def two_days(tmp_path: Path) -> Path:
    write_day(tmp_path, DATES[0], DAY1, 0)
    write_day(tmp_path, DATES[1], DAY2, 100)
    return tmp_path


def expected_day2(day1: pl.DataFrame, day2: pl.DataFrame) -> list[float]:
    """keep_prob of day 2 by hand: t = 1 over the summed candidate counts of both days."""
    ids = pl.concat([day1, day2])["entry_ids"].explode().drop_nulls().to_numpy()
    counts = np.bincount(ids.astype(np.int64), minlength=len(META))
    out = []
    for row in day2.iter_rows(named=True):
        miss = 1.0
        for e in row["entry_ids"]:
            miss *= 1 - 1 / max(int(counts[e]), 1)
        out.append(1 - miss if row["entry_ids"] else 0.0)
    return out


def test_in_order_balances_day2_against_day1(two_days, tiny_model, prefect_harness):
    cfg = config(two_days, tiny_model, "inorder")
    for d in DATES:
        run_pool(cfg, d)
    day1, day2 = published(cfg, DATES[0]), published(cfg, DATES[1])
    assert day2["keep_prob"].to_list() == pytest.approx(expected_day2(day1, day2), abs=1e-12)
    assert 0 < (day2["status"] == "kept").sum() < len(DAY2)  # balancing bit: a real check


def test_out_of_order_then_backfill_is_the_in_order_result(two_days, tiny_model, prefect_harness):
    """Defect: 02 published before 01 kept its stale keep_prob 1.0 forever: its run key did
    not name the history it read, so the backfill "to refresh" skipped it."""
    ref = config(two_days, tiny_model, "ref")
    for d in DATES:
        run_pool(ref, d)
    cfg = config(two_days, tiny_model, "reverse")
    run_pool(cfg, DATES[1])
    run_pool(cfg, DATES[0])
    cat = read_catalog(flow_folder(cfg.output, cfg.dataset, "pool"))
    assert cat.stale(DATES[1]) and not cat.stale(DATES[0])  # shown by `curate ls`
    rows = backfill(cfg, "pool", DATES[0], DATES[1], mode="local")
    assert [r.status for r in rows] == ["skipped", "ran"]
    for d in DATES:
        assert published(cfg, d).equals(published(ref, d)), d
    assert not read_catalog(flow_folder(cfg.output, cfg.dataset, "pool")).stale(DATES[1])


def test_a_later_run_brings_stale_earlier_dates_up_to_date(two_days, tiny_model, prefect_harness):
    """The nightly run of 03 finds 02 stale (01 was published after it) and re-runs it first."""
    write_day(two_days, "2026-05-03", DAY1[:4], 200)
    ref = config(two_days, tiny_model, "ref3")
    for d in [*DATES, "2026-05-03"]:
        run_pool(ref, d)
    cfg = config(two_days, tiny_model, "nightly")
    run_pool(cfg, DATES[1])
    run_pool(cfg, DATES[0])
    run_pool(cfg, "2026-05-03")
    for d in [*DATES, "2026-05-03"]:
        assert published(cfg, d).equals(published(ref, d)), d


@pytest.mark.parametrize("parallel", [2, 3])
def test_parallel_backfill_from_empty_is_the_in_order_result(
    two_days, tiny_model, prefect_harness, parallel
):
    """Defect: --max-parallel ran both dates at once; neither saw the other."""
    ref = config(two_days, tiny_model, "ref")
    for d in DATES:
        run_pool(ref, d)
    cfg = config(two_days, tiny_model, f"par{parallel}")
    rows = backfill(cfg, "pool", DATES[0], DATES[1], max_parallel=parallel, mode="local")
    assert [r.status for r in rows] == ["ran", "ran"]
    for d in DATES:
        assert published(cfg, d).equals(published(ref, d)), d


# --- the property: random small histories, random orders -----------------------------------


def random_history(root: Path, seed: int) -> list[str]:
    """3-5 dates of 4-7 captions drawn from the metadata words, with repeated images
    (exact copies across dates) so dataset-scope dedup has work to do."""
    rng = random.Random(seed)
    dates = [f"2026-06-{d:02d}" for d in range(1, rng.randint(3, 5) + 1)]
    images = [make_image(seed=1000 + i) for i in range(6)]  # a few images reappear
    for n, date in enumerate(dates):
        samples = []
        for i in range(rng.randint(4, 7)):
            words = rng.sample(META, rng.randint(1, 2))
            image = images[rng.randrange(len(images))] if rng.random() < 0.3 else None
            samples.append(
                PoolSample(
                    f"{i:06d}",
                    image if image is not None else make_image(seed=seed * 100 + n * 10 + i),
                    caption="a photo of " + " and ".join(words),
                    meta={"uid": f"s{seed}d{n}i{i}"},
                )
            )
        folder = root / "in" / date
        folder.mkdir(parents=True)
        write_tar(folder / "00000.tar", samples)
    return dates


@pytest.mark.parametrize("seed", [11, 12])
def test_property_any_order_then_backfill_equals_in_order(
    tmp_path, tiny_model, prefect_harness, seed
):
    dates = random_history(tmp_path, seed)
    extra = {"dedup": {"exact": True, "scope": "dataset"}}
    ref = config(tmp_path, tiny_model, "ref", **extra)
    for d in dates:
        run_pool(ref, d)
    shuffled = config(tmp_path, tiny_model, "shuffled", **extra)
    order = dates[:]
    random.Random(seed).shuffle(order)
    for d in order:
        run_pool(shuffled, d)
    backfill(shuffled, "pool", dates[0], dates[-1], mode="local")
    parallel = config(tmp_path, tiny_model, "parallel", **extra)
    backfill(parallel, "pool", dates[0], dates[-1], max_parallel=3, mode="local")
    for d in dates:
        want = published(ref, d)
        assert published(shuffled, d).equals(want), (order, d)
        assert published(parallel, d).equals(want), d


def test_republishing_an_earlier_date_invalidates_later_running_totals(
    two_days, tiny_model, prefect_harness
):
    """Each night reads the previous night's running total; after 01 is re-published with
    other inputs, 02's total is stale: the next night re-runs 02 first and reads the new one,
    so 03 balances against the new 01 + 02 (as a history published in order would)."""
    write_day(two_days, "2026-05-03", DAY1[:4], 200)
    dates = [*DATES, "2026-05-03"]
    cfg = config(two_days, tiny_model, "republish")
    for d in dates:
        run_pool(cfg, d)
    write_day(two_days, DATES[0], DAY2[:3], 300)  # 01's inputs change
    run_pool(cfg, DATES[0])
    cat = read_catalog(flow_folder(cfg.output, cfg.dataset, "pool"))
    assert [n for n in dates if cat.stale(n)] == dates[1:]  # both read history with the old 01
    write_day(two_days, "2026-05-04", DAY2[3:], 400)
    run_pool(cfg, "2026-05-04")  # brings 02 and 03 up to date first
    ref = config(two_days, tiny_model, "republish-ref")
    for d in [*dates, "2026-05-04"]:
        run_pool(ref, d)
    for d in [*dates, "2026-05-04"]:
        assert published(cfg, d).equals(published(ref, d)), d


def test_an_earlier_date_committed_during_a_run_is_not_ignored(
    two_days, tiny_model, prefect_harness, monkeypatch
):
    """A nightly run of 02 and a backfill of 01 at once: 01 commits while 02 is selecting.
    02's commit is refused (its history changed), it selects again, and publishes the
    in-order result."""
    import threading

    import flows.pool as pool_flow

    ref = config(two_days, tiny_model, "conc-ref")
    for d in DATES:
        run_pool(ref, d)
    cfg = config(two_days, tiny_model, "conc")
    real = pool_flow.select
    calls = []

    def select_then_publish_01(*args, **kwargs):
        out = real(*args, **kwargs)
        if not calls:  # the first selection of 02: 01 gets published meanwhile
            calls.append(1)
            t = threading.Thread(target=run_pool, args=(cfg, DATES[0]))
            t.start()
            t.join()
        return out

    monkeypatch.setattr(pool_flow, "select", select_then_publish_01)
    run_pool(cfg, DATES[1])
    monkeypatch.undo()
    assert len(calls) == 1
    for d in DATES:
        assert published(cfg, d).equals(published(ref, d)), d
