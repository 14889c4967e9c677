"""Progress you can see: the run's progress artifact reaches 100% for both flows."""

from __future__ import annotations

from pathlib import Path

import pytest

av = pytest.importorskip("av")  # PyAV before decord (see tests/video_factory.py)

from flows.pool import run_pool  # noqa: E402
from flows.progress import Progress, artifact_key  # noqa: E402
from flows.video import run_video  # noqa: E402
from schemas.config import parse_config  # noqa: E402
from tests.pool_factory import make_samples, write_tar  # noqa: E402
from tests.video_factory import make_video  # noqa: E402


def latest_progress(key: str) -> list[float]:
    """The value of the latest artifact under `key`, as a list for an exact comparison."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    assert arts, f"no artifact {key}"
    return [float(arts[0].data)]


def test_pool_and_video_runs_report_progress_to_100(tmp_path: Path, tiny_model, prefect_harness):
    for i in range(3):
        write_tar(tmp_path / "pool" / f"{i}.tar", make_samples(5, seed=i))
    (tmp_path / "videos").mkdir()
    for name in ("a", "b"):
        make_video(tmp_path / "videos" / f"{name}.mp4", duration_s=2.0, fps=10, size=(64, 48))
    cfg = parse_config(
        {
            "dataset": "prog",
            "output": str(tmp_path / "out"),
            "model": {**tiny_model, "precision": "fp32", "device": "cpu"},
            "pool": {"input": str(tmp_path / "pool" / "*.tar")},
            "video": {"input": str(tmp_path / "videos" / "*.mp4"), "sample_fps": 2},
        }
    )
    assert run_pool(cfg, "2026-08-01")["status"] == "published"
    assert latest_progress(artifact_key("pool", "prog")) == [100.0]
    assert run_video(cfg, "2026-08-01")["status"] == "published"
    assert latest_progress(artifact_key("video", "prog")) == [100.0]


def test_progress_counts_tasks_and_units_without_a_flow_run():
    progress = Progress("pool", "x", "2026-01-01", total=4, unit="samples")
    assert progress.artifact_id is None and progress.percent == 0.0
    for _ in range(3):
        progress.advance(10.0)
    assert progress.percent == 75.0 and progress.units == 30.0
    progress.advance(5.0)
    assert progress.percent == 100.0
    progress.close()
