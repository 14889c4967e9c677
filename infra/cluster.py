"""Dask and Ray execution: join a cluster or start a local one, with a Prefect API it can reach.

Task runs on Dask/Ray workers report their states to the Prefect API named in the flow's
settings. Prefect's ephemeral API lives inside one process, so a run without
`PREFECT_API_URL` gets a local server on 127.0.0.1 for its duration (local clusters only:
remote workers could not reach it, so joining one without an API is a clear error).

One model per worker process: `tasks.model.clip.load_model` is cached per process, and workers
are long-lived processes (Dask: `threads_per_worker=1`; Ray reuses its worker processes), so
each worker builds the model once and keeps it for every shard it scores. With
`model.device: cuda` the scoring tasks ask for one `GPU` resource (Dask annotation / Ray
`num_gpus`), local Dask workers get one GPU each, and a remote cluster's workers must be
started with `--resources GPU=1` (else the tasks run without the annotation, with a warning).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from urllib.parse import urlparse

from schemas.config import ModelConfig, RunnerConfig
from tasks.parallel import cpu_count

logger = logging.getLogger(__name__)

GPU_TASKS = frozenset({"score-shard", "score-video", "embed-prompts"})  # tasks running the model
DASK_MISSING = "runner.kind 'dask' needs Dask: pip install prefect-dask 'dask[distributed]'"
RAY_MISSING = "runner.kind 'ray' needs Ray: pip install 'clip-curate[ray]' (ray + prefect-ray)"
LOOPBACK = {"127.0.0.1", "localhost", "::1", ""}


class ClusterError(RuntimeError):
    """The cluster or its API cannot be set up: one line that says what to do."""


def machine_cores() -> int:
    """Cores this process may use (the container's share, not the host's)."""
    return cpu_count()


def local_workers(runner: RunnerConfig, gpu: bool) -> int:
    """Workers for a local cluster: as configured, else one per GPU, else one per core."""
    if runner.workers:
        return runner.workers
    if gpu:
        import torch

        return max(1, torch.cuda.device_count())
    return machine_cores()


def torch_threads_env(workers: int) -> dict[str, str]:
    """Each of `workers` local processes gets cores // workers torch threads: together they use
    every core once (Dask and Ray would otherwise give each worker one thread)."""
    threads = str(max(1, machine_cores() // workers))
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


# --- the Prefect API the workers report to ------------------------------------------------


@contextmanager
def prefect_api(remote_cluster: bool = False) -> Iterator[str]:
    """The API every worker reports to: the configured one, else a local server for the run."""
    from infra.server import configured_api_url, run_api

    if remote_cluster and not configured_api_url():
        raise ClusterError(
            "runner.address joins a cluster whose workers need a Prefect API they can reach: "
            "set PREFECT_API_URL (e.g. start `prefect server start --host 0.0.0.0`)"
        )
    with run_api() as url:
        yield url


def is_remote(address: str | None) -> bool:
    """True unless `address` is empty or on this machine: a joined cluster's workers may be
    elsewhere (Ray's `auto` included) and could not reach a server on our 127.0.0.1."""
    if not address:
        return False
    if address == "auto":
        return True
    host = urlparse(address if "://" in address else f"tcp://{address}").hostname or ""
    return host not in LOOPBACK


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Keep a library's INFO chatter (Dask: ~30 lines a run) out of the log unless debugging."""
    log = logging.getLogger(name)
    old = log.level
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        log.setLevel(max(old, logging.WARNING))
    try:
        yield
    finally:
        log.setLevel(old)


# --- Dask ---------------------------------------------------------------------------------


@functools.cache
def dask_runner_class() -> type:
    """DaskTaskRunner plus GPU annotations (built on first use: Dask is an optional extra)."""
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ClusterError(DASK_MISSING) from None

    class CurateDaskTaskRunner(DaskTaskRunner):
        """DaskTaskRunner that asks for one GPU for the model tasks when `gpu` is on."""

        def __init__(self, *args: Any, gpu: bool = False, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.gpu = gpu
            self._gpu_ok: bool | None = None

        def duplicate(self) -> CurateDaskTaskRunner:
            return type(self)(address=self.address, gpu=self.gpu)

        def submit(self, task: Any, parameters: Any, wait_for: Any = None, **kw: Any) -> Any:
            if not (self.gpu and task.name in GPU_TASKS and self._workers_have_gpus()):
                return super().submit(task, parameters, wait_for, **kw)
            import dask

            with dask.annotate(resources={"GPU": 1}):
                return super().submit(task, parameters, wait_for, **kw)

        def _workers_have_gpus(self) -> bool:
            if self._gpu_ok is None:
                workers = self.client.scheduler_info(n_workers=-1)["workers"].values()
                self._gpu_ok = any(w.get("resources", {}).get("GPU") for w in workers)
                if not self._gpu_ok:
                    logger.warning(
                        "no Dask worker has a GPU resource: start them with "
                        "--resources GPU=1; model tasks run unannotated"
                    )
            return self._gpu_ok

    return CurateDaskTaskRunner


try:  # Dask is an optional extra: without it there is no plugin to register
    from distributed import WorkerPlugin as _WorkerPlugin
except ImportError:  # pragma: no cover
    _WorkerPlugin = object


class PinGpu(_WorkerPlugin):
    """Dask worker plugin: worker `i` of a local cluster uses GPU `i mod count`."""

    name = "clip-curate-pin-gpu"

    def setup(self, worker: Any) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(int(worker.name) % torch.cuda.device_count())


@contextmanager
def dask_execution(runner: RunnerConfig, gpu: bool) -> Iterator[Any]:
    """A Dask task runner on `runner.address`, else on a local cluster for the run."""
    cls = dask_runner_class()
    if runner.address:
        logger.info("runner dask: joining the cluster at %s", runner.address)
        yield cls(address=runner.address, gpu=gpu)
        return
    from distributed import Client, LocalCluster

    n = local_workers(runner, gpu)
    kwargs: dict[str, Any] = {"resources": {"GPU": 1}} if gpu else {}
    with (
        _quiet("distributed"),
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            env=torch_threads_env(n),
            **kwargs,
        ) as cluster,
    ):
        if gpu:
            with Client(cluster) as client:
                client.register_plugin(PinGpu())
        logger.info("runner dask: local cluster of %d workers at %s", n, cluster.scheduler_address)
        yield cls(address=cluster.scheduler_address, gpu=gpu)


# --- Ray ----------------------------------------------------------------------------------


@functools.cache
def ray_runner_class() -> type:
    """RayTaskRunner plus GPU requests (built on first use: Ray is an optional extra)."""
    try:
        import ray  # noqa: F401
        from prefect_ray import RayTaskRunner
        from prefect_ray.context import remote_options
    except ImportError:
        raise ClusterError(RAY_MISSING) from None

    class CurateRayTaskRunner(RayTaskRunner):
        """RayTaskRunner that asks for one GPU (`num_gpus=1`) for the model tasks."""

        def __init__(self, *args: Any, gpu: bool = False, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.gpu = gpu
            self._gpu_ok: bool | None = None

        def duplicate(self) -> CurateRayTaskRunner:
            return type(self)(address=self.address, init_kwargs=self.init_kwargs, gpu=self.gpu)

        def submit(self, task: Any, parameters: Any, wait_for: Any = None, **kw: Any) -> Any:
            if not (self.gpu and task.name in GPU_TASKS and self._cluster_has_gpus()):
                return super().submit(task, parameters, wait_for, **kw)
            with remote_options(num_gpus=1):
                return super().submit(task, parameters, wait_for, **kw)

        def _cluster_has_gpus(self) -> bool:
            """A GPU request on a cluster without GPUs would wait forever: warn instead."""
            if self._gpu_ok is None:
                import ray

                self._gpu_ok = ray.cluster_resources().get("GPU", 0) > 0
                if not self._gpu_ok:
                    logger.warning("the Ray cluster has no GPUs: model tasks run on CPU slots")
            return self._gpu_ok

    return CurateRayTaskRunner


@contextmanager
def ray_execution(runner: RunnerConfig, gpu: bool) -> Iterator[Any]:
    """A Ray task runner on `runner.address`, else on a local Ray instance for the run."""
    cls = ray_runner_class()
    if runner.address:
        logger.info("runner ray: joining the cluster at %s", runner.address)
        yield cls(address=runner.address, gpu=gpu)
        return
    n = local_workers(runner, gpu)
    init: dict[str, Any] = {
        "num_cpus": n,  # n tasks at a time, each in a reused worker process
        "include_dashboard": False,
        "log_to_driver": False,
        "runtime_env": {"env_vars": torch_threads_env(n)},
    }
    if gpu:
        init["num_gpus"] = n
    logger.info("runner ray: local Ray instance with %d CPUs", n)
    yield cls(init_kwargs=init, gpu=gpu)


@contextmanager
def cluster_execution(runner: RunnerConfig, model: ModelConfig | None = None) -> Iterator[Any]:
    """The Prefect task runner for `runner.kind` dask or ray, with its cluster and API up.

    `model` decides the GPU annotations (`model.device: cuda`); without it there are none.
    """
    if runner.kind not in ("dask", "ray"):
        raise ValueError(f"cluster_execution handles dask and ray, not {runner.kind!r}")
    gpu = model is not None and model.device == "cuda"
    start = dask_execution if runner.kind == "dask" else ray_execution
    if runner.kind == "ray":
        ray_runner_class()  # a missing extra fails before any server starts
    with ExitStack() as stack:
        stack.enter_context(prefect_api(remote_cluster=is_remote(runner.address)))
        yield stack.enter_context(start(runner, gpu))
