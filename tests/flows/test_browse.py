"""`ls`, `verify`, `report` and `export` recognise what they were pointed at (an output root,
a dataset, a flow, a partition, a version folder, a typo) and do the right thing with it or
say what to pass; finding nothing published is an error, never an empty table."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml

import clip_curate as cc
from tests.helpers import published_dir, run_cli

PARTITION = "2026-01-01"


@pytest.fixture(scope="module")
def video_only(demo: Path, tmp_path_factory, prefect_harness) -> Path:
    """The demo's videos published as a dataset of their own (no pool flow in it)."""
    from flows.video import run_video
    from schemas.config import load_config

    out = tmp_path_factory.mktemp("video-only")
    cfg = load_config(demo / "demo.yaml", [f"output={out}", "dataset=fleet", "pool=null"])
    assert run_video(cfg, PARTITION)["status"] == "published"
    return out / "fleet"


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()[1:]]


def test_ls_of_each_kind_of_folder(demo: Path, capsys) -> None:
    """Defect: `ls` of a typo, of the output root or of a partition folder printed an
    empty table and exited 0."""
    root = demo / "curated"
    dataset = root / "demo"
    result = run_cli(capsys, "ls", dataset)  # (the first-hour test may add a video row)
    assert result.status == 0
    assert [r[:2] for r in rows(result.out) if r[0] == "pool"] == [["pool", PARTITION]]
    for narrower in (dataset / "pool", dataset / "pool" / PARTITION):
        result = run_cli(capsys, "ls", narrower)
        assert result.status == 0 and [r[:2] for r in rows(result.out)] == [["pool", PARTITION]]
    version = published_dir(dataset / "pool" / PARTITION)
    assert run_cli(capsys, "ls", version).status == 0
    result = run_cli(capsys, "ls", root)
    assert result.status == 2
    assert result.line == (
        f"curate: {root} is an output root holding datasets demo: pass one of them, "
        f"e.g. `curate ls {root}/demo`"
    )
    result = run_cli(capsys, "ls", root / "dmeo")
    assert result.status == 3 and result.line.startswith(f"curate: nothing at {root}/dmeo")
    result = run_cli(capsys, "ls", demo)  # the demo's work folder: inputs, not output
    assert result.status == 2 and "is not curated output" in result.line
    result = run_cli(capsys, "ls", dataset, "--start", "2030-01-01")
    assert result.status == 3
    assert result.line == f"curate: no published partitions in {dataset} from 2030-01-01 on"


def test_verify_and_report_of_each_kind_of_folder(demo: Path, capsys) -> None:
    """Defect: `verify` of a dataset folder failed with "no _SUCCESS"."""
    dataset = demo / "curated" / "demo"
    partition = dataset / "pool" / PARTITION
    result = run_cli(capsys, "verify", dataset)
    assert result.status == 0
    assert f"OK {partition}" in result.out.splitlines()
    version = published_dir(partition)
    for command in ("verify", "report"):
        result = run_cli(capsys, command, version)
        assert result.status == 2
        assert result.line.startswith(f"curate: {version} is a version folder: pass its partition")
    result = run_cli(capsys, "report", dataset)
    assert result.status == 2
    # the example is the latest published partition: the video one once the first-hour test ran
    assert any(
        f"e.g. `curate report {dataset / f / PARTITION}`" in result.line for f in ("pool", "video")
    )


def test_verify_of_a_dataset_checks_its_catalog_and_repair_rebuilds_it(
    demo: Path, tmp_path: Path, capsys
) -> None:
    """`verify DATASET` checks every partition and the dataset's catalogs (main's
    `verify_dataset`); a catalog that lost its entry is reported (exit 1), not taken for
    "nothing published", and `--repair` rebuilds it from the manifests."""
    import json

    dataset = tmp_path / "demo"
    shutil.copytree(demo / "curated" / "demo", dataset)
    catalog = dataset / "pool" / "_catalog.json"
    doc = json.loads(catalog.read_text())
    assert PARTITION in doc["partitions"]
    del doc["partitions"][PARTITION]
    catalog.write_text(json.dumps(doc))
    result = run_cli(capsys, "verify", dataset)
    assert result.status == 1
    assert f"FAIL {dataset}: pool catalog: {PARTITION} is not published" in result.out
    assert "--repair" in result.out
    result = run_cli(capsys, "verify", dataset, "--repair")
    assert result.status == 0
    assert f"OK {dataset / 'pool' / PARTITION}" in result.out.splitlines()
    assert PARTITION in json.loads(catalog.read_text())["partitions"]


def test_report_names_the_precision_and_device_that_ran(demo: Path, capsys) -> None:
    """Defect: `report` showed `(fp32, auto)`, the configured device, not the one used."""
    result = run_cli(capsys, "report", demo / "curated" / "demo" / "pool" / PARTITION)
    model = next(line for line in result.out.splitlines() if line.startswith("model:"))
    assert "(fp32, cpu)" in model, model


def test_export_and_ls_of_a_video_only_dataset(video_only: Path, tmp_path: Path, capsys) -> None:
    """Defect: `export uids` of a video-only dataset, or of a range with no partitions, failed
    with `ColumnNotFoundError: unable to find column "status"`; `ls` counted ok videos as
    kept, not the published events."""
    out = tmp_path / "uids.parquet"
    result = run_cli(capsys, "export", "uids", video_only, "--out", out)
    assert result.status == 3 and not out.exists()
    assert result.line.startswith(f"curate: no published pool partitions in {video_only}")
    part = cc.open_dataset(str(video_only)).partitions("video")[0]
    events = pl.read_parquet(part.url("events.parquet")).height
    [row] = rows(run_cli(capsys, "ls", video_only).out)
    assert row[:4] == ["video", PARTITION, str(part.stats["counts"]["input"]), str(events)]
    assert cc.open_dataset(str(video_only)).samples("pool", status="kept").collect().height == 0


def test_export_of_a_partition_exports_that_partition(demo: Path, tmp_path, capsys) -> None:
    dataset = demo / "curated" / "demo"
    out = tmp_path / "uids.parquet"
    assert run_cli(capsys, "export", "uids", dataset / "pool" / PARTITION, "--out", out).status == 0
    kept = pl.read_parquet(published_dir(dataset / "pool" / PARTITION) / "samples.parquet")
    expected = sorted(kept.filter(pl.col("status") == "kept")["uid"].to_list())
    assert sorted(pl.read_parquet(out)["uid"].to_list()) == expected
    result = run_cli(capsys, "export", "uids", dataset, "--start", "2030-01-01", "--out", out)
    assert result.status == 3 and "from 2030-01-01 on (export writes" in result.line


def test_partitions_print_short(demo: Path) -> None:
    """Defect: printing `ds.partitions()` dumped whole manifests."""
    parts = cc.open_dataset(str(demo / "curated" / "demo")).partitions("pool")
    version = parts[0].version
    assert repr(parts) == f"[Partition('pool', '{PARTITION}', version='{version}')]"


def test_yaml_errors_say_where(tmp_path: Path, capsys) -> None:
    """Defect: a YAML error dropped PyYAML's line and column."""
    bad = tmp_path / "c.yaml"
    bad.write_text("dataset: x\npool:\n  input: [a, b\n  shard: 1\n")
    result = run_cli(capsys, "run", "pool", "-c", bad)
    assert result.status == 2
    assert result.line == (
        f"curate: config: {bad} is not valid YAML: line 4, column 8: expected ',' or ']', "
        "but got ':' (while parsing a flow sequence)"
    )


def test_a_folder_as_input_says_add_a_glob(demo: Path, tmp_path: Path, capsys) -> None:
    """Defect: a folder as `pool.input` said only "no input files match"."""
    folder = tmp_path / "shards"
    shutil.copytree(demo / "pool" / PARTITION, folder)
    cfg = yaml.safe_load((demo / "demo.yaml").read_text())
    cfg |= {"output": str(tmp_path / "out")}
    cfg["pool"]["input"] = str(folder)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    result = run_cli(capsys, "run", "pool", "-c", tmp_path / "c.yaml", "--partition", PARTITION)
    assert result.status == 3
    assert result.line.startswith(f"curate: InputError: pool.input: no input files match {folder}")
    assert f"({folder} is a folder: add a glob for its files, e.g. {folder}/*.tar)" in result.line
