"""The run skeleton both flows share: plan a partition, skip it when already published,
write a new version of it, and commit that with lineage (after the publish gate)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flows.common import list_inputs, output_config, resolve_partition, run_key, to_json
from schemas.config import CurateConfig, config_hash, redacted
from tasks import cancel
from tasks.io import storage
from tasks.io.lock import partition_lock
from tasks.model.clip import model_identity
from tasks.publish.commit import Version, abort, begin, commit
from tasks.publish.gate import GateHeld, apply_gate
from tasks.publish.manifest import code_version, partition_url, read_manifest, read_published
from tasks.publish.writer import WrittenFile, describe_file, write_file
from tasks.video.sidecar import video_fingerprint


@dataclass
class RunPlan:
    """One partition of one flow: its inputs and the key of what it would publish."""

    flow: str
    partition: str
    urls: list[str]
    inputs: list[dict[str, Any]]  # fingerprints, in input order
    model: dict[str, Any]
    key: str
    final: str


def input_fingerprint(flow: str, url: str, so: dict[str, Any]) -> dict[str, Any]:
    """What an input's published output depends on: its bytes, and a video's sidecar."""
    return video_fingerprint(url, so) if flow == "video" else storage.fingerprint(url, so)


def plan_run(cfg: CurateConfig, flow: str, partition: str | None) -> RunPlan:
    """Resolve the partition, list and fingerprint its inputs, derive the run key.

    The model identity here is the configured one (`device: cuda` is not checked against
    this machine, which may be a CPU-only driver); workers resolve it where they run.
    """
    section = getattr(cfg, flow)
    partition = resolve_partition(partition, cfg.schedule.timezone)
    so = cfg.storage_options
    urls = list_inputs(section.input, partition, so, f"{flow}.input")
    model = model_identity(cfg.model, resolved=False)
    inputs = [input_fingerprint(flow, u, so) for u in urls]
    key = run_key(inputs, output_config(cfg, flow), model)
    final = partition_url(cfg.output, cfg.dataset, flow, partition)
    return RunPlan(flow, partition, urls, inputs, model, key, final)


def already_published(plan: RunPlan, so: dict[str, Any]) -> bool:
    """True when the partition is published with the same inputs, config and model."""
    manifest = read_manifest(plan.final, so)
    return bool(manifest and manifest.get("run_key") == plan.key)


def report_url(final: str, so: dict[str, Any]) -> str | None:
    """Where the published version's report is (readers follow the manifest)."""
    published = read_published(final, so)
    return published.url("report.md") if published else None


def skipped(plan: RunPlan, so: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": "skipped",
        "partition": plan.partition,
        "uri": plan.final,
        "report": report_url(plan.final, so),
    }


Body = Callable[[CurateConfig, RunPlan, bool, str], dict[str, Any]]


def run_partition(
    cfg: CurateConfig, flow: str, partition: str | None, force: bool, body: Body, log: Any
) -> dict[str, Any]:
    """Plan, lock, skip what is published, else `body(cfg, plan, force, cancel_token)`."""
    plan = plan_run(cfg, flow, partition)
    log.info("partition %s: %d inputs", plan.partition, len(plan.urls))
    with partition_lock(plan.final, cfg.storage_options):
        if not force and already_published(plan, cfg.storage_options):
            log.info("partition %s already published with the same inputs", plan.partition)
            return skipped(plan, cfg.storage_options)
        token = cancel.new_token()
        result = body(cfg, plan, force, token)
        # only a run that ended normally forgets its token: after a failure the task runner
        # is still waiting for in-flight tasks, which must go on seeing the cancellation
        cancel.forget(token)
        return result


POLL_S = 1.0


def gather(futures: Iterable[Any], token: str) -> list[Any]:
    """Every future's result, in order. If waiting fails (a task failed, SIGTERM, Ctrl-C),
    the run's other in-flight tasks are told to stop before the error goes on.

    Waiting is done in short slices: a signal delivered to another thread only runs its
    Python handler once the main thread runs Python code again, so an unbounded wait
    would hold a SIGTERM until every in-flight shard had finished.
    """
    futures = list(futures)
    try:
        for future in futures:
            future.wait(POLL_S)
            while not future.state.is_final():
                future.wait(POLL_S)
        return [f.result() for f in futures]
    except BaseException:
        cancel.cancel(token)
        raise


@contextmanager
def versioned(plan: RunPlan, so: dict[str, Any]) -> Iterator[Version]:
    """A new version of the partition; its files are removed again if the run fails before
    the commit (a held version stays for inspection)."""
    version = begin(plan.final, so)
    try:
        yield version
    except GateHeld:
        raise
    except BaseException:
        abort(version)
        raise


def finish(
    cfg: CurateConfig,
    plan: RunPlan,
    version: Version,
    outputs: list[WrittenFile],
    stats: dict[str, Any],
    write_report: Callable[[Version], list[str]],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write stats and report, then commit with the manifest (the gate may hold it)."""
    so = version.storage_options
    outputs.append(write_file(version.url("stats.json"), "stats.json", to_json(stats), so))
    outputs += [describe_file(version.url(rel), rel, so) for rel in write_report(version)]
    manifest = {
        "flow": plan.flow,
        "dataset": cfg.dataset,
        "partition": plan.partition,
        "config": redacted(cfg),
        "config_hash": config_hash(output_config(cfg, plan.flow)),
        "model": plan.model,
        "code_version": code_version(),
        "run_key": plan.key,
        "inputs": plan.inputs,
        **(extra or {}),
    }
    apply_gate(cfg, plan.flow, stats, version)
    commit(version, manifest, outputs)


def total_time(timings: dict[str, float]) -> dict[str, float]:
    timings["total_s"] = sum(v for k, v in timings.items() if k != "total_s")
    return timings
