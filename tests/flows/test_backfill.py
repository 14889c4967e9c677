"""Backfill in process: date ranges, the bounded pool, and what a repeat or a change re-runs."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest
from pool_factory import make_samples, write_tar

from flows.backfill import Row, date_range, format_table, run_backfill, run_dates
from schemas.config import ConfigError, parse_config

DATES = ["2026-03-30", "2026-03-31", "2026-04-01"]  # across a month end
SIZES = [5, 7, 6]  # samples per date, so each partition's counts are its own


def test_date_range_hand_examples():
    assert date_range("2026-03-30", "2026-04-01") == DATES
    assert date_range("2024-02-28", "2024-03-01") == ["2024-02-28", "2024-02-29", "2024-03-01"]
    assert date_range("2026-01-05", "2026-01-05") == ["2026-01-05"]
    assert len(date_range("2025-01-01", "2025-12-31")) == 365
    assert len(date_range("2024-01-01", "2025-01-01", force_range=True)) == 367


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("2026-01-05", "2026-01-04", "is before --start"),
        ("2026-13-01", "2026-12-31", "YYYY-MM-DD"),
        ("yesterday", "2026-01-01", "YYYY-MM-DD"),
        ("2024-01-01", "2025-01-01", "more than 366"),
    ],
)
def test_date_range_rejects(start, end, message):
    with pytest.raises(ConfigError, match=message):
        date_range(start, end)


def test_run_dates_keeps_order_bounds_parallelism_and_turns_errors_into_rows():
    lock, running, peak, started = threading.Lock(), [0], [0], []

    def one(date: str) -> Row:
        with lock:
            started.append(date)
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        if date.endswith("3"):
            raise OSError("store unreachable\nsecond line")
        return Row(date, "ran", "input=1")

    dates = [f"2026-01-0{i}" for i in range(1, 8)]
    rows = run_dates(dates, one, max_parallel=2)
    assert [r.date for r in rows] == dates
    assert started[:2] == dates[:2] and sorted(started) == dates
    assert peak[0] == 2
    assert rows[2] == Row("2026-01-03", "failed", "OSError: store unreachable")
    assert [r.status for r in rows].count("ran") == 6
    assert run_dates(dates[:3], one, max_parallel=1)[0].status == "ran"


def test_format_table():
    table = format_table([Row("2026-01-01", "ran", "input=3 kept=2"), Row("2026-01-02", "failed")])
    assert table.splitlines() == [
        "date        status  detail",
        "2026-01-01  ran     input=3 kept=2",
        "2026-01-02  failed",
        "2 dates: 1 ran, 0 skipped, 1 failed",
    ]


def make_cfg(tmp_path: Path, tiny_model: dict, threshold: float):
    return parse_config(
        {
            "dataset": "bf",
            "output": str(tmp_path / "out"),
            "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 8},
            "pool": {
                "input": str(tmp_path / "in" / "{date}" / "*.tar"),
                "clip_filter": {"threshold": threshold},
            },
        }
    )


@pytest.fixture
def dated_pool(tmp_path: Path) -> Path:
    for i, (date, n) in enumerate(zip(DATES, SIZES, strict=True)):
        (tmp_path / "in" / date).mkdir(parents=True)
        write_tar(tmp_path / "in" / date / "00000.tar", make_samples(n, seed=10 + i))
    return tmp_path


def part(tmp_path: Path, date: str) -> Path:
    return tmp_path / "out" / "bf" / "pool" / date


def table_rows(out: str) -> dict[str, str]:
    """date -> status from the printed table."""
    return {line.split()[0]: line.split()[1] for line in out.splitlines() if line[:2] == "20"}


def test_backfill_publishes_then_skips_then_reselects_without_clip(
    dated_pool, tiny_model, prefect_harness, monkeypatch, capsys
):
    tmp_path = dated_pool
    cfg = make_cfg(tmp_path, tiny_model, threshold=-1.0)
    assert run_backfill(cfg, "pool", DATES[0], DATES[-1], max_parallel=2, mode="local") == 0
    assert table_rows(capsys.readouterr().out) == dict.fromkeys(DATES, "ran")
    first = {}
    for date, n in zip(DATES, SIZES, strict=True):
        assert (part(tmp_path, date) / "_SUCCESS").exists()
        samples = pl.read_parquet(part(tmp_path, date) / "samples.parquet")
        assert samples.height == n and set(samples["status"]) <= {"kept", "filtered_text"}
        first[date] = samples

    def no_clip(*args, **kwargs):
        raise AssertionError("CLIP ran")

    monkeypatch.setattr("tasks.pool.score.load_model", no_clip)
    assert run_backfill(cfg, "pool", DATES[0], DATES[-1], mode="local") == 0
    assert table_rows(capsys.readouterr().out) == dict.fromkeys(DATES, "skipped")
    for date in DATES:
        again = pl.read_parquet(part(tmp_path, date) / "samples.parquet")
        assert again.equals(first[date])

    # a threshold in the middle of the scores: select + publish again, scores from the cache
    scores = pl.concat(first.values()).filter(pl.col("status") == "kept")["clip_score"]
    thr = float(scores.median())
    changed = make_cfg(tmp_path, tiny_model, threshold=thr)
    assert run_backfill(changed, "pool", DATES[0], DATES[-1], mode="local") == 0
    assert table_rows(capsys.readouterr().out) == dict.fromkeys(DATES, "ran")
    for date in DATES:
        stats = json.loads((part(tmp_path, date) / "stats.json").read_text())
        assert stats["shards"]["cached"] == stats["shards"]["input"] == 1
        assert stats["shards"]["scored"] == 0
        now = pl.read_parquet(part(tmp_path, date) / "samples.parquet")
        assert now["clip_score"].to_list() == first[date]["clip_score"].to_list()
        was_kept = first[date].filter(pl.col("status") == "kept")
        expected = was_kept.filter(pl.col("clip_score") >= thr)["uid"].sort().to_list()
        assert now.filter(pl.col("status") == "kept")["uid"].sort().to_list() == expected


def test_backfill_force_reruns_and_missing_inputs_fail(
    dated_pool, tiny_model, prefect_harness, capsys
):
    tmp_path = dated_pool
    cfg = make_cfg(tmp_path, tiny_model, threshold=-1.0)
    assert run_backfill(cfg, "pool", DATES[0], DATES[0], mode="local") == 0
    assert run_backfill(cfg, "pool", DATES[0], DATES[0], force=True, mode="local") == 0
    stats = json.loads((part(tmp_path, DATES[0]) / "stats.json").read_text())
    assert stats["shards"]["scored"] == 1  # --force re-scored
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines() if line.startswith(DATES[0])] == [
        "ran",
        "ran",
    ]

    # 2026-04-02 has no inputs: its row fails with the reason, the others still run
    assert run_backfill(cfg, "pool", DATES[-1], "2026-04-02", mode="local") == 1
    lines = capsys.readouterr().out.splitlines()
    assert table_rows("\n".join(lines)) == {DATES[-1]: "ran", "2026-04-02": "failed"}
    failed = next(line for line in lines if line.startswith("2026-04-02"))
    assert "no input files match" in failed
    assert not part(tmp_path, "2026-04-02").exists()


def test_backfill_rejects_a_flow_without_its_section(tmp_path, tiny_model):
    cfg = make_cfg(tmp_path, tiny_model, threshold=0.0)
    with pytest.raises(ConfigError, match="'video' section"):
        run_backfill(cfg, "video", DATES[0], DATES[0], mode="local")
    with pytest.raises(ConfigError, match="max-parallel"):
        run_backfill(cfg, "pool", DATES[0], DATES[0], max_parallel=0, mode="local")


# -- server mode logic, without a server -----------------------------------------------------


@dataclass
class FakeRun:
    state: object
    name: str = "run"
    id: uuid.UUID = field(default_factory=uuid.uuid4)


def test_settle_key_reuses_only_finished_runs_that_still_match():
    from prefect.states import Completed, Failed, Running

    from flows.backfill_remote import settle_key

    runs: dict[str, FakeRun] = {}
    matches = [True]

    def settle():
        return settle_key("k", runs.get, lambda: matches[0])

    assert settle() == ("k", None)  # nothing yet: submit under the base key
    runs["k"] = FakeRun(Running())
    assert settle() == ("k", None)  # in flight: attach to it
    runs["k"] = FakeRun(Completed())
    assert settle() == ("k", runs["k"])  # done and still published as asked: reuse
    matches[0] = False  # partition replaced or removed since: a new attempt, derived key
    assert settle() == (f"k-after-{runs['k'].id.hex[:8]}", None)
    runs["k"] = FakeRun(Failed())
    after = f"k-after-{runs['k'].id.hex[:8]}"
    runs[after] = FakeRun(Failed())
    assert settle() == (f"k-after-{runs[after].id.hex[:8]}", None)  # chains past failures
    matches[0] = True
    runs[after] = FakeRun(Completed())
    assert settle() == (after, runs[after])


def write_published(final: Path, created: str, key: str = "rk") -> None:
    final.mkdir(parents=True, exist_ok=True)
    (final / "manifest.json").write_text(json.dumps({"created": created, "run_key": key}))
    (final / "stats.json").write_text(json.dumps({"counts": {"input": 3, "kept": 2, "x": 0}}))
    (final / "_SUCCESS").write_text("")


def test_outcome_from_final_state_and_manifest(tmp_path, tiny_model):
    from prefect.states import Completed, Crashed, Failed, Pending

    from flows.backfill_remote import outcome

    cfg, date = make_cfg(tmp_path, tiny_model, 0.0), DATES[0]
    final = part(tmp_path, date)
    failed = outcome(cfg, "pool", date, FakeRun(Failed(message="boom\nmore")), None, None)
    assert failed == Row(date, "failed", "run run Failed: boom")
    assert outcome(cfg, "pool", date, FakeRun(Crashed()), None, None).status == "failed"
    late = outcome(cfg, "pool", date, FakeRun(Pending()), None, 5.0)
    assert late == Row(date, "failed", "run run still Pending after 5.0s")
    unpublished = outcome(cfg, "pool", date, FakeRun(Completed()), None, None)
    assert unpublished.status == "failed" and "not published" in unpublished.detail

    write_published(final, "2026-01-01T00:00:00+00:00")
    ran = outcome(cfg, "pool", date, FakeRun(Completed()), None, None)
    assert ran == Row(date, "ran", "input=3 kept=2 (run run)")
    before = json.loads((final / "manifest.json").read_text())
    same = outcome(cfg, "pool", date, FakeRun(Completed()), before, None)
    assert same.status == "skipped"
    write_published(final, "2026-01-01T00:00:09+00:00")
    assert outcome(cfg, "pool", date, FakeRun(Completed()), before, None).status == "ran"


def test_idempotency_key_follows_output_config_and_inputs(tmp_path, tiny_model):
    from flows.backfill_remote import idempotency_key

    cfg = make_cfg(tmp_path, tiny_model, 0.2)
    inputs = [{"url": "a.tar", "size": 10, "mtime": "1"}]
    key = idempotency_key(cfg, "pool", DATES[0], inputs)
    assert key.startswith(f"pool-bf-{DATES[0]}-") and len(key) == len(f"pool-bf-{DATES[0]}-") + 16
    assert idempotency_key(cfg, "pool", DATES[0], [dict(inputs[0])]) == key
    bigger_batch = cfg.model_copy(update={"model": cfg.model.model_copy(update={"batch_size": 64})})
    assert idempotency_key(bigger_batch, "pool", DATES[0], inputs) == key  # not an output change
    assert idempotency_key(make_cfg(tmp_path, tiny_model, 0.3), "pool", DATES[0], inputs) != key
    assert idempotency_key(cfg, "pool", DATES[0], [{**inputs[0], "mtime": "2"}]) != key
    assert idempotency_key(cfg, "pool", DATES[1], inputs) != key
