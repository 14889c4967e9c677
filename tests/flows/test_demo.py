"""`curate demo`: the bundled pool, a tiny model trained on it, the flow end to end."""

from __future__ import annotations

import polars as pl

from flows.demo import run_demo
from tests.helpers import published_dir


def test_demo_filters_mismatched_captions(tmp_path, prefect_harness, capsys):
    assert run_demo(str(tmp_path), train_steps=80) == 0
    out = capsys.readouterr().out
    final = tmp_path / "curated" / "demo" / "pool" / "2026-01-01"
    part = published_dir(final)
    assert f"report:          {part}/report.md" in out
    samples = pl.read_parquet(part / "samples.parquet")
    scored = samples.filter(pl.col("key").str.contains(r"^\d{6}$"))
    # the generator makes every third caption describe another picture
    mismatched = scored.filter(pl.col("key").cast(pl.Int64) % 3 == 2)
    matched = scored.filter(pl.col("key").cast(pl.Int64) % 3 != 2)
    assert matched["clip_score"].mean() > mismatched["clip_score"].mean() + 0.3
    assert (final / "_SUCCESS").exists()
