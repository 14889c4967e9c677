"""Partition names are calendar dates `YYYY-MM-DD`, checked by every command before anything
is read; inputs without `{date}` are refused where many dates run (backfill, serve)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import run_cli


def test_check_date_hand_examples() -> None:
    from schemas.partition import PartitionError, check_date

    assert check_date("2024-02-29") == "2024-02-29"
    for bad, why in [
        ("2026-13-01", "not a calendar date (month must be in 1..12)"),
        ("2026-02-30", "not a calendar date (day is out of range for month)"),
        ("2025-02-29", "not a calendar date"),
        ("12/01/2026", "not a date written YYYY-MM-DD"),
        ("20260101", "not a date written YYYY-MM-DD"),  # ISO basic format: not a folder name
        ("2026-1-5", "not a date written YYYY-MM-DD"),
        ("2026-01-01/x", "not a date written YYYY-MM-DD"),
        ("", "not a date written YYYY-MM-DD"),
    ]:
        with pytest.raises(PartitionError, match=re.escape(why)):
            check_date(bad)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


def demo_args(demo: Path, out: Path) -> list[str]:
    return ["-c", str(demo / "demo.yaml"), "--set", f"output={out}"]


@pytest.mark.parametrize(
    ("partition", "line"),
    [
        ("2026-13-01", "'2026-13-01' is not a calendar date (month must be in 1..12)"),
        (
            "12/01/2026",
            "'12/01/2026' is not a date written YYYY-MM-DD (partitions are calendar dates, "
            "e.g. 2026-01-31)",
        ),
    ],
)
def test_run_refuses_a_partition_that_is_not_a_date(demo, out, capsys, partition, line) -> None:
    """Defect: both published (with an input without {date}); the second into nested folders
    pool/12/01/2026/ that `ls` and the API never list."""
    undated = f"pool.input={demo}/pool/2026-01-01/*.tar"
    args = ["run", "pool", *demo_args(demo, out), "--set", undated, "--partition", partition]
    result = run_cli(capsys, *args)
    assert (result.status, result.line) == (2, f"curate: --partition {line}")
    assert not out.exists()  # nothing written, not even a lock


def test_backfill_export_ls_nearmiss_check_their_dates(demo, out, tmp_path, capsys) -> None:
    """Defect: `export --start 2026-02-30` said "expected YYYY-MM-DD" (exit 1) for a
    well-formed date; `nearmiss --partition` was never checked."""
    dataset = demo / "curated" / "demo"
    dates = ["--start", "2026-02-30", "--end", "2026-03-01"]
    cases = [
        (["backfill", "pool", *demo_args(demo, out), *dates],
         "curate: --start '2026-02-30' is not a calendar date (day is out of range for month)"),
        (["export", "uids", dataset, "--start", "2026-02-30", "--out", tmp_path / "u.parquet"],
         "curate: --start '2026-02-30' is not a calendar date (day is out of range for month)"),
        (["ls", dataset, "--end", "2026-1-5"], "curate: --end '2026-1-5' is not a date written"),
        (["nearmiss", "fit", "--labels", demo / "labels.csv", *demo_args(demo, out),
          "--partition", "2026-13-01", "--out", tmp_path / "head.safetensors"],
         "curate: --partition '2026-13-01' is not a calendar date"),
    ]  # fmt: skip
    for args, starts in cases:
        result = run_cli(capsys, *args)
        assert result.status == 2 and result.line.startswith(starts), (args[0], result)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_deployment_run_checks_its_partition_too(demo, out) -> None:
    """Flow runs started from Prefect (a deployment's `partition` parameter) plan through
    the same check as the CLI."""
    from flows.pool import run_pool
    from schemas.config import load_config
    from schemas.partition import PartitionError

    cfg = load_config(demo / "demo.yaml", [f"output={out}"])
    with pytest.raises(PartitionError, match="not a date written YYYY-MM-DD"):
        run_pool(cfg, "12/01/2026")
    assert not out.exists()


def test_backfill_and_serve_refuse_an_input_without_date_run_warns(
    demo, out, capsys, caplog
) -> None:
    """Defect: every date of a backfill republished the same files (three partitions of the
    same samples, no warning), and serve scheduled that nightly."""
    args = [*demo_args(demo, out), "--set", f"pool.input={demo}/pool/2026-01-01/*.tar"]
    dates = ["--start", "2026-01-01", "--end", "2026-01-03"]
    result = run_cli(capsys, "backfill", "pool", *args, *dates)
    assert result.status == 2
    assert result.line.startswith("curate: config: backfill: pool.input ")
    assert "has no {date}: every partition would read the same files" in result.line
    result = run_cli(capsys, "serve", *args, "--prefect-yaml")
    assert result.status == 2 and result.line.startswith("curate: config: serve: pool.input ")
    assert not out.exists()

    result = run_cli(capsys, "run", "pool", *args, "--partition", "2026-01-01")
    assert result.status == 0 and '"status": "published"' in result.out
    warned = [r for r in caplog.records if "has no {date}" in r.getMessage()]
    assert [r.levelname for r in warned] == ["WARNING"]
