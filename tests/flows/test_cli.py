"""`curate` as a user meets it: one line per failure with its exit status, no traceback
without --verbose, and a published partition skipped without importing torch."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

from tasks.io import storage
from tasks.io.lock import Holder, lock_url
from tests.helpers import ROOT
from tests.pool_factory import make_samples, write_tar

PARTITION = "2026-07-08"


def curate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def api_env() -> dict[str, str]:
    from prefect.settings import get_current_settings

    return {"PREFECT_API_URL": str(get_current_settings().api.url)}


@pytest.fixture
def config(tmp_path: Path, tiny_model: dict) -> Path:
    (tmp_path / "in").mkdir()
    write_tar(tmp_path / "in" / "0.tar", make_samples(10, seed=5))
    cfg = {
        "dataset": "cli",
        "output": str(tmp_path / "out"),
        "model": {**tiny_model, "precision": "fp32", "device": "cpu"},
        "pool": {"input": str(tmp_path / "in" / "*.tar"), "clip_filter": {"top_fraction": 0.9}},
        "gate": {"enabled": True},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def one_line(proc: subprocess.CompletedProcess, status: int, starts: str) -> str:
    """The failure is exactly one `curate:` line, the last one, with no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == status, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert [line for line in lines if line.startswith("curate:")] == [lines[-1]]
    assert not any(" ERROR " in line for line in lines), proc.stderr[-2000:]
    assert lines[-1].startswith(starts), lines[-1]
    return lines[-1]


def test_bad_config_is_status_2(config: Path) -> None:
    proc = curate("run", "pool", "-c", str(config), "--set", "pool.clip_filtr=1")
    one_line(proc, 2, "curate: config: unknown key 'pool.clip_filtr'")


def test_unreadable_input_is_status_3(config: Path) -> None:
    proc = curate("run", "pool", "-c", str(config), "--set", "pool.input=/nowhere/*.tar")
    line = one_line(proc, 3, "curate: InputError: pool.input: no input files match")
    assert line.endswith("(check the input URIs and storage_options)")


def test_model_load_failure_is_status_1(config: Path, tmp_path: Path, prefect_harness) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not weights" * 50)
    proc = curate(
        "run", "pool", "-c", str(config), "--partition", PARTITION,
        "--set", f"model.pretrained={bad}", env=api_env(),
    )  # fmt: skip
    line = one_line(proc, 1, "curate: ModelLoadError: model: cannot load")
    assert "(check model.name and model.pretrained" in line
    verbose = curate(
        "--verbose", "run", "pool", "-c", str(config), "--partition", PARTITION,
        "--set", f"model.pretrained={bad}", env=api_env(),
    )  # fmt: skip
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr


def test_locked_partition_is_status_5(config: Path, tmp_path: Path) -> None:
    final = str(tmp_path / "out" / "cli" / "pool" / PARTITION)
    me = psutil.Process()
    holder = Holder(
        "other-run",
        uuid.uuid4().hex,
        socket.gethostname(),
        me.pid,
        me.create_time(),
        dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        600.0,
    )  # fmt: skip  (a live holder: this test process)
    storage.write_bytes(lock_url(final), holder.to_bytes())
    proc = curate(
        "run", "pool", "-c", str(config), "--partition", PARTITION,
        env={**api_env(), "CURATE_LOCK_TIMEOUT_S": "0"},
    )  # fmt: skip
    one_line(proc, 5, f"curate: PartitionLocked: partition {final} is being written by run")


def test_gate_hold_is_status_4(config: Path, prefect_harness) -> None:
    first = curate("run", "pool", "-c", str(config), "--partition", "2026-07-07", env=api_env())
    assert first.returncode == 0
    proc = curate(
        "run", "pool", "-c", str(config), "--partition", PARTITION,
        "--set", "pool.clip_filter.top_fraction=0.2", env=api_env(),
    )  # fmt: skip
    line = one_line(proc, 4, "curate: GateHeld: partition")
    assert line.endswith("re-run with --set gate.override=true to publish")


def test_skipping_a_published_partition_imports_neither_torch_nor_prefect(
    config: Path, tmp_path: Path, prefect_harness
) -> None:
    run = ["run", "pool", "-c", str(config), "--partition", PARTITION]
    assert curate(*run, env=api_env()).returncode == 0
    probe = (
        "import sys, json\n"
        "from flows.cli import main\n"
        f"rc = main({run!r})\n"
        "heavy = [m for m in ('torch', 'open_clip', 'prefect') if m in sys.modules]\n"
        "print(json.dumps({'rc': rc, 'heavy': heavy}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    out = proc.stdout.strip().splitlines()
    assert json.loads(out[-1]) == {"rc": 0, "heavy": []}, proc.stderr[-2000:]
    assert json.loads("\n".join(out[:-1]))["status"] == "skipped"


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound and released: connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "closed port"])
def test_an_open_clip_tag_without_network_fails_at_once(
    config: Path, tmp_path: Path, offline: str, prefect_harness
) -> None:
    """Defect: the default model without network spent a minute in hub retries (every file
    open_clip tries, five times each) before an error that did not say what to do."""
    env = {**api_env(), "HF_HOME": str(tmp_path / "hf")}  # an empty hub cache
    if offline == "HF_HUB_OFFLINE":
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    proc = curate(
        "run", "pool", "-c", str(config), "--partition", PARTITION,
        "--set", "model.name=ViT-B-32", "--set", "model.pretrained=laion2b_s34b_b79k", env=env,
    )  # fmt: skip
    line = one_line(
        proc, 1, "curate: ModelLoadError: model.pretrained: 'laion2b_s34b_b79k' is not downloaded"
    )
    assert "HF_HUB_OFFLINE is set" in line if offline == "HF_HUB_OFFLINE" else "refused" in line
    assert "point model.pretrained at a checkpoint file instead" in line
    assert "Retrying" not in proc.stderr  # not one request retried


def test_a_checkpoint_file_loads_without_open_clips_random_init_warning(
    config: Path, prefect_harness
) -> None:
    """Defect: open_clip's "No pretrained weights loaded ... initialized randomly" came on
    every run that loads a checkpoint file, right before our line saying it was loaded."""
    proc = curate("run", "pool", "-c", str(config), "--partition", PARTITION, env=api_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "loaded model" in proc.stderr
    assert "initialized randomly" not in proc.stderr and "No pretrained" not in proc.stderr
