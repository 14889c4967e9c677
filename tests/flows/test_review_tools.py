"""The review loop against the real tools (slow; each tool in its own environment, see
tests/review_tools.py): a Label Studio server on 127.0.0.1 with its SQLite database, and
FiftyOne loading our export with `Dataset.from_dir`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

av = pytest.importorskip("av")  # PyAV before decord (see tests/video_factory.py)

from flows.cli import main  # noqa: E402
from tasks.review.labelstudio import frames_to_span  # noqa: E402
from tasks.video.labels import read_labels  # noqa: E402
from tests.flows.review_fleet import build_fleet  # noqa: E402
from tests.review_tools import free_port, run_script, tool_python  # noqa: E402

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent
TOKEN = "0123456789abcdef0123456789abcdef01234567"  # a throwaway server's legacy token


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, tiny_model, prefect_harness):
    return build_fleet(tmp_path_factory.mktemp("review"), tiny_model)


def wait_up(url: str, proc: subprocess.Popen, log: Path, deadline_s: float = 600) -> None:
    """Until /health answers (the first start migrates a new SQLite database: minutes)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(2)
    raise AssertionError(f"Label Studio did not start in {deadline_s} s: {log.read_text()[-2000:]}")


@pytest.fixture
def label_studio(fleet, tmp_path):
    """A Label Studio server on 127.0.0.1 serving the fleet's files; its URL."""
    python = tool_python("labelstudio")
    port, data = free_port(), tmp_path / "ls-data"
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_USERNAME": "reviewer@example.com",
        "LABEL_STUDIO_PASSWORD": "review-test-only",
        "LABEL_STUDIO_USER_TOKEN": TOKEN,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(fleet.root),
    }
    cmd = [str(python.parent / "label-studio"), "start", "--no-browser", "--data-dir", str(data)]
    cmd += ["--internal-host", "127.0.0.1", "--port", str(port)]
    log = tmp_path / "label-studio.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url, proc, log)
        yield url, python
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_label_studio_round_trip_on_a_real_server(fleet, label_studio, tmp_path):
    url, python = label_studio
    out = tmp_path / "ls"
    args = ["export", "labelstudio", str(fleet.dataset), "--out", str(out)]
    assert main([*args, "--local-root", str(fleet.root)]) == 0
    tasks = json.loads((out / "tasks.json").read_text())
    plan = {
        "a.mp4": [[9, 30, "near_miss"], [40, 44, "collision"]],  # moved, and one added
        "b.mp4": "accept",  # the prediction as it was
        "c.mp4": "skip",
        "d.mp4": [],  # reviewed: nothing there
    }
    session = {"url": url, "token": TOKEN, "out": str(out), "annotate": plan,
               "media_dir": str(fleet.root / "in")}  # fmt: skip
    done = run_script(python, HERE / "labelstudio_client.py", session)
    assert done["tasks"] == 4
    for source, size in done["media_bytes"].items():  # served from the URL each task names
        assert size == Path(source).stat().st_size

    labels = tmp_path / "labels.csv"
    assert main(["import", "labelstudio", str(out / "export.json"), "--out", str(labels)]) == 0
    got = sorted((Path(r.video).name, r.label, r.start_s, r.end_s) for r in read_labels(labels))
    data = {Path(t["data"]["source"]).name: t["data"] for t in tasks}
    want = []
    for name, what in plan.items():
        if what == "skip":
            continue
        d = data[name]
        want.append((name, "normal", 0.0, d["duration_s"]))
        if what == "accept":
            pred = next(t for t in tasks if t["data"] is d)["predictions"][0]["result"]
            ranges = [r["value"]["ranges"][0] for r in pred]
            what = [[r["start"], r["end"], "near_miss"] for r in ranges]
            assert what, "the head predicted nothing in b.mp4"
        want += [(name, lab, *frames_to_span(a, b, d["fps"])) for a, b, lab in what]
    assert [w[:2] for w in got] == [w[:2] for w in sorted(want)]
    for g, w in zip(got, sorted(want), strict=True):
        assert g[2:] == pytest.approx(w[2:], abs=1e-6)


def test_fiftyone_loads_the_exports_with_every_value(fleet, tmp_path, tiny_model):
    import polars as pl

    from tests.flows.review_fleet import PARTITION, POOL_DAY, build_pool
    from tests.helpers import published_dir

    python = tool_python("fiftyone")
    pool = build_pool(tmp_path / "pool", tiny_model)
    out = tmp_path / "fo"
    assert main(["export", "fiftyone", str(pool), "--flow", "pool", "--out", str(out)]) == 0
    args = ["export", "fiftyone", str(fleet.dataset), "--flow", "video", "--out", str(out)]
    assert main(args) == 0
    folders = {"pool": str(out / "pool"), "video": str(out / "video")}
    got = run_script(python, HERE / "fiftyone_client.py", folders)

    table = pl.read_parquet(published_dir(pool / "pool" / POOL_DAY) / "samples.parquet")
    assert got["pool"]["media_type"] == "image" and got["auto"] == table.height
    assert {"uid", "caption", "clip_score", "status", "reason", "dup_group", "aesthetic",
            "duplicate_of"} <= set(got["pool"]["schema"])  # fmt: skip
    loaded = sorted(got["pool"]["samples"], key=lambda s: s["filepath"])
    for row, s in zip(table.iter_rows(named=True), loaded, strict=True):
        assert Path(s["filepath"]).read_bytes()  # absolute now, under the export
        assert (s["uid"], s["caption"], s["status"], s["reason"]) == (
            row["uid"], row["caption"], str(row["status"]), row["error"])  # fmt: skip
        assert s["clip_score"] == pytest.approx(row["clip_score"], nan_ok=True, abs=0)
        assert s["aesthetic"] == pytest.approx(row["aesthetic"], nan_ok=True, abs=0)
        if row["status"] == "duplicate":
            assert s["dup_group"] == row["duplicate_of"]

    part = published_dir(fleet.dataset / "video" / PARTITION)
    videos = pl.read_parquet(part / "videos.parquet").sort("video")
    frames, events = (
        pl.read_parquet(part / "frames.parquet"),
        pl.read_parquet(part / "events.parquet"),
    )
    assert got["video"]["media_type"] == "video"
    assert {"t_s", "score", "p_head", "ood_flag"} <= set(got["video"]["frame_schema"])
    for s, v in zip(got["video"]["samples"], videos.iter_rows(named=True), strict=True):
        assert s["filepath"] == v["video"]
        ev = events.filter(pl.col("video") == v["video"]).sort("start_s")
        assert [e[3] for e in s["events"]] == ev["event_id"].to_list()
        for e, row in zip(s["events"], ev.iter_rows(named=True), strict=True):
            first = round(row["start_s"] * v["fps"]) + 1
            last = min(round(row["end_s"] * v["fps"]), v["n_frames"])
            assert e[:3] == ["near_miss", [first, last], row["peak_score"]]
        f = frames.filter(pl.col("video") == v["video"])
        want = {str(r["frame_index"] + 1): [r["t_s"], r["score"], r["ood_flag"]]
                for r in f.iter_rows(named=True)}  # fmt: skip
        assert s["frames"].keys() == want.keys()
        for n, vals in want.items():
            assert s["frames"][n][0] == vals[0] and s["frames"][n][2] == vals[2]
            assert s["frames"][n][1] == pytest.approx(vals[1], abs=0)
