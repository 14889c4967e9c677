"""The error policy end to end: broken infrastructure fails the run and caches nothing; a bad
sample (here a clip that cannot be cut) is a row with its reason and never fails the run."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import yaml

av = pytest.importorskip("av")  # PyAV before decord (see tests/video_factory.py)
import polars as pl  # noqa: E402

from flows.cli import main  # noqa: E402
from flows.video import run_video  # noqa: E402
from schemas.config import parse_config  # noqa: E402
from tasks.publish.manifest import read_manifest  # noqa: E402
from tasks.verify import verify_partition  # noqa: E402
from tests.helpers import published_dir  # noqa: E402
from tests.pool_factory import make_samples, write_tar  # noqa: E402
from tests.video_factory import make_truncated, make_video  # noqa: E402

PARTITION = "2026-06-07"


@pytest.fixture
def inputs(tmp_path: Path, tiny_model: dict) -> tuple[Path, dict]:
    """Two good videos and a cut one, a pool shard, and a private copy of the checkpoint."""
    (tmp_path / "videos").mkdir()
    a = make_video(tmp_path / "videos" / "a.mp4", duration_s=3.0, fps=10, size=(64, 48))
    make_video(tmp_path / "videos" / "b.mp4", duration_s=2.0, fps=10, size=(64, 48))
    make_truncated(a, tmp_path / "videos" / "cut.mp4", 0.5)
    write_tar(tmp_path / "pool" / "0.tar", make_samples(6, seed=3))
    ckpt = tmp_path / "weights.pt"
    shutil.copyfile(tiny_model["pretrained"], ckpt)
    cfg = {
        "dataset": "e",
        "output": str(tmp_path / "out"),
        "model": {**tiny_model, "pretrained": str(ckpt), "precision": "fp32", "device": "cpu"},
        "pool": {"input": str(tmp_path / "pool" / "*.tar")},
        "video": {
            "input": str(tmp_path / "videos" / "*.mp4"),
            "sample_fps": 4,
            "events": {"start": 0.0, "stop": 0.0},
        },
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path, cfg


@pytest.mark.parametrize("flow", ["video", "pool"])
def test_a_corrupt_checkpoint_fails_the_run_and_caches_nothing(
    flow, inputs, tiny_model, prefect_harness, capsys
):
    """Defect: the video stage caught the model's load error like a decode error, marked
    every video `decode_error`, cached that and published an all-quarantined partition."""
    root, _ = inputs
    good = (root / "weights.pt").read_bytes()
    (root / "weights.pt").write_bytes(b"not a checkpoint" * 64)
    args = ["run", flow, "-c", str(root / "c.yaml"), "--partition", PARTITION]
    assert main(args) != 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("curate: ") and "ModelLoadError" in last and "weights.pt" in last
    final = root / "out" / "e" / flow / PARTITION
    assert read_manifest(str(final)) is None
    assert list((root / "out" / "e" / "_cache").glob(f"{flow}-scores/*/done.json")) == []

    (root / "weights.pt").write_bytes(good)  # fixed: every video is scored for real
    assert main(args) == 0
    assert verify_partition(str(final)) == []
    if flow == "video":
        videos = pl.read_parquet(published_dir(final) / "videos.parquet")
        names = videos["video"].str.split("/").list.last()
        status = dict(zip(names, videos["status"].cast(pl.String), strict=True))
        assert status == {"a.mp4": "ok", "b.mp4": "ok", "cut.mp4": "recovered"}


def test_a_clip_that_cannot_be_cut_is_a_row_not_a_failed_run(inputs, prefect_harness, monkeypatch):
    """Defect: one event whose clip failed to cut failed the whole video run."""
    root, cfg = inputs
    # clips are cut in a decoding helper process: PyAV fails there for b.mp4
    op = "tests.isolation_ops:media_failing_for_b"
    monkeypatch.setattr("tasks.video.decoding.isolated.MEDIA_OP", op)
    result = run_video(parse_config(cfg), PARTITION)
    assert result["status"] == "published"
    final = root / "out" / "e" / "video" / PARTITION
    assert verify_partition(str(final)) == []
    events = pl.read_parquet(published_dir(final) / "events.parquet")
    bad = events.filter(pl.col("video").str.ends_with("b.mp4"))
    good = events.filter(~pl.col("video").str.ends_with("b.mp4"))  # a.mp4, cut.mp4 (recovered)
    assert bad.height >= 1 and good.height >= 1
    assert set(bad["status"].cast(pl.String)) == {"clip_error"}
    assert set(bad["error"]) == {"clip_error"} and bad["shard"].null_count() == bad.height
    assert set(good["status"].cast(pl.String)) == {"ok"} and good["shard"].null_count() == 0
    # the gate's figure counts the published events only (issue 25: it counted every event)
    stats = json.loads((published_dir(final) / "stats.json").read_text())
    assert stats["clips"] == good.height and stats["clip_errors"] == bad.height
    videos = pl.read_parquet(published_dir(final) / "videos.parquet")
    scored = pl.col("status").cast(pl.String).is_in(["ok", "recovered"])
    hours = videos.filter(scored)["duration_s"].sum() / 3600.0
    assert stats["events_per_hour"] == round(good.height / hours, 6)


class _Failed:
    """A Prefect state whose result raises `err` (what `retry_condition_fn` is given)."""

    def __init__(self, err: BaseException) -> None:
        self.err = err

    def result(self) -> None:
        raise self.err


def test_a_full_disk_is_not_retried_but_a_flaky_store_is():
    """Defect: every OSError was worth a task retry, so a full disk made each failing task
    wait 2 s and 10 s and fail twice more before the run could end."""
    from flows.common import is_transient
    from tasks.errors import StoreError

    assert not is_transient(None, None, _Failed(OSError(errno.ENOSPC, "No space left")))
    assert not is_transient(None, None, _Failed(OSError(errno.EDQUOT, "Disk quota exceeded")))
    assert is_transient(None, None, _Failed(StoreError(errno.EIO, "store s3://b kept failing")))
    assert is_transient(None, None, _Failed(ConnectionResetError()))
    assert not is_transient(None, None, _Failed(ValueError("a bug")))
