"""The pool flow end to end on generated pools: layout, counts, idempotence, no re-scoring."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from flows.pool import run_pool
from schemas.config import parse_config
from tasks.verify import verify_partition
from tests.helpers import published_dir
from tests.pool_factory import (
    broken_pool,
    make_samples,
    truncate_file,
    write_empty,
    write_parquet_pool,
    write_tar,
)

PARTITION = "2026-01-02"


def make_config(tmp_path: Path, tiny_model: dict, **pool) -> dict:
    return {
        "dataset": "t",
        "output": str(tmp_path / "out"),
        "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 8},
        "pool": {"input": str(tmp_path / "in" / "*.tar"), "shard": {"max_samples": 10}, **pool},
    }


@pytest.fixture
def pool_dir(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    write_tar(d / "00000.tar", make_samples(12, seed=1))
    # keys reused across shards, plus one uid duplicated from shard 0
    dup = make_samples(9, seed=2)
    dup[0].meta = dict(make_samples(1, seed=1)[0].meta)
    write_tar(d / "00001.tar", dup)
    broken_pool(d / "00002.tar")
    write_empty(d / "00003.tar")
    cut = write_tar(d / "00004.tar", make_samples(6, seed=4))
    truncate_file(cut, cut.stat().st_size * 2 // 3)  # an upload cut off mid-way
    return d


def partition_dir(tmp_path: Path) -> Path:
    return tmp_path / "out" / "t" / "pool" / PARTITION


def test_end_to_end(tmp_path, tiny_model, pool_dir, prefect_harness):
    import webdataset as wds

    cfg = parse_config(make_config(tmp_path, tiny_model, clip_filter={"top_fraction": 0.5}))
    result = run_pool(cfg, PARTITION)
    assert result["status"] == "published"
    final = partition_dir(tmp_path)
    assert (final / "manifest.json").exists() and (final / "_SUCCESS").exists()
    part = published_dir(final)  # the version folder the manifest points at
    for name in (
        "samples.parquet",
        "stats.json",
        "report.md",
        "shards/sizes.json",
        "shards/000000.tar",
        "shards/000000.parquet",
    ):
        assert (part / name).exists(), name
    assert verify_partition(str(final)) == []

    samples = pl.read_parquet(part / "samples.parquet")
    stats = json.loads((part / "stats.json").read_text())
    counts = stats["counts"]
    statuses = [
        "kept",
        "filtered_text",
        "filtered_clip",
        "filtered_balance",
        "duplicate",
        "quarantined",
    ]
    assert counts["input"] == samples.height == sum(counts[s] for s in statuses)
    assert counts["duplicate"] == 1 and counts["quarantined"] >= 8
    assert samples.filter(pl.col("status") != "kept")["error"].null_count() == 0
    assert stats["reasons"].get("truncated_tar") == 1
    assert stats["shards"] == {
        "input": 5,
        "unreadable": 0,
        "empty": 1,
        "scored": 5,
        "cached": 0,
        "output": len(json.loads((part / "shards/sizes.json").read_text())),
    }

    # the webdataset library reads what we published; keys unique, members complete
    tars = sorted(str(p) for p in (part / "shards").glob("*.tar"))
    read = list(wds.WebDataset(tars, shardshuffle=False, empty_check=False))
    kept = samples.filter(pl.col("status") == "kept")
    assert [s["__key__"] for s in read] == kept["out_key"].to_list()
    for s, row in zip(read, kept.iter_rows(named=True), strict=True):
        assert s["txt"].decode() == row["caption"]
        assert json.loads(s["json"])["uid"] == row["uid"]
        assert "jpg" in s or "png" in s or "webp" in s
    sizes = json.loads((part / "shards/sizes.json").read_text())
    assert sum(sizes.values()) == counts["kept"]


def test_rerun_recomputes_nothing_and_threshold_change_skips_clip(
    tmp_path, tiny_model, pool_dir, prefect_harness, monkeypatch
):
    cfg = parse_config(make_config(tmp_path, tiny_model, clip_filter={"threshold": 0.0}))
    first = run_pool(cfg, PARTITION)
    part = published_dir(partition_dir(tmp_path))
    before = (part / "samples.parquet").read_bytes()
    tar_bytes = {p.name: p.read_bytes() for p in (part / "shards").glob("*.tar")}

    def no_model(*a, **k):
        raise AssertionError("CLIP ran again")

    monkeypatch.setattr("tasks.pool.score.load_model", no_model)
    again = run_pool(cfg, PARTITION)
    assert first["status"] == "published" and again["status"] == "skipped"
    assert (part / "samples.parquet").read_bytes() == before

    # --force republishes the same samples (scores from the cache? no: force re-scores)
    monkeypatch.undo()
    forced = run_pool(cfg, PARTITION, force=True)
    assert forced["status"] == "published"
    part = published_dir(partition_dir(tmp_path))  # a new version
    assert pl.read_parquet(part / "samples.parquet").equals(pl.read_parquet(io.BytesIO(before)))
    assert {p.name: p.read_bytes() for p in (part / "shards").glob("*.tar")} == tar_bytes

    # a threshold change re-runs select + publish only
    monkeypatch.setattr("tasks.pool.score.load_model", no_model)
    cfg2 = parse_config(make_config(tmp_path, tiny_model, clip_filter={"threshold": 0.05}))
    changed = run_pool(cfg2, PARTITION)
    assert changed["status"] == "published"
    part = published_dir(partition_dir(tmp_path))
    stats = json.loads((part / "stats.json").read_text())
    assert stats["shards"]["cached"] == 5 and stats["shards"]["scored"] == 0


def test_bad_config_exits_with_one_line(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"dataset": "x", "pool": {"input": "x", "clip_filtr": {}}}))
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "pool", "-c", str(cfg)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pool.clip_filtr" in lines[0] and "unknown key" in lines[0]


def test_unreadable_input_root_exits_with_one_line(tmp_path, tiny_model):
    cfg = make_config(tmp_path, tiny_model)
    cfg["pool"]["input"] = str(tmp_path / "nowhere" / "*.tar")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "pool", "-c", str(path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no input files match" in lines[0]


def test_every_image_format_the_readers_accept_publishes_and_verifies(
    tmp_path, tiny_model, prefect_harness
):
    """Defect: verify allowed only jpg/png/webp although the readers take jpeg, gif, bmp,
    tiff...; and a parquet image whose format was not sniffed was written as `.jpg` in the
    tar but left null in the index. Now every published member carries the extension of
    its decoded format, the index agrees, and formats no reader would know are quarantined."""
    d = tmp_path / "in"
    fmts = ["jpg", "jpeg", "png", "gif", "bmp", "tiff", "webp"]
    tar_samples = [
        s for i, f in enumerate(fmts) for s in make_samples(1, prefix=f, fmt=f, seed=i + 1)
    ]
    write_tar(d / "00000.tar", tar_samples)
    pq_samples = make_samples(2, fmt="png", seed=20) + make_samples(1, fmt="ppm", seed=21)
    write_parquet_pool(d / "00001.parquet", pq_samples)
    cfg = make_config(tmp_path, tiny_model, text_filter={"enabled": False})
    cfg["pool"]["input"] = [str(d / "*.tar"), str(d / "*.parquet")]
    assert run_pool(parse_config(cfg), PARTITION)["status"] == "published"
    final = partition_dir(tmp_path)
    assert verify_partition(str(final)) == []
    samples = pl.read_parquet(published_dir(final) / "samples.parquet")
    kept = samples.filter(pl.col("status") == "kept")
    assert sorted(kept["image_ext"].to_list()) == sorted([*fmts, "png", "png"])
    [ppm] = samples.filter(pl.col("status") == "quarantined").iter_rows(named=True)
    assert (ppm["error"], ppm["error_detail"]) == ("unsupported_image_format", "PPM")


def test_img2dataset_layout_quarantines_failed_downloads_with_their_error(
    tmp_path, tiny_model, prefect_harness
):
    """img2dataset's WebDataset output: the tar holds the successes; the parquet beside it
    lists every URL with status and error_message; `_stats.json` is a report. Only the tar
    is a shard, and the failures count as quarantined inputs with img2dataset's error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "in"
    ok = make_samples(4, seed=31)
    for s in ok:
        s.meta = {**s.meta, "status": "success", "error_message": None, "key": s.key}
    write_tar(d / "00000.tar", ok)
    rows = [{"key": s.key, "status": "success", "error_message": None, "url": "u"} for s in ok]
    rows += [
        {"key": "000000004", "status": "failed_to_download", "error_message": "HTTP Error 404"},
        {"key": "000000005", "status": "failed_to_resize", "error_message": "cannot identify"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), d / "00000.parquet")
    (d / "00000_stats.json").write_text('{"count": 6}')
    cfg = make_config(tmp_path, tiny_model, text_filter={"enabled": False})
    cfg["pool"]["input"] = str(d / "*")
    assert run_pool(parse_config(cfg), PARTITION)["status"] == "published"
    final = partition_dir(tmp_path)
    assert verify_partition(str(final)) == []
    stats = json.loads((published_dir(final) / "stats.json").read_text())
    assert stats["shards"]["input"] == 1 and stats["counts"]["input"] == 6
    samples = pl.read_parquet(published_dir(final) / "samples.parquet")
    failed = samples.filter(pl.col("error") == "download_failed")
    assert failed["key"].to_list() == ["000000004", "000000005"]
    assert failed["error_detail"].to_list() == [
        "failed_to_download: HTTP Error 404",
        "failed_to_resize: cannot identify",
    ]
    assert set(failed["status"].cast(pl.String)) == {"quarantined"}
