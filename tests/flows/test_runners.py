"""Same partition, same published bytes, whatever runs the tasks: threads, processes, Dask, Ray.

The Dask pool test joins a 2-worker LocalCluster by address with no PREFECT_API_URL, so it
also covers the local Prefect server that `infra.cluster` starts for such runs; the other
cluster tests run against the session's test server.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from flows.pool import run_pool
from infra import cluster, server
from schemas.config import RunnerConfig, parse_config
from tests.helpers import published_dir
from tests.pool_factory import broken_pool, make_samples, write_empty, write_tar

PARTITION = "2026-03-04"
METADATA = ["dog", "beach", "park", "car", "street", "sunset", "mountains", "kitchen"]
POOL_TABLES = ("samples.parquet",)
VIDEO_TABLES = ("videos.parquet", "frames.parquet", "events.parquet")


@pytest.fixture(scope="module")
def pool_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four input shards (good samples, a uid repeated across shards, every breakage, empty)
    and MetaCLIP metadata their captions match, so balancing runs too."""
    root = tmp_path_factory.mktemp("runners-pool")
    d = root / "in"
    d.mkdir()
    write_tar(d / "00000.tar", make_samples(14, seed=1))
    again = make_samples(11, seed=2)
    again[3].meta = dict(make_samples(1, seed=1)[0].meta)  # a duplicate uid
    write_tar(d / "00001.tar", again)
    broken_pool(d / "00002.tar")
    write_empty(d / "00003.tar")
    (root / "metadata.json").write_text(json.dumps(METADATA))
    return root


def pool_config(root: Path, tiny_model: dict, kind: str, **runner: Any) -> dict:
    return {
        "dataset": "r",
        "output": str(root / f"out-{kind}"),
        "cache": str(root / f"cache-{kind}"),  # every runner scores from scratch
        "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 4},
        "pool": {
            "input": str(root / "in" / "*.tar"),
            "clip_filter": {"top_fraction": 0.7},
            "balance": {"metadata": str(root / "metadata.json"), "t": 2, "seed": 5},
            "shard": {"max_samples": 5},
        },
        "runner": {"kind": kind, **runner},
    }


def published(root: Path, flow: str, tables: tuple[str, ...]) -> dict[str, Any]:
    """What a partition published: its tables (as frames) and every shard's sha256."""
    part = published_dir(root / "r" / flow / PARTITION)
    out: dict[str, Any] = {name: pl.read_parquet(part / name) for name in tables}
    out["shards"] = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((part / "shards").iterdir())
    }
    return out


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["shards"] == want["shards"]
    for name, frame in want.items():
        if name != "shards":
            assert got[name].equals(frame, null_equal=True), name


def run_pool_with(root: Path, tiny_model: dict, kind: str, **runner: Any) -> dict[str, Any]:
    result = run_pool(parse_config(pool_config(root, tiny_model, kind, **runner)), PARTITION)
    assert result["status"] == "published"
    return published(root / f"out-{kind}", "pool", POOL_TABLES)


@pytest.fixture(scope="module")
def threads_pool(pool_root: Path, tiny_model: dict, prefect_harness) -> dict[str, Any]:
    got = run_pool_with(pool_root, tiny_model, "threads", workers=4)
    samples = got["samples.parquet"]
    # the comparison is only worth something if the partition has every kind of row
    statuses = {"kept", "filtered_clip", "filtered_balance", "duplicate", "quarantined"}
    assert statuses <= set(samples["status"])
    assert samples["clip_score"].drop_nulls().n_unique() > 10
    assert samples["entry_ids"].list.len().max() >= 2 and samples["keep_prob"].n_unique() > 2
    return got


@pytest.mark.server
def test_processes_publish_the_same(pool_root, tiny_model, threads_pool, prefect_harness):
    assert_same(run_pool_with(pool_root, tiny_model, "processes", workers=2), threads_pool)


@pytest.fixture(scope="module")
def video_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two good videos of different sizes and rates, and a truncated one."""
    pytest.importorskip("av")  # PyAV before decord (see tests/video_factory.py)
    from tests.video_factory import make_truncated, make_video

    root = tmp_path_factory.mktemp("runners-video")
    d = root / "in"
    d.mkdir()
    a = make_video(d / "cam_a.mp4", duration_s=5.0, fps=10, size=(96, 64))
    make_video(d / "cam_b.mp4", duration_s=3.0, fps=15, size=(64, 48))
    make_truncated(a, d / "cut.mp4", 0.5)
    return root


def run_video_with(root: Path, tiny_model: dict, kind: str, **runner: Any) -> dict[str, Any]:
    from flows.video import run_video

    cfg = {
        "dataset": "r",
        "output": str(root / f"out-{kind}"),
        "cache": str(root / f"cache-{kind}"),
        "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 8},
        "video": {
            "input": str(root / "in" / "*.mp4"),
            "sample_fps": 4,
            "chunk_frames": 8,
            "shard": {"max_samples": 1},
            # thresholds at 0: every sampled frame is in an event, so clips are certain
            "events": {"start": 0.0, "stop": 0.0, "clip_before_s": 1.0, "clip_after_s": 1.0},
        },
        "runner": {"kind": kind, **runner},
    }
    assert run_video(parse_config(cfg), PARTITION)["status"] == "published"
    return published(root / f"out-{kind}", "video", VIDEO_TABLES)


@pytest.mark.server
def test_dask_cluster_publishes_the_same_with_one_model_per_worker(
    pool_root, video_root, tiny_model, threads_pool, prefect_harness
):
    """A 2-process Dask cluster joined by address runs the pool flow (starting its own
    Prefect server: no PREFECT_API_URL), then the video flow (on the test server)."""
    distributed = pytest.importorskip("distributed")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    threads_video = run_video_with(video_root, tiny_model, "threads", workers=4)
    assert threads_video["events.parquet"].height >= 2 and len(threads_video["shards"]) >= 3
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as lc,
        distributed.Client(lc) as client,
    ):
        with temporary_settings(restore_defaults={PREFECT_API_URL}):
            assert server.configured_api_url() is None
            pool = run_pool_with(pool_root, tiny_model, "dask", address=lc.scheduler_address)
        loads = client.run(model_cache_info)  # {worker address: (builds, calls)}
        video = run_video_with(video_root, tiny_model, "dask", address=lc.scheduler_address)
    assert_same(pool, threads_pool)
    assert_same(video, threads_video)
    builds = [b for b, _ in loads.values()]
    assert sum(c for _, c in loads.values()) == 4  # load_model once per input shard ...
    assert builds and all(b <= 1 for b in builds)  # ... but built at most once per worker
    assert sum(builds) == sum(1 for _, c in loads.values() if c)


def model_cache_info() -> tuple[int, int]:
    """(models built, load_model calls) in this worker process."""
    from tasks.model.clip import _cached

    info = _cached.cache_info()
    return info.misses, info.hits + info.misses


def worker_settings() -> tuple[str | None, int]:
    import torch

    return os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()


def resource_restrictions(x: int) -> dict | None:
    """The Dask resources the running task asked for (read on the worker)."""
    from distributed import get_worker
    from distributed.worker import thread_state

    return get_worker().state.tasks[thread_state.key].resource_restrictions


@pytest.mark.server
def test_local_dask_cluster_threads_and_gpu_annotations(prefect_harness):
    """A local cluster of N workers gives each cores // N torch threads; with model.device
    cuda every worker declares a GPU and only the model tasks ask for one (the resource is a
    label, so this runs on CPU too)."""
    distributed = pytest.importorskip("distributed")
    from prefect import flow, task

    model_task = task(resource_restrictions, name="score-shard")
    other_task = task(resource_restrictions, name="write-shard")
    cores = cluster.machine_cores()
    with cluster.dask_execution(RunnerConfig(kind="dask", workers=1), gpu=True) as runner:
        with distributed.Client(runner.address) as client:
            settings = list(client.run(worker_settings).values())
            resources = [w["resources"] for w in client.scheduler_info()["workers"].values()]

        @flow(task_runner=runner)
        def both() -> tuple:
            return model_task.submit(1).result(), other_task.submit(2).result()

        assert both() == ({"GPU": 1}, None)
    assert settings == [(str(cores), cores)]
    assert resources == [{"GPU": 1}]


@pytest.mark.server
def test_ray_publishes_the_same(pool_root, tiny_model, threads_pool, prefect_harness):
    pytest.importorskip("ray")
    pytest.importorskip("prefect_ray")
    assert_same(run_pool_with(pool_root, tiny_model, "ray", workers=2), threads_pool)


# --- the pieces ----------------------------------------------------------------------------


def test_task_inputs_and_results_pickle(tmp_path, model_cfg):
    """What the flows send to workers and get back survives pickling unchanged."""
    from schemas.config import PoolConfig, VideoConfig
    from tasks.pool.score import ShardScores
    from tasks.publish.commit import Version
    from tasks.publish.writer import WrittenFile
    from tasks.video.score import VideoScores

    frame = pl.DataFrame({"uid": ["a", "b"], "clip_score": [0.25, None], "n": [1, 2]})
    items = [
        model_cfg,
        PoolConfig(input="x/*.tar", clip_filter={"threshold": 0.3}),
        VideoConfig(input="v/*.mp4"),
        Version(str(tmp_path / "final"), "v-20260101T000000Z-abcdef12", {"anon": True}),
        ShardScores("u", "k", "t.parquet", "e.npy", {"samples": 2}, cached=False),
        VideoScores("u", "k", {"status": "ok"}, "f.parquet", "e.npy", cached=True),
        [WrittenFile("shards/000000.tar", "ab" * 32, 1024, 5)],
    ]
    for item in items:
        assert pickle.loads(pickle.dumps(item)) == item
    assert pickle.loads(pickle.dumps(frame)).equals(frame, null_equal=True)


def test_remote_cluster_without_api_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(server, "configured_api_url", lambda: None)
    runner = RunnerConfig(kind="dask", address="tcp://10.1.2.3:8786")
    with pytest.raises(cluster.ClusterError, match="PREFECT_API_URL"):  # noqa: SIM117
        with cluster.cluster_execution(runner):
            pass


def test_is_remote():
    assert not cluster.is_remote(None)
    assert cluster.is_remote("auto")  # Ray: whatever cluster this node belongs to
    assert not cluster.is_remote("tcp://127.0.0.1:8786")
    assert not cluster.is_remote("localhost:6379")
    assert cluster.is_remote("tcp://scheduler.internal:8786")
    assert cluster.is_remote("ray://10.0.0.5:10001")


def test_missing_ray_says_how_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] in ("ray", "prefect_ray"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    cluster.ray_runner_class.cache_clear()  # built by an earlier test when Ray is installed
    with pytest.raises(cluster.ClusterError) as err:  # noqa: SIM117
        with cluster.cluster_execution(RunnerConfig(kind="ray")):
            pass
    assert "pip install" in str(err.value) and "[ray]" in str(err.value)
    monkeypatch.undo()
    cluster.ray_runner_class.cache_clear()


def test_local_workers_sizing(monkeypatch):
    monkeypatch.setattr(cluster, "machine_cores", lambda: 6)
    assert cluster.local_workers(RunnerConfig(kind="dask"), gpu=False) == 6
    assert cluster.local_workers(RunnerConfig(kind="dask", workers=3), gpu=False) == 3
    assert cluster.torch_threads_env(1)["OMP_NUM_THREADS"] == "6"
    assert cluster.torch_threads_env(4)["OMP_NUM_THREADS"] == "1"
    assert cluster.torch_threads_env(3) == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert cluster.local_workers(RunnerConfig(kind="dask"), gpu=True) == 2


class _Task:
    def __init__(self, name: str) -> None:
        self.name = name


def test_dask_gpu_annotation_only_for_model_tasks(monkeypatch):
    dask = pytest.importorskip("dask")
    from prefect_dask import DaskTaskRunner

    seen: dict[str, Any] = {}

    def record(self, task, parameters, wait_for=None, **kw):
        seen[task.name] = dict(dask.get_annotations())

    monkeypatch.setattr(DaskTaskRunner, "submit", record)
    runner = cluster.dask_runner_class()(address="tcp://127.0.0.1:1", gpu=True)
    runner._gpu_ok = True  # as if a worker had declared --resources GPU=1
    for name in ("score-shard", "score-video", "write-shard"):
        runner.submit(_Task(name), {})
    assert seen["score-shard"] == seen["score-video"] == {"resources": {"GPU": 1}}
    assert seen["write-shard"] == {}
    cpu = cluster.dask_runner_class()(address="tcp://127.0.0.1:1", gpu=False)
    cpu.submit(_Task("score-shard"), {})
    assert seen["score-shard"] == {}
    assert runner.duplicate().gpu and not cpu.duplicate().gpu


def test_the_cli_path_passes_the_model_so_gpu_tasks_get_their_annotation():
    """Defect: `flows.common.execution` called `cluster_execution(cfg.runner)` without the
    model, so `model.device: cuda` never reached the Dask/Ray runners from the CLI."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.common import execution

    cfg = parse_config(
        {
            "model": {"device": "cuda"},
            "runner": {"kind": "dask", "address": "tcp://127.0.0.1:8786"},
        }
    )
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}), execution(cfg) as r:
        assert r.gpu is True
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        cpu = cfg.model_copy(update={"model": cfg.model.model_copy(update={"device": "cpu"})})
        with execution(cpu) as r:
            assert r.gpu is False


def test_planning_a_cuda_run_works_on_a_driver_without_gpu(pool_root, tiny_model):
    """Defect: planning resolved `device: cuda` on the driver, which fails on a CPU-only
    head node (the README's own cluster recipe). The plan keeps the configured device."""
    import torch

    from flows.run import plan_run

    assert not torch.cuda.is_available()  # this machine is such a driver
    cfg = pool_config(pool_root, tiny_model, "dask", address="tcp://127.0.0.1:8786")
    cfg["model"]["device"] = "cuda"
    plan = plan_run(parse_config(cfg), "pool", PARTITION)
    assert plan.model["device"] == "cuda" and plan.model["precision"] == "fp32"
    assert len(plan.urls) > 0 and len(plan.key) == 64
