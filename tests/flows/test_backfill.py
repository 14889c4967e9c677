"""Backfill in process: date ranges, the bounded pool, and what a repeat or a change re-runs."""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest

from flows.backfill import Row, date_range, format_table, run_backfill, run_dates
from schemas.config import ConfigError, parse_config
from schemas.partition import PartitionError
from tasks.publish.manifest import read_published
from tests.pool_factory import make_samples, write_tar

DATES = ["2026-03-30", "2026-03-31", "2026-04-01"]  # across a month end
SIZES = [5, 7, 6]  # samples per date, so each partition's counts are its own
SIGNAL_S = 60.0  # how long a test waits for a signal from another thread


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
        ("2026-13-01", "2026-12-31", "'2026-13-01' is not a calendar date"),
        ("yesterday", "2026-01-01", "YYYY-MM-DD"),
        ("2026-01-01", "20260102", "--end '20260102' is not a date written YYYY-MM-DD"),
        ("2024-01-01", "2025-01-01", "more than 366"),
    ],
)
def test_date_range_rejects(start, end, message):
    with pytest.raises((ConfigError, PartitionError), match=message):
        date_range(start, end)


class Gate:
    """Fake date runs that stay running until the test lets each one finish.

    `one` counts the runs in progress (and the peak) under a condition and blocks there;
    `drive` runs `run_dates` in a thread and, each time `max_parallel` runs (or all that are
    left) are in progress at once, lets the one that started first finish. So the peak is
    reached for certain, and a run finishing early can never hide a run too many.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.running, self.peak = 0, 0
        self.started: list[str] = []
        self.released: set[str] = set()
        self.open = False  # the test ended: let everything through

    def one(self, date: str) -> Row:
        with self.cond:
            self.started.append(date)
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.cond.notify_all()
            let_go = self.cond.wait_for(
                lambda: date in self.released or self.open, timeout=SIGNAL_S
            )
            self.running -= 1
            self.cond.notify_all()
        if not let_go:
            raise TimeoutError(f"{date} was never let go")
        if date.endswith("3"):
            raise OSError("store unreachable\nsecond line")
        return Row(date, "ran", "input=1")

    def in_progress(self, n: int) -> bool:
        """Exactly `n` runs in progress, none of them let go yet (those let go have left)."""
        return self.running == n == len(self.started) - len(self.released)

    def drive(self, dates: list[str], max_parallel: int) -> list[Row]:
        out: list[list[Row]] = []
        runner = threading.Thread(
            target=lambda: out.append(run_dates(dates, self.one, max_parallel)), daemon=True
        )
        runner.start()
        try:
            for left in range(len(dates), 0, -1):
                with self.cond:
                    at_once = min(max_parallel, left)
                    reached = self.cond.wait_for(lambda n=at_once: self.in_progress(n), SIGNAL_S)
                    assert reached, f"never {at_once} at once (running: {self.running})"
                    first = next(d for d in self.started if d not in self.released)
                    self.released.add(first)
                    self.cond.notify_all()
            runner.join(SIGNAL_S)
        finally:
            with self.cond:
                self.open = True
                self.cond.notify_all()
        assert not runner.is_alive()
        return out[0]


def test_run_dates_keeps_order_bounds_parallelism_and_turns_errors_into_rows():
    dates = [f"2026-01-0{i}" for i in range(1, 8)]
    gate = Gate()
    rows = gate.drive(dates, max_parallel=2)
    assert [r.date for r in rows] == dates
    # the first two start together (in either order), then one more each time one finishes
    assert sorted(gate.started[:2]) == dates[:2] and gate.started[2:] == dates[2:]
    assert gate.peak == 2
    assert rows[2] == Row(
        "2026-01-03",
        "failed",
        "I/O failure: store unreachable (check the store or disk, then re-run; --verbose "
        "shows where)",
        1,
    )
    assert [r.status for r in rows].count("ran") == 6
    one_at_a_time = Gate()
    assert one_at_a_time.drive(dates[:3], max_parallel=1)[0].status == "ran"
    assert one_at_a_time.peak == 1 and one_at_a_time.started == dates[:3]


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


def published(tmp_path: Path, date: str, name: str) -> str:
    """A file of the published version of a date's partition (what readers follow)."""
    return read_published(str(part(tmp_path, date))).url(name)


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
        samples = pl.read_parquet(published(tmp_path, date, "samples.parquet"))
        assert samples.height == n and set(samples["status"]) <= {"kept", "filtered_text"}
        first[date] = samples

    def no_clip(*args, **kwargs):
        raise AssertionError("CLIP ran")

    monkeypatch.setattr("tasks.pool.score.load_model", no_clip)
    assert run_backfill(cfg, "pool", DATES[0], DATES[-1], mode="local") == 0
    assert table_rows(capsys.readouterr().out) == dict.fromkeys(DATES, "skipped")
    for date in DATES:
        again = pl.read_parquet(published(tmp_path, date, "samples.parquet"))
        assert again.equals(first[date])

    # a threshold in the middle of the scores: select + publish again, scores from the cache
    scores = pl.concat(first.values()).filter(pl.col("status") == "kept")["clip_score"]
    thr = float(scores.median())
    changed = make_cfg(tmp_path, tiny_model, threshold=thr)
    assert run_backfill(changed, "pool", DATES[0], DATES[-1], mode="local") == 0
    assert table_rows(capsys.readouterr().out) == dict.fromkeys(DATES, "ran")
    for date in DATES:
        stats = json.loads(Path(published(tmp_path, date, "stats.json")).read_text())
        assert stats["shards"]["cached"] == stats["shards"]["input"] == 1
        assert stats["shards"]["scored"] == 0
        now = pl.read_parquet(published(tmp_path, date, "samples.parquet"))
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
    stats = json.loads(Path(published(tmp_path, DATES[0], "stats.json")).read_text())
    assert stats["shards"]["scored"] == 1  # --force re-scored
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines() if line.startswith(DATES[0])] == [
        "ran",
        "ran",
    ]

    # 2026-04-02 has no inputs: its row fails with the reason (exit 3, as `run` would), the
    # others still run
    assert run_backfill(cfg, "pool", DATES[-1], "2026-04-02", mode="local") == 3
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


def test_idempotency_key_follows_the_run_key(dated_pool, tiny_model):
    """The key is the run key: inputs, output config, model identity; not the batch size."""
    from flows.backfill_remote import idempotency_key
    from flows.run import plan_run

    tmp_path = dated_pool
    cfg = make_cfg(tmp_path, tiny_model, 0.2)

    def key(c, date=DATES[0]):
        return idempotency_key(c, "pool", date, plan_run(c, "pool", date).key)

    first = key(cfg)
    assert (
        first.startswith(f"pool-bf-{DATES[0]}-") and len(first) == len(f"pool-bf-{DATES[0]}-") + 16
    )
    assert key(cfg) == first
    bigger_batch = cfg.model_copy(update={"model": cfg.model.model_copy(update={"batch_size": 64})})
    assert key(bigger_batch) == first  # not an output change
    assert key(make_cfg(tmp_path, tiny_model, 0.3)) != first
    assert key(cfg, DATES[1]) != first
    write_tar(tmp_path / "in" / DATES[0] / "00000.tar", make_samples(2, seed=99))
    assert key(cfg) != first  # changed input


def test_remote_and_local_backfill_agree_on_what_is_published(
    dated_pool, tiny_model, prefect_harness, tmp_path_factory
):
    """Defect: the remote rule compared only config hash and inputs, so a partition scored
    with other weights at the same checkpoint path counted as published. Both now ask
    `flows.run.already_published` with the run key (model identity included)."""
    import torch

    from flows.backfill_remote import idempotency_key
    from flows.run import already_published, plan_run

    tmp_path = dated_pool
    ckpt = tmp_path_factory.mktemp("ckpt") / "weights.pt"
    ckpt.write_bytes(Path(tiny_model["pretrained"]).read_bytes())
    model = {**tiny_model, "pretrained": str(ckpt)}
    cfg = make_cfg(tmp_path, model, threshold=-1.0)
    assert run_backfill(cfg, "pool", DATES[0], DATES[0], mode="local") == 0
    plan = plan_run(cfg, "pool", DATES[0])
    assert already_published(plan, {})
    saved = torch.load(ckpt, weights_only=True)
    state = saved.get("state_dict", saved)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first] + 1.0  # other weights, same path, same config
    torch.save(saved, ckpt)
    retrained = plan_run(cfg, "pool", DATES[0])
    assert retrained.key != plan.key and not already_published(retrained, {})
    assert idempotency_key(cfg, "pool", DATES[0], retrained.key) != idempotency_key(
        cfg, "pool", DATES[0], plan.key
    )


@pytest.mark.parametrize("mode", ["local", "deployment"])
@pytest.mark.parametrize(
    ("pool", "want"),
    [
        ({"balance": {"metadata": "m.json", "running_counts": True}}, 1),
        ({"dedup": {"scope": "dataset"}}, 1),
        ({"dedup": {"scope": "partition"}}, 3),
        ({}, 3),
    ],
)
def test_dates_that_read_earlier_dates_run_one_at_a_time_in_every_mode(
    tmp_path, monkeypatch, mode, pool, want
):
    """--max-parallel 3 is honoured only where no date reads another: with running counts or
    dataset-scope dedup the dates go one at a time, in date order, local or deployed."""
    import flows.backfill as bf

    (tmp_path / "m.json").write_text("[]")
    if "balance" in pool:
        pool["balance"]["metadata"] = str(tmp_path / "m.json")
    cfg = parse_config({"dataset": "d", "output": str(tmp_path / "out"),
                        "pool": {"input": str(tmp_path / "{date}/*.tar"), **pool}})  # fmt: skip
    seen = {}

    def fake_run_dates(dates, one, max_parallel):
        seen.update(dates=dates, max_parallel=max_parallel, one=one)
        return []

    monkeypatch.setattr(bf, "run_dates", fake_run_dates)
    monkeypatch.setattr(bf, "use_deployment", lambda cfg, flow, m: mode == "deployment")
    monkeypatch.setattr(bf, "remote_runner", lambda *a: "remote")
    bf.backfill(cfg, "pool", "2026-01-01", "2026-01-05", max_parallel=3, mode=mode)
    assert seen["max_parallel"] == want and seen["dates"][0] == "2026-01-01"
    assert (seen["one"] == "remote") == (mode == "deployment")
