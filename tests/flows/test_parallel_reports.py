"""Reports under a parallel backfill: partitions with balancing publish at the same time, and a
report that fails costs the publish (one line) but never the scoring."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import yaml

from flows.cli import main
from tasks.publish.manifest import read_manifest
from tasks.verify import verify_partition
from tests.helpers import published_dir
from tests.pool_factory import PoolSample, make_image, write_tar

DATES = ["2026-05-01", "2026-05-02"]
WORDS = ["dog", "cat", "red car", "beach", "sunset", "tree"]
SIGNAL_S = 120.0  # how long a date waits for the other at the drawing barrier


def _pool(root: Path, date: str, n: int, seed: int) -> None:
    """Skewed captions, so balancing keeps some and drops some (a non-trivial rank plot)."""
    samples = []
    for i in range(n):
        a, b = WORDS[i % 2], WORDS[(i * seed) % len(WORDS)]
        samples.append(
            PoolSample(
                f"{i:09d}",
                make_image(seed=seed * 1000 + i),
                caption=f"a photo of a {a} and a {b} today",
                meta={"uid": f"{date}-{i:04d}"},
            )
        )
    write_tar(root / "in" / date / "00000.tar", samples)


def _config(root: Path, tiny_model: dict) -> Path:
    (root / "metadata.json").write_text(json.dumps(WORDS))
    cfg = {
        "dataset": "par",
        "output": str(root / "out"),
        "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 8},
        "pool": {
            "input": str(root / "in" / "{date}" / "*.tar"),
            "balance": {"metadata": str(root / "metadata.json"), "t": 2, "seed": 1},
        },
    }
    path = root / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_backfill_draws_balanced_partitions_at_once(
    tmp_path, tiny_model, prefect_harness, monkeypatch, capsys
):
    """Defect: `curate backfill --max-parallel 2` with balancing failed every date (mathtext
    ParseException drawing two rank plots at once, after all the scoring). The two dates meet
    at a barrier before drawing their rank plot, so both draw at the same moment; without
    the drawing lock this test failed 10 runs of 10."""
    import tasks.pool.report as pool_report

    for i, date in enumerate(DATES):
        _pool(tmp_path, date, 12, seed=3 + i)
    config = _config(tmp_path, tiny_model)
    barrier, real = threading.Barrier(2), pool_report.plot_entry_ranks
    met = []

    def together(*args, **kwargs):
        try:
            barrier.wait(SIGNAL_S)
            met.append(True)
        except threading.BrokenBarrierError:  # the other date is not drawing: draw alone
            met.append(False)
        return real(*args, **kwargs)

    monkeypatch.setattr(pool_report, "plot_entry_ranks", together)
    args = ["backfill", "pool", "-c", str(config), "--start", DATES[0], "--end", DATES[-1]]
    assert main([*args, "--max-parallel", "2", "--local"]) == 0, capsys.readouterr().err
    assert met == [True, True]  # they did draw at the same time
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines() if line[:2] == "20"] == ["ran", "ran"]
    for date in DATES:
        final = tmp_path / "out" / "par" / "pool" / date
        assert verify_partition(str(final)) == []
        assert (published_dir(final) / "plots" / "metaclip_rank_counts.png").stat().st_size > 0


def test_a_failed_report_is_one_line_and_costs_no_scoring(
    tmp_path, tiny_model, prefect_harness, monkeypatch, capsys
):
    """The report is part of the published version: a report that cannot be drawn fails the
    run with one line naming the figure, publishes nothing, and leaves every shard's scores
    cached, so the re-run publishes without scoring again. (Before, the line was
    `curate: ValueError: \\mathdefault{10^{1}}`: mathtext's message starts with a newline.)"""
    from matplotlib.figure import Figure

    _pool(tmp_path, DATES[0], 8, seed=5)
    config = _config(tmp_path, tiny_model)
    real = Figure.tight_layout

    def broken(self, *a, **k):
        raise ValueError("\n\\mathdefault{10^{1}}\n^\nParseFatalException: Unknown symbol")

    monkeypatch.setattr(Figure, "tight_layout", broken)
    args = ["run", "pool", "-c", str(config), "--partition", DATES[0]]
    assert main(args) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"curate: ReportError: report of {DATES[0]} not written (figure ")
    assert "plots/" in last and last.endswith("the scores stay cached: re-run to publish")
    final = tmp_path / "out" / "par" / "pool" / DATES[0]
    assert read_manifest(str(final)) is None  # nothing published
    assert len(list((tmp_path / "out" / "par" / "_cache").glob("pool-scores/*/done.json"))) == 1

    monkeypatch.setattr(Figure, "tight_layout", real)
    assert main(args) == 0
    stats = json.loads((published_dir(final) / "stats.json").read_text())
    assert stats["shards"]["cached"] == stats["shards"]["input"] == 1
    assert stats["shards"]["scored"] == 0
    assert verify_partition(str(final)) == []
