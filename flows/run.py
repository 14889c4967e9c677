"""The run skeleton both flows share: plan a partition, skip it when already published,
stage its outputs, and commit them with lineage (after the publish gate)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flows.common import list_inputs, output_config, resolve_partition, run_key, to_json
from schemas.config import CurateConfig, config_hash, redacted
from tasks.io import storage
from tasks.model.clip import model_identity
from tasks.publish.commit import (
    Staging,
    abort,
    begin,
    code_version,
    commit,
    partition_url,
    read_manifest,
)
from tasks.publish.gate import apply_gate
from tasks.publish.writer import WrittenFile, describe_file, write_file


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


def plan_run(cfg: CurateConfig, flow: str, partition: str | None) -> RunPlan:
    """Resolve the partition, list and fingerprint its inputs, derive the run key."""
    section = getattr(cfg, flow)
    partition = resolve_partition(partition, cfg.schedule.timezone)
    so = cfg.storage_options
    urls = list_inputs(section.input, partition, so, f"{flow}.input")
    model = model_identity(cfg.model)
    inputs = [storage.fingerprint(u, so) for u in urls]
    key = run_key(inputs, output_config(cfg, flow), model)
    final = partition_url(cfg.output, cfg.dataset, flow, partition)
    return RunPlan(flow, partition, urls, inputs, model, key, final)


def already_published(plan: RunPlan, so: dict[str, Any]) -> bool:
    """True when the partition is published with the same inputs, config and model."""
    manifest = read_manifest(plan.final, so)
    return bool(manifest and manifest.get("run_key") == plan.key)


def skipped(plan: RunPlan) -> dict[str, Any]:
    return {"status": "skipped", "partition": plan.partition, "uri": plan.final}


@contextmanager
def staged(plan: RunPlan, so: dict[str, Any]) -> Iterator[Staging]:
    """A staging area for the partition, dropped again if anything fails before the commit."""
    stage = begin(plan.final, so)
    try:
        yield stage
    except BaseException:
        abort(stage)
        raise


def finish(
    cfg: CurateConfig,
    plan: RunPlan,
    stage: Staging,
    outputs: list[WrittenFile],
    stats: dict[str, Any],
    write_report: Callable[[Staging], list[str]],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write stats and report, then the manifest, and commit (the gate may hold it)."""
    so = stage.storage_options
    outputs.append(write_file(stage.url("stats.json"), "stats.json", to_json(stats), so))
    outputs += [describe_file(stage.url(rel), rel, so) for rel in write_report(stage)]
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
    apply_gate(cfg, plan.flow, stats, stage)
    commit(stage, manifest, outputs)


def total_time(timings: dict[str, float]) -> dict[str, float]:
    timings["total_s"] = sum(v for k, v in timings.items() if k != "total_s")
    return timings
