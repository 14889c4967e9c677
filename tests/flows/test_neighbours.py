"""What users of img2dataset, webdataset and open_clip expect: exact copies removed by default,
and the published shard URLs printed for them (so nobody globs version folders)."""

from __future__ import annotations

import dataclasses
import glob
import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.helpers import published_dir, run_cli
from tests.pool_factory import make_samples, write_tar

PARTITION = "2026-04-05"


@pytest.fixture
def reposted(tmp_path: Path, tiny_model: dict) -> Path:
    """Two shards; the second re-posts 5 photos of the first (same bytes, other uid and
    caption), as web crawls do."""
    first = make_samples(8, seed=1)
    again = [
        dataclasses.replace(s, key=f"re{i}", caption="Another caption for the same photo",
                            meta={"uid": f"{i:032x}"})
        for i, s in enumerate(first[:5])
    ]  # fmt: skip
    write_tar(tmp_path / "in" / PARTITION / "0.tar", first)
    write_tar(tmp_path / "in" / PARTITION / "1.tar", make_samples(3, seed=2) + again)
    cfg = {
        "dataset": "web",
        "output": str(tmp_path / "out"),
        "model": {**tiny_model, "precision": "fp32", "device": "cpu"},
        "pool": {"input": str(tmp_path / "in" / "{date}" / "*.tar")},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def test_exact_copies_are_removed_by_default(reposted: Path, capsys, prefect_harness) -> None:
    """Defect: dedup was off unless `pool.dedup` was present (every re-posted photo kept)."""
    run = ["run", "pool", "-c", reposted / "c.yaml", "--partition", PARTITION]
    assert run_cli(capsys, *run).status == 0
    final = reposted / "out" / "web" / "pool" / PARTITION
    samples = pl.read_parquet(published_dir(final) / "samples.parquet")
    dups = samples.filter(pl.col("status") == "duplicate")
    by_sha = samples.group_by("sha256").len().filter(pl.col("len") == 2)["sha256"]
    assert dups.height == 5 and set(dups["sha256"]) == set(by_sha)
    assert set(dups["error"]) == {"duplicate:exact"}
    survivors = samples.filter(pl.col("uid").is_in(dups["duplicate_of"].to_list()))
    assert set(survivors["status"]) <= {"kept", "filtered_clip", "filtered_text"}
    card = (final / "README.md").read_text()
    assert "- dedup: exact (same image bytes) within this partition" in card

    off = [*run, "--set", "pool.dedup=false"]
    assert run_cli(capsys, *off).status == 0
    samples = pl.read_parquet(published_dir(final) / "samples.parquet")
    assert samples.filter(pl.col("status") == "duplicate").height == 0
    assert "- dedup: off" in (final / "README.md").read_text()


def test_urls_prints_the_published_shards_only(reposted: Path, capsys, prefect_harness) -> None:
    """Users of img2dataset/webdataset globbed `pool/*/v-*/shards/*.tar` and read the
    replaced version's shards too; `curate urls` prints the published ones."""
    run = ["run", "pool", "-c", reposted / "c.yaml", "--partition", PARTITION]
    assert run_cli(capsys, *run).status == 0
    assert run_cli(capsys, *run, "--force").status == 0  # a new version; the old one is kept
    dataset = reposted / "out" / "web"
    final = dataset / "pool" / PARTITION
    manifest = json.loads((final / "manifest.json").read_text())
    listed = sorted(
        str(final / o["path"]) for o in manifest["outputs"] if o["path"].endswith(".tar")
    )
    globbed = sorted(glob.glob(str(dataset / "pool" / "*" / "v-*" / "shards" / "*.tar")))
    assert len(globbed) > len(listed) > 0  # the glob reads the replaced version too
    result = run_cli(capsys, "urls", dataset)
    assert result.status == 0 and result.out.splitlines() == listed
    sizes = json.loads((published_dir(final) / "shards" / "sizes.json").read_text())
    assert result.line == f"{len(listed)} shards, {sum(sizes.values())} samples in 1 partitions"
    result = run_cli(capsys, "urls", dataset, "--sep", "::")
    assert result.out.strip() == "::".join(listed)  # open_clip's --train-data list form
    result = run_cli(capsys, "urls", dataset, "--flow", "video")
    assert result.status == 3 and result.line.startswith("curate: no published video shards")
