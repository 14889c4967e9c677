"""The consumer API on published partitions: tables, shard URLs, torch loading, exports,
dataset cards, and the tools trainers use (webdataset, Hugging Face datasets)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import clip_curate as cc
from flows.cli import main
from flows.pool import run_pool
from schemas.config import parse_config
from tests.clip_curate.conftest import DATES, dated_inputs, pool_config
from tests.helpers import ROOT

pytest_plugins = ["tests.s3_fixture"]


def test_partitions_from_an_older_release_read_together(published: Path, tmp_path) -> None:
    """A partition published before statuses were added (another enum, fewer columns)."""
    import shutil

    copy = tmp_path / "ds"
    shutil.copytree(published, copy)
    ds = cc.open_dataset(str(copy))
    first = ds.partitions("pool")[0]
    path = Path(first.url("samples.parquet"))
    old = pl.read_parquet(path).drop("sha256", "phash", "duplicate_of")
    old_status = pl.Enum(["kept", "filtered_text", "filtered_clip", "filtered_balance",
                          "duplicate", "quarantined"])  # fmt: skip
    old.with_columns(pl.col("status").cast(pl.String).cast(old_status)).write_parquet(path)
    got = ds.samples("pool").collect()
    assert got.height == sum(p.stats["counts"]["input"] for p in ds.partitions("pool"))
    assert got.filter(pl.col("partition") == first.name)["sha256"].null_count() == old.height
    assert set(got["status"].unique()) <= {
        "kept",
        "filtered_text",
        "filtered_clip",
        "duplicate",
        "quarantined",
        "filtered_balance",
    }


def kept_from_tables(ds: cc.Dataset) -> list[str]:
    return sorted(ds.samples("pool", status="kept").collect()["uid"].to_list())


def test_partitions_and_samples_follow_the_manifests(published: Path) -> None:
    ds = cc.open_dataset(str(published))
    parts = ds.partitions("pool")
    assert [p.name for p in parts] == DATES
    assert [p.name for p in ds.partitions("pool", start=DATES[1], end=DATES[2])] == DATES[1:]
    frames = [
        pl.read_parquet(p.url("samples.parquet")).with_columns(pl.lit(p.name).alias("partition"))
        for p in parts
    ]
    got = ds.samples("pool").collect()
    plain = [f.with_columns(pl.col("status").cast(pl.String)) for f in frames]
    assert got.equals(pl.concat(plain, how="diagonal_relaxed"))
    kept = ds.samples("pool", status="kept").collect()
    assert kept.height == sum(p.stats["counts"]["kept"] for p in parts) > 0
    # img2dataset's fields pass through: the allow-listed ones as columns
    assert set(got["original_width"].to_list()) == {640, 641, 642}
    assert got["original_height"].dtype == pl.Int64


def test_shard_urls_feed_webdataset_and_published_json_carries_source_fields(
    published: Path,
) -> None:
    import webdataset as wds

    ds = cc.open_dataset(str(published))
    urls = ds.shard_urls("pool")
    read = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert sorted(json.loads(s["json"])["uid"] for s in read) == kept_from_tables(ds)
    meta = json.loads(read[0]["json"])
    assert meta["original_height"] == 480 and meta["exif"] == "{}" and "clip_score" in meta


def test_torch_dataset_splits_workers_and_ranks_exactly_once(published: Path) -> None:
    from torch.utils.data import DataLoader

    ds = cc.open_dataset(str(published))
    seen: Counter[str] = Counter()
    for rank in range(2):
        data = ds.torch_dataset("pool", rank=rank, world_size=2, decode="bytes")
        loader = DataLoader(data, batch_size=None, num_workers=2)
        seen.update(item["uid"] for item in loader)
    assert sorted(seen) == kept_from_tables(ds) and set(seen.values()) == {1}


def test_torch_dataset_shuffles_reproducibly_by_seed_and_epoch(published: Path) -> None:
    ds = cc.open_dataset(str(published))

    def order(seed: int, epoch: int) -> list[str]:
        data = ds.torch_dataset("pool", shuffle=True, seed=seed, decode="bytes", buffer_size=4)
        data.set_epoch(epoch)
        return [item["uid"] for item in data]

    first = order(0, 0)
    assert first == order(0, 0) and sorted(first) == kept_from_tables(ds)
    assert order(0, 1) != first and order(1, 0) != first
    plain = ds.torch_dataset("pool")
    item = next(iter(plain))
    assert item["image"].mode == "RGB" and item["caption"] and item["json"]["uid"] == item["uid"]


def test_hugging_face_datasets_loads_a_partition_and_the_dataset(published: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = cc.open_dataset(str(published))
    part = ds.partitions("pool")[0]
    train = datasets.load_dataset(str(part.uri), split="train")
    kept = sorted(pl.read_parquet(part.url("samples.parquet")).filter(
        pl.col("status") == "kept")["uid"].to_list())  # fmt: skip
    assert sorted(row["json"]["uid"] for row in train) == kept
    row = train[0]
    image_col = next(c for c in ("jpg", "png", "webp") if c in row and row[c] is not None)
    assert row[image_col].size[0] > 0 and isinstance(row["txt"], str)
    everything = datasets.load_dataset(str(published), split="train")
    assert len(everything) == len(kept_from_tables(ds))


def test_datacomp_subset_round_trips(published: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "subset.npy"
    assert main(["export", "datacomp-subset", str(published), "--out", str(out)]) == 0
    subset = np.load(out, mmap_mode="r")
    assert subset.dtype == np.dtype("u8,u8")
    kept = kept_from_tables(cc.open_dataset(str(published)))
    assert len(subset) == len(kept)
    for uid in kept:  # how DataComp's resharder looks uids up
        key = np.array([(int(uid[:16], 16), int(uid[16:], 16))], np.dtype("u8,u8"))
        i = int(np.searchsorted(subset, key)[0])
        assert i < len(subset) and subset[i] == key[0]
    assert main(["export", "uids", str(published), "--out", str(tmp_path / "u.parquet")]) == 0
    assert sorted(pl.read_parquet(tmp_path / "u.parquet")["uid"]) == kept


def test_datacomp_subset_refuses_uids_that_are_not_128_bit_hex(tmp_path, capsys) -> None:
    from clip_curate.export import ExportError, datacomp_subset

    with pytest.raises(ExportError, match="not 128-bit hex"):
        datacomp_subset(["0123456789abcdef0123456789abcdef", "photo-17"])


def test_curate_ls_lists_partitions(published: Path, capsys) -> None:
    assert main(["ls", str(published)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:4] == ["flow", "partition", "input", "kept"]
    assert [line.split()[1] for line in lines[1:]] == DATES
    assert all(line.split()[0] == "pool" and " v-" in line for line in lines[1:])


def test_cards_name_the_published_versions(published: Path) -> None:
    ds = cc.open_dataset(str(published))
    part = ds.partitions("pool")[-1]
    card = (Path(part.uri) / "README.md").read_text()
    assert f"path: {part.version}/shards/*.tar" in card and "webdataset<=0.2.86" in card
    root = ds.card()
    for p in ds.partitions("pool"):
        assert f"pool/{p.name}/{p.version}/shards/*.tar" in root


def test_importing_clip_curate_stays_light() -> None:
    code = (
        "import sys, clip_curate\n"
        "print([m for m in ('prefect', 'torch', 'open_clip') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.s3
def test_everything_works_on_s3(s3, bucket, tmp_path, tiny_model, prefect_harness) -> None:
    inputs = dated_inputs(tmp_path / "in")
    s3.upload(str(inputs), f"{bucket}/in")
    so = s3.storage_options
    cfg = parse_config(pool_config(f"{bucket}/out", f"{bucket}/in/{{date}}/*.tar", tiny_model, so))
    for date in DATES[:2]:
        run_pool(cfg, date)
    ds = cc.open_dataset(f"{bucket}/out/consume", storage_options=so)
    assert [p.name for p in ds.partitions("pool")] == DATES[:2]
    kept = kept_from_tables(ds)
    assert all(u.startswith("s3://") for u in ds.shard_urls("pool"))
    got = sorted(item["uid"] for item in ds.torch_dataset("pool", decode="bytes"))
    assert got == kept and len(kept) > 0
