"""What every chaos case shares: generated inputs, configs, and what "the same partition" means.

Each case runs a partition under a fault and compares it with the same partition run without
one: the published files that carry samples (every `shards/*` file and every table) must be
byte-identical, as their sha256 in the two manifests say (after `verify_partition` checked the
bytes against those manifests). Reports, stats and cards hold timings and may differ.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tasks.publish.manifest import read_published
from tasks.verify import verify_partition
from tests.pool_factory import broken_pool, make_samples, write_tar

PARTITION = "2026-05-06"
N_SHARDS = 5


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder is a slow chaos case (`make chaos`, `make test-all`)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.chaos)


@pytest.fixture(scope="session")
def pool_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five input shards (one every kind of broken) in `{date}` folders: `in/PARTITION/*.tar`
    and an earlier date `in/2026-05-05/*.tar` holding copies of some of them (dedup)."""
    root = tmp_path_factory.mktemp("chaos-pool") / "in"
    day = root / PARTITION
    day.mkdir(parents=True)
    for i in range(N_SHARDS - 1):
        write_tar(day / f"{i:05d}.tar", make_samples(16, seed=100 + i))
    broken_pool(day / f"{N_SHARDS - 1:05d}.tar")
    earlier = root / "2026-05-05"
    earlier.mkdir()
    write_tar(earlier / "00000.tar", make_samples(10, seed=100) + make_samples(6, seed=7))
    return root


def pool_config(
    tiny_model: dict[str, str], inputs: str, output: str, so: dict[str, Any] | None = None, **pool
) -> dict[str, Any]:
    return {
        "dataset": "chaos",
        "output": output,
        "storage_options": so or {},
        "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 8},
        "pool": {
            "input": inputs,
            "clip_filter": {"top_fraction": 0.6},
            "shard": {"max_samples": 10},
            **pool,
        },
    }


def video_config(
    tiny_model: dict[str, str], inputs: str, output: str, so: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "dataset": "fleet",
        "output": output,
        "storage_options": so or {},
        "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 16},
        "video": {
            "input": inputs,
            "sample_fps": 4,
            "chunk_frames": 8,
            "events": {"start": 0.0, "stop": 0.0, "clip_before_s": 0.5, "clip_after_s": 0.5},
        },
    }


def published_digest(uri: str, so: dict[str, Any] | None = None) -> dict[str, str]:
    """{file: sha256} of a published partition's shards and tables, checked against its bytes."""
    assert verify_partition(uri, so) == []
    published = read_published(uri, so)
    assert published is not None
    prefix = f"{published.version}/"
    out = {}
    for o in published.outputs():
        name = str(o["path"]).removeprefix(prefix)
        if name.startswith("shards/") or name.endswith(".parquet"):
            out[name] = str(o["sha256"])
    assert any(n.endswith(".tar") for n in out), "a partition without shards proves nothing"
    return out


def api_env() -> dict[str, str]:
    """A subprocess's environment: this session's Prefect API (no server of its own)."""
    from prefect.settings import get_current_settings

    return {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}
