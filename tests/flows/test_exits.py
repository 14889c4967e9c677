"""One error taxonomy: every exit path of `curate` lands on a row of the manual's table
"Exit status", with one line that names the cause and what to do, and no exception name of a
library or of Python. The walk below runs, for each row, commands that must land there."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import signal
import socket
import threading
import uuid
from pathlib import Path

import polars as pl
import psutil
import pytest

from tasks.io import storage
from tasks.io.lock import Holder, lock_url
from tests.helpers import ROOT, published_dir, run_cli

# names that must never reach the user's line (ours, like InputError, may)
FOREIGN = re.compile(
    r"\b(ValueError|KeyError|TypeError|RuntimeError|OSError|FileNotFoundError|"
    r"ColumnNotFoundError|ComputeError|ConnectError|AttributeError|Exception)\b"
)


def readme_statuses() -> dict[int, str]:
    """{status: meaning} from the exit-status table of the manual (docs/cli.md)."""
    text = (ROOT / "docs" / "cli.md").read_text()
    section = text.split("## Exit status", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", section, re.M)
    return {int(code): meaning.strip() for code, meaning in rows}


@pytest.fixture
def work(demo: Path, tmp_path: Path) -> dict[str, Path]:
    """A private copy of the demo's inputs (dates 01-01 and 01-02) and an empty output."""
    day1 = demo / "pool" / "2026-01-01"
    for day in ("2026-01-01", "2026-01-02"):
        shutil.copytree(day1, tmp_path / "in" / day)
    return {"in": tmp_path / "in", "out": tmp_path / "out", "tmp": tmp_path}


def cfg_args(demo: Path, work: dict[str, Path], *sets: str) -> list[str]:
    base = [f"output={work['out']}", f"pool.input={work['in']}/{{date}}/*.tar"]
    return ["-c", str(demo / "demo.yaml"), *[a for s in [*base, *sets] for a in ("--set", s)]]


def land(capsys, status: int, *args, starts: str = "curate: ") -> str:
    result = run_cli(capsys, *args)
    assert result.status == status, (args, result.status, result.line)
    if status:
        assert result.line.startswith(starts), result.line
        assert not FOREIGN.search(result.line), result.line
        assert result.line.count("curate:") == 1
    return result.line


def walk_ok(demo, work, capsys) -> None:
    dataset = demo / "curated" / "demo"
    land(capsys, 0, "ls", dataset)
    land(capsys, 0, "verify", dataset / "pool" / "2026-01-01")
    args = ["run", "pool", *cfg_args(demo, work), "--partition", "2026-01-01"]
    land(capsys, 0, *args)
    assert '"status": "skipped"' in run_cli(capsys, *args).out  # published: skipped, still 0


def walk_failed(demo, work, capsys) -> None:
    bad = work["tmp"] / "bad.pt"
    bad.write_bytes(b"not weights" * 50)
    args = ["run", "pool", *cfg_args(demo, work, f"model.pretrained={bad}")]
    line = land(capsys, 1, *args, "--partition", "2026-01-02", starts="curate: ModelLoadError:")
    assert "(check model.name and model.pretrained" in line
    # a published partition whose shard was changed afterwards
    copy = work["tmp"] / "copy"
    shutil.copytree(demo / "curated" / "demo" / "pool" / "2026-01-01", copy / "d" / "pool" / "x")
    tar = published_dir(copy / "d" / "pool" / "x") / "shards" / "000000.tar"
    tar.write_bytes(tar.read_bytes()[:-10] + b"0123456789")
    land(capsys, 1, "verify", copy / "d" / "pool" / "x")


def walk_usage(demo, work, capsys) -> None:
    run = ["run", "pool", *cfg_args(demo, work)]
    land(capsys, 2, *run, "--set", "pool.clip_filtr=1", starts="curate: config: unknown key")
    land(capsys, 2, *run, "--partition", "2026-13-01", starts="curate: --partition")
    # defect: the video flow with a pool-only config exited 3, "check the input URIs"
    line = land(capsys, 2, "run", "video", *cfg_args(demo, work, "video=null"))
    assert line == "curate: config: the video flow needs a 'video' section"
    land(capsys, 2, "ls", demo / "curated", starts="curate: ")  # an output root
    undated = f"pool.input={work['in']}/2026-01-01/*.tar"
    dates = ["--start", "2026-01-01", "--end", "2026-01-02"]
    land(capsys, 2, "backfill", "pool", *cfg_args(demo, work, undated), *dates)


def walk_input(demo, work, capsys) -> None:
    missing = "pool.input=/nowhere/{date}/*.tar"
    line = land(
        capsys, 3, "run", "pool", *cfg_args(demo, work, missing), "--partition", "2026-01-01"
    )
    assert "no input files match" in line
    # defect: balance on a parquet without the caption column exited 1 with a ValueError
    captions = work["tmp"] / "captions.parquet"
    pl.DataFrame({"uid": ["a"], "text": ["a red circle"]}).write_parquet(captions)
    out = work["tmp"] / "balanced.parquet"
    args = ["--metadata", demo / "metadata.json", "--input", captions, "--t", "2", "--out", out]
    line = land(capsys, 3, "balance", *args)
    assert "no caption column 'caption'" in line and "--caption-column" in line
    # defect: nearmiss fit with a missing labels file exited 1 with a bare FileNotFoundError
    head = work["tmp"] / "h.safetensors"
    args = ["--labels", work["tmp"] / "nope.csv", "-c", demo / "demo.yaml", "--out", head]
    line = land(capsys, 3, "nearmiss", "fit", *args, starts="curate: LabelError: labels:")
    # defect: report of an unpublished partition printed "not published" and exited 0
    unpublished = work["out"] / "demo" / "pool" / "2026-01-05"
    (unpublished / "v-20260105T000000Z-00000000").mkdir(parents=True)
    line = land(capsys, 3, "report", unpublished)
    assert "is not published" in line
    land(capsys, 3, "ls", demo / "curated" / "dmeo")  # defect: a typo listed nothing, exit 0


def walk_held(demo, work, capsys) -> None:
    """Defect: a gate hold exited 4 from `run` but 1 from `backfill`."""
    gate = ["gate.enabled=true"]
    run = ["run", "pool", *cfg_args(demo, work, *gate)]
    land(capsys, 0, *run, "--partition", "2026-01-01")
    tight = cfg_args(demo, work, *gate, "pool.clip_filter.threshold=0.9")
    dates = ["--start", "2026-01-02", "--end", "2026-01-02"]
    line = land(capsys, 4, "backfill", "pool", *tight, *dates)
    assert line.startswith("curate: backfill: 1 of 1 dates failed, 2026-01-02: GateHeld:")
    land(capsys, 4, "run", "pool", *tight, "--partition", "2026-01-02",
         starts="curate: GateHeld: partition")  # fmt: skip


def walk_locked(demo, work, capsys, monkeypatch) -> None:
    final = work["out"] / "demo" / "pool" / "2026-01-02"
    other = psutil.Process().parent()  # a live process on this host that is not this one
    assert other is not None
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    holder = Holder(
        "other-run",
        uuid.uuid4().hex,
        socket.gethostname(),
        other.pid,
        other.create_time(),
        now,
        600.0,
    )  # fmt: skip  (a live holder; one of this very process would be one it left behind)
    storage.write_bytes(lock_url(str(final)), holder.to_bytes())
    monkeypatch.setenv("CURATE_LOCK_TIMEOUT_S", "0")
    args = ["run", "pool", *cfg_args(demo, work, "pool.clip_filter.threshold=0.2")]
    land(capsys, 5, *args, "--partition", "2026-01-02", starts="curate: PartitionLocked:")


def walk_signals(capsys, monkeypatch) -> None:
    """Ctrl-C and SIGTERM during a command (a stand-in command that signals itself)."""
    import flows.cli
    import tasks.cancel

    # SIGTERM cancels every run of the process: keep that away from later tests' runs
    monkeypatch.setattr(tasks.cancel, "_all", threading.Event())
    # as in a terminal: a process started in the background (nohup, `cmd &`, some CI
    # runners) inherits SIGINT ignored, and Ctrl-C could not reach it at all
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for sig, status in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
            monkeypatch.setattr(flows.cli, "cmd_demo", lambda args, s=sig: os.kill(os.getpid(), s))
            land(capsys, status, "demo")
    finally:
        signal.signal(signal.SIGINT, before)


def test_every_exit_path_lands_on_a_row_of_the_readme_table(
    demo, work, capsys, monkeypatch, prefect_harness
) -> None:
    walks = {
        0: lambda: walk_ok(demo, work, capsys),
        1: lambda: walk_failed(demo, work, capsys),
        2: lambda: walk_usage(demo, work, capsys),
        3: lambda: walk_input(demo, work, capsys),
        4: lambda: walk_held(demo, work, capsys),
        5: lambda: walk_locked(demo, work, capsys, monkeypatch),
    }
    table = readme_statuses()
    assert set(table) == {*walks, 130, 143}, table
    for status in sorted(walks):
        walks[status]()
    walk_signals(capsys, monkeypatch)


def test_exception_names_stay_out_of_the_line() -> None:
    """A library's (or Python's) own exception says what happened in its words."""
    import polars.exceptions

    from flows.exits import failure_line

    line, status = failure_line(polars.exceptions.ColumnNotFoundError('unable to find "x"'))
    assert line == (
        'curate: unexpected failure: unable to find "x" (re-run with --verbose for the traceback)'
    )
    assert status == 1
    line, status = failure_line(FileNotFoundError(2, "No such file", "/data/x.parquet"))
    assert (line, status) == ("curate: not found: /data/x.parquet (check the path)", 3)
    line, status = failure_line(OSError(28, "No space left on device"))
    assert line.startswith("curate: I/O failure: No space left on device (check the store")
    assert status == 1


def test_subclasses_land_where_their_base_does() -> None:
    from clip_curate.locate import NothingPublished
    from flows.exits import exit_status
    from tasks.errors import InputError

    class ShardsGone(InputError):
        pass

    assert exit_status(ShardsGone("x")) == exit_status(NothingPublished("y")) == 3
