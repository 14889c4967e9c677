"""A flaky object store (issue 22): pool and video runs reading and publishing through the
fault-injecting proxy (`infra/faulty_s3.py`) in front of moto.

- At 10% injected errors (503 SlowDown, 500, resets before and after the store applied the
  request, slow bodies; seeded) both flows publish the bytes a run without faults publishes,
  and the dataset's shared files (catalog, dedup index and its pointer) check out.
- Every conditional write (the partition lock, the catalog, the dedup pointer) meets a reset
  after it landed, or a 503, on every other attempt: still the clean run's bytes.
- An outage longer than the retry budget fails the run with one line naming the store
  (exit 3), publishes nothing half-written, keeps the previous version, and the re-run after
  the outage resumes from the cache.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
import yaml

from flows.cli import main
from flows.pool import run_pool
from flows.video import run_video
from infra.faulty_s3 import FaultyS3, Request
from schemas.config import parse_config
from tasks.dedup_index.runs import read_pointer
from tasks.io import storage
from tasks.publish.manifest import read_published
from tasks.verify import verify_dataset
from tests.chaos.conftest import PARTITION, pool_config, published_digest, video_config

pytest_plugins = ["tests.s3_fixture"]  # the `s3` and `bucket` fixtures
pytestmark = pytest.mark.s3
EARLIER = "2026-05-05"
SEED = 22
# tests that wait for an outage to outlast the retries use a shorter client budget (2 attempts
# per request instead of 5; s3fs's own retries of SlowDown and Prefect's task retries stay)
SHORT_BUDGET = {"config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}}}


@pytest.fixture
def inputs(s3, bucket, pool_inputs) -> str:
    """The pool's `{date}` folders in a bucket: `s3://bucket/in/{date}/*.tar`."""
    s3.upload(str(pool_inputs), f"{bucket}/in")
    return f"{bucket}/in/{{date}}/*.tar"


@pytest.fixture
def proxy(s3):
    with FaultyS3(s3.endpoint, seed=SEED) as p:
        yield p


def run_dates(config: dict, dates: list[str]) -> list[str]:
    """Each date run in order (the later one dedups against the earlier); their URIs."""
    return [run_pool(parse_config(config), d)["uri"] for d in dates]


def dedup_pool(tiny_model, inputs: str, output: str, so: dict) -> dict:
    return pool_config(tiny_model, inputs, output, so, dedup={"scope": "dataset"})


def assert_same_dataset(faulty: list[str], clean: list[str], so: dict) -> None:
    """Same shards and tables per partition; the faulty dataset's catalog and dedup index
    check out and cover every partition."""
    for got, want in zip(faulty, clean, strict=True):
        assert published_digest(got, so) == published_digest(want, so)
    dataset = faulty[0].rsplit("/", 2)[0]
    assert verify_dataset(dataset, so) == []
    runs = read_pointer(f"{dataset}/pool", so)[0].runs
    assert {p for r in runs for p in r.covers} == {u.rsplit("/", 1)[-1] for u in faulty}


def test_pool_at_10_percent_errors_publishes_the_clean_bytes(
    s3, bucket, inputs, proxy, tiny_model, prefect_harness
):
    so = s3.storage_options
    clean = run_dates(dedup_pool(tiny_model, inputs, f"{bucket}/clean", so), [EARLIER, PARTITION])
    proxy.rate = 0.10
    faulty = run_dates(
        dedup_pool(tiny_model, inputs, f"{bucket}/faulty", proxy.storage_options),
        [EARLIER, PARTITION],
    )
    assert_same_dataset(faulty, clean, so)
    faults = {k: n for k, n in proxy.counts.items() if k != "requests"}
    assert set(faults) == {"slowdown", "internal", "reset", "reset_after", "slow_body"}, faults
    assert 0.05 < sum(faults.values()) / proxy.counts["requests"] < 0.15


def test_video_at_10_percent_errors_publishes_the_clean_bytes(
    s3, bucket, proxy, tiny_model, tmp_path, prefect_harness
):
    pytest.importorskip("av")
    from tests.video_factory import make_not_video, make_video

    folder = tmp_path / "videos"
    folder.mkdir()
    make_video(folder / "cam_a.mp4", duration_s=3.0, fps=10, size=(64, 48))
    make_video(folder / "cam_b.mp4", duration_s=4.0, fps=10, size=(64, 48), gop=7)
    make_not_video(folder / "bad.mp4")
    s3.upload(str(folder), f"{bucket}/raw/{PARTITION}")
    inputs, so = f"{bucket}/raw/{{date}}/*.mp4", s3.storage_options
    clean_cfg = video_config(tiny_model, inputs, f"{bucket}/clean", so)
    clean = run_video(parse_config(clean_cfg), PARTITION)
    proxy.rate = 0.10
    cfg = video_config(tiny_model, inputs, f"{bucket}/faulty", proxy.storage_options)
    faulty = run_video(parse_config(cfg), PARTITION)
    assert faulty["events"] == clean["events"] >= 1
    assert published_digest(faulty["uri"], so) == published_digest(clean["uri"], so)
    assert sum(n for k, n in proxy.counts.items() if k != "requests") > 0


def every_other_attempt(suffixes: tuple[str, ...], met: Counter) -> object:
    """A fault on the 1st, 3rd, 5th... PUT or DELETE of each key ending in `suffixes`: every
    such write meets the fault once, and its retry goes through."""
    seen: Counter = Counter()
    guard = threading.Lock()

    def match(req: Request) -> bool:
        if req.method not in ("PUT", "DELETE") or not req.path.endswith(suffixes):
            return False
        with guard:
            seen[req.path] += 1
            if seen[req.path] % 2 == 0:
                return False
            met[next(s for s in suffixes if req.path.endswith(s))] += 1
            return True

    return match


@pytest.mark.parametrize("kind", ["reset_after", "slowdown", "reset"])
def test_conditional_writes_meet_faults(
    kind, s3, bucket, inputs, proxy, tiny_model, monkeypatch, prefect_harness
):
    """`reset_after` is the one that found defects: the write lands, its answer is lost, the
    retry gets 412 (the lock waited for itself, the pointer swap gave up)."""
    monkeypatch.setenv("CURATE_LOCK_TIMEOUT_S", "10")  # a run waiting for itself fails soon
    so = s3.storage_options
    clean = run_dates(dedup_pool(tiny_model, inputs, f"{bucket}/clean", so), [EARLIER, PARTITION])
    met: Counter = Counter()
    suffixes = (f".{EARLIER}.lock", f".{PARTITION}.lock", "_catalog.json", "CURRENT.json")
    proxy.rate, proxy.kinds = 1.0, {kind: 1.0}
    proxy.only = every_other_attempt(suffixes, met)
    faulty = run_dates(
        dedup_pool(tiny_model, inputs, f"{bucket}/faulty", proxy.storage_options),
        [EARLIER, PARTITION],
    )
    assert_same_dataset(faulty, clean, so)
    assert set(met) == set(suffixes), met  # each kind of conditional write met the fault


def write_config(path: Path, config: dict) -> str:
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_an_outage_fails_with_one_line_and_the_rerun_resumes(
    s3, bucket, inputs, proxy, tiny_model, tmp_path, capsys, prefect_harness
):
    so, proxied = s3.storage_options, {**proxy.storage_options, **SHORT_BUDGET}
    first = pool_config(tiny_model, inputs, f"{bucket}/out", proxied)
    first["pool"]["clip_filter"] = {"top_fraction": 0.3}
    assert main(["run", "pool", "-c", write_config(tmp_path / "a.yaml", first),
                 "--partition", PARTITION]) == 0  # fmt: skip
    final = f"{bucket}/out/chaos/pool/{PARTITION}"
    manifest = storage.read_bytes(f"{final}/manifest.json", so)
    before, before_digest = read_published(final, so), published_digest(final, so)

    second = pool_config(tiny_model, inputs, f"{bucket}/out", proxied)
    second["cache"] = f"{bucket}/cache-b"  # scored afresh: the outage comes mid-scoring
    second["runner"] = {"workers": 1}
    config = write_config(tmp_path / "b.yaml", second)
    proxy.outage_after(lambda r: r.method == "PUT" and r.path.endswith("/done.json"), 2)
    capsys.readouterr()
    status = main(["run", "pool", "-c", config, "--partition", PARTITION])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 3, err[-5:]
    store = f"store {bucket} at {proxy.endpoint} kept failing on "
    assert err[-1].startswith(f"curate: StoreError: {store}"), err[-1]
    assert err[-1].endswith("(re-run when the store answers again: finished work is reused "
                            "from the cache)")  # fmt: skip
    assert proxy.counts["outage_slowdown"] > 0

    proxy.restore()  # the store is back: nothing of the failed run was published
    assert storage.read_bytes(f"{final}/manifest.json", so) == manifest
    assert published_digest(final, so) == before_digest
    cached = [u for u in s3.fs().find(f"{bucket}/cache-b") if u.endswith("/done.json")]
    assert len(cached) == 2

    assert main(["run", "pool", "-c", config, "--partition", PARTITION]) == 0
    after = read_published(final, so)
    stats = storage.read_json(after.url("stats.json"), so)
    shards = stats["shards"]
    assert (shards["cached"], shards["scored"]) == (2, shards["input"] - 2)
    versions = {u.rstrip("/").rsplit("/", 1)[-1] for u in storage.listdir(final, so)}
    assert {v for v in versions if v.startswith("v-")} == {after.version, before.version}
