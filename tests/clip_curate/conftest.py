"""A small dataset published on three dates, shared by the consumer-side tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.pool import run_pool
from schemas.config import parse_config
from tests.pool_factory import make_samples, write_tar

DATES = ["2026-09-01", "2026-09-02", "2026-09-03"]


def pool_config(output: str, inputs: str, tiny_model: dict, so: dict | None = None) -> dict:
    return {
        "dataset": "consume",
        "output": output,
        "storage_options": so or {},
        "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 8},
        "pool": {
            "input": inputs,
            "clip_filter": {"top_fraction": 0.7},
            "shard": {"max_samples": 4},
        },
    }


def dated_inputs(root: Path) -> Path:
    for i, date in enumerate(DATES):
        samples = make_samples(6 + 3 * i, seed=40 + i)
        for s in samples:  # img2dataset's fields, to be passed through
            s.meta = {**s.meta, "original_width": 640 + i, "original_height": 480, "exif": "{}"}
        write_tar(root / date / "00000.tar", samples)
    return root


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_model, prefect_harness) -> Path:
    root = tmp_path_factory.mktemp("consume")
    dated_inputs(root / "in")
    cfg = parse_config(
        pool_config(str(root / "out"), str(root / "in" / "{date}" / "*.tar"), tiny_model)
    )
    for date in DATES:
        assert run_pool(cfg, date)["status"] == "published"
    return root / "out" / "consume"
