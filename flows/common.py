"""Pieces both flows share: partition naming, run keys, task runners, Prefect artifacts."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from zoneinfo import ZoneInfo

from prefect.cache_policies import NO_CACHE

from schemas.config import CurateConfig, config_hash, redacted
from tasks.io import storage

PUBLISH_VERSION = 2  # bump when what a published partition holds changes meaning


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O-looking failures (a flaky store); bugs and bad configs fail at once."""
    try:
        state.result()
    except (OSError, TimeoutError, ConnectionError):
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


class InputError(RuntimeError):
    """Input root unreadable or empty: the run stops with one clear line."""


def list_inputs(
    pattern: str | list[str], partition: str, so: dict[str, Any], key: str = "pool.input"
) -> list[str]:
    """The partition's input files, sorted; an empty or unreadable root is an InputError."""
    pattern = with_date(pattern, partition)
    try:
        urls = storage.expand_inputs(pattern, so)
    except Exception as err:
        raise InputError(f"{key}: cannot list {pattern}: {type(err).__name__}: {err}") from None
    if not urls:
        raise InputError(f"{key}: no input files match {pattern}")
    return urls


def to_json(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, default=str).encode()


def summary_markdown(stats: dict[str, Any], uri: str) -> str:
    """The run summary shown as a Prefect artifact."""
    head = f"# {stats['flow']} {stats['dataset']} {stats['partition']}"
    rows = [f"| {k} | {v} |" for k, v in stats["counts"].items()]
    return "\n".join(
        [head, "", f"Published to `{uri}`", "", "| status | count |", "|---|---|", *rows]
    )


def today(tz: str) -> str:
    return dt.datetime.now(ZoneInfo(tz)).date().isoformat()


def resolve_partition(partition: str | None, tz: str) -> str:
    """The partition to run: as given, else the scheduled date of this flow run, else today.

    A scheduled run that starts late (or is retried the next day) still processes the date it
    was scheduled for: the scheduled start time, in the config's timezone, decides.
    """
    if partition:
        return partition
    from prefect.runtime import flow_run

    scheduled = flow_run.scheduled_start_time if flow_run.id else None
    if scheduled is not None:
        return scheduled.astimezone(ZoneInfo(tz)).date().isoformat()
    return today(tz)


def with_date(pattern: str | list[str], partition: str) -> str | list[str]:
    """Substitute `{date}` in input URIs with the partition."""
    if isinstance(pattern, list):
        return [p.replace("{date}", partition) for p in pattern]
    return pattern.replace("{date}", partition)


def cache_root(cfg: CurateConfig) -> str:
    return cfg.cache or storage.join(cfg.output, cfg.dataset, "_cache")


def output_config(cfg: CurateConfig, flow: str) -> dict[str, Any]:
    """The part of the config that decides a flow's published output (for the run key)."""
    data = redacted(cfg)
    keep = {"dataset", "model", flow}
    out = {k: v for k, v in data.items() if k in keep}
    out["model"] = {k: v for k, v in out["model"].items() if k != "batch_size"}
    return out


def run_key(inputs: list[dict[str, Any]], cfg_part: dict[str, Any], model: dict[str, Any]) -> str:
    """Identity of a partition's content: same key = same published samples."""
    return config_hash({"v": PUBLISH_VERSION, "inputs": inputs, "config": cfg_part, "model": model})


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

        return ThreadPoolTaskRunner(max_workers=cfg.runner.workers or 4)
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
