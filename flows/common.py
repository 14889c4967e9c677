"""Prefect pieces both flows share: task retries, task runners, artifacts, the cache root.

Planning (inputs, run keys, partition names) lives in `flows.plan`, which imports no Prefect."""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.cache_policies import NO_CACHE

from flows.plan import InputError  # noqa: F401 (the flows raise it)
from schemas.config import CurateConfig
from tasks.io import storage

# A full disk or quota, a read-only filesystem: no retry seconds later makes room.
LASTING_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O-looking failures (a flaky store); bugs, bad configs and a full disk fail at
    once."""
    try:
        state.result()
    except OSError as err:
        return err.errno not in LASTING_ERRNOS
    except (TimeoutError, ConnectionError):
        return True
    except Exception:  # anything else is not worth a retry
        return False
    return False


IO_RETRIES: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [2, 10],
    "retry_condition_fn": is_transient,
    "cache_policy": NO_CACHE,
}


def to_json(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, default=str).encode()


def summary_markdown(stats: dict[str, Any], uri: str) -> str:
    """The run summary shown as a Prefect artifact."""
    head = f"# {stats['flow']} {stats['dataset']} {stats['partition']}"
    rows = [f"| {k} | {v} |" for k, v in stats["counts"].items()]
    return "\n".join(
        [head, "", f"Published to `{uri}`", "", "| status | count |", "|---|---|", *rows]
    )


def model_runs_here(cfg: CurateConfig) -> bool:
    """Whether the configured model can run in this process (a CUDA model needs a GPU here):
    where it can, checks and prompt embeddings happen here; else on a worker."""
    import torch

    return cfg.model.device != "cuda" or torch.cuda.is_available()


def cache_root(cfg: CurateConfig) -> str:
    return cfg.cache or storage.join(cfg.output, cfg.dataset, "_cache")


@contextmanager
def execution(cfg: CurateConfig) -> Iterator[Any]:
    """The task runner for a run, with what it needs around it: a cluster, and a Prefect API
    (PREFECT_API_URL, else a temporary server that dies with this process)."""
    if cfg.runner.kind in ("dask", "ray"):
        from infra.cluster import cluster_execution

        with cluster_execution(cfg.runner, cfg.model) as runner:
            yield runner
    else:
        from infra.server import run_api

        with run_api():
            yield task_runner(cfg)


def task_runner(cfg: CurateConfig) -> Any:
    """The Prefect task runner for `runner.kind` (threads by default)."""
    kind = cfg.runner.kind
    if kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        from tasks.parallel import cpu_count, score_sizing

        device = "cuda" if cfg.model.device == "cuda" else "cpu"
        return ThreadPoolTaskRunner(
            max_workers=cfg.runner.workers or score_sizing(cpu_count(), device)[0]
        )
    if kind == "processes":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=cfg.runner.workers or 2)
    raise ValueError(f"runner.kind {kind!r} needs execution(cfg)")


def publish_artifacts(flow: str, stats: dict[str, Any], summary_md: str) -> None:
    """Counts table and summary markdown as Prefect artifacts (best effort)."""
    try:
        from prefect.artifacts import create_markdown_artifact, create_table_artifact

        key = f"{flow}-{stats['dataset']}".lower().replace("_", "-").replace(".", "-")
        rows = [{"status": k, "count": v} for k, v in stats["counts"].items()]
        create_table_artifact(rows, key=f"{key}-counts", description=f"{flow} counts")
        create_markdown_artifact(summary_md, key=f"{key}-summary", description=f"{flow} summary")
    except Exception as err:
        logging.getLogger(__name__).warning("could not create Prefect artifacts: %s", err)
