"""`curate export fiftyone`: the on-disk dataset holds every published row with its values
(checked against the published tables and the input bytes; loading it with FiftyOne itself
is in test_review_tools.py)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import polars as pl
import pytest

from flows.cli import main
from tests.flows.review_fleet import POOL_DAY, build_pool
from tests.helpers import published_dir


@pytest.fixture(scope="module")
def pool(tmp_path_factory, tiny_model, prefect_harness) -> Path:
    return build_pool(tmp_path_factory.mktemp("pool"), tiny_model)


def exported(dataset: Path, out: Path, flow: str) -> tuple[dict, list[dict]]:
    assert main(["export", "fiftyone", str(dataset), "--flow", flow, "--out", str(out)]) == 0
    meta = json.loads((out / flow / "metadata.json").read_text())
    return meta, json.loads((out / flow / "samples.json").read_text())["samples"]


def test_pool_export_keeps_every_row_its_image_and_its_fields(pool, tmp_path):
    meta, samples = exported(pool, tmp_path / "fo", "pool")
    table = pl.read_parquet(published_dir(pool / "pool" / POOL_DAY) / "samples.parquet")
    assert meta["media_type"] == "image" and len(samples) == table.height == 13
    statuses = set(table["status"].cast(pl.String))
    assert {"kept", "filtered_clip", "duplicate", "quarantined"} <= statuses
    with tarfile.open(pool.parent.parent / "in" / "00000.tar") as tar:
        source = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    for row, s in zip(table.iter_rows(named=True), samples, strict=True):
        assert s["uid"] == row["uid"] and s["caption"] == row["caption"]
        assert s["clip_score"] == row["clip_score"] and s["aesthetic"] == row["aesthetic"]
        assert (s["status"], s["reason"], s["reason_detail"]) == (
            str(row["status"]), row["error"], row["error_detail"])  # fmt: skip
        assert s["tags"][:2] == [str(row["status"]), POOL_DAY] and s["partition"] == POOL_DAY
        image = tmp_path / "fo" / "pool" / s["filepath"]
        assert image.read_bytes() == source[f"{row['key']}.jpg"]  # the input's bytes
        assert s["phash"] == (None if row["phash"] is None else f"{row['phash']:016x}")
    groups = {s["uid"]: s["dup_group"] for s in samples}
    copies = table.filter(pl.col("status") == "duplicate")
    assert copies.height == 2
    survivor = copies["duplicate_of"][0]
    assert {groups[u] for u in [*copies["uid"], survivor]} == {survivor}
    assert sum(g is not None for g in groups.values()) == 3
    assert meta["sample_fields"]["clip_score"].endswith("FloatField")
    assert meta["sample_fields"]["aesthetic"].endswith("FloatField")
