"""Publish gate: hold a partition whose key figures jumped away from the previous one.

A nightly job that suddenly keeps twice as much, scores everything lower or finds ten
times the events is more often broken (a changed upstream, a bad model file) than right.
Before `commit`, the partition's figures are compared with those of the latest published
partition before it (same dataset and flow). Beyond the bounds of `gate:` the partition is
held: its version folder is kept, unpublished, for inspection with `_HELD.json` saying why
(the previously published version stays published), and the run fails with one line.
Re-running with `--set gate.override=true` publishes it.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass
from typing import Any

from schemas.config import CurateConfig, GateConfig
from tasks.io import storage
from tasks.publish.catalog import flow_folder, read_catalog
from tasks.publish.commit import Version, hold
from tasks.publish.manifest import partition_url

logger = logging.getLogger(__name__)

HELD = "_HELD.json"


class GateHeld(RuntimeError):
    """The partition moved too far from the previous one and was held unpublished."""


@dataclass
class Check:
    """One figure compared with the previous partition (a row of the gate's table)."""

    figure: str
    previous: float | None
    current: float | None
    bound: str
    ok: bool

    def reason(self) -> str:
        return f"{self.figure} {self.previous} -> {self.current} (bound {self.bound})"


def figures(flow: str, stats: dict[str, Any]) -> dict[str, float | None]:
    """The key figures of a partition's stats.json that the gate watches."""
    if flow == "video":
        return {"events_per_hour": stats.get("events_per_hour")}
    quantiles = (stats.get("clip_score") or {}).get("quantiles") or {}
    return {
        "kept_fraction": stats.get("kept_fraction"),
        **{f"clip_score.{q}": v for q, v in quantiles.items()},
    }


def _check(name: str, prev: float | None, cur: float | None, gate: GateConfig) -> Check:
    """Absolute change for fractions and scores, change relative to before for event rates."""
    if name == "events_per_hour":
        bound = gate.max_events_per_hour_change
        label = f"±{bound:.0%} of previous"
        if prev is None or cur is None:
            return Check(name, prev, cur, label, True)
        ok = abs(cur - prev) <= bound * prev if prev > 0 else cur == 0
        return Check(name, prev, cur, label, ok)
    bound = (
        gate.max_kept_fraction_change if name == "kept_fraction" else gate.max_score_quantile_change
    )
    if prev is None or cur is None:
        return Check(name, prev, cur, f"±{bound:g}", True)
    return Check(name, prev, cur, f"±{bound:g}", abs(cur - prev) <= bound + 1e-12)


def compare(
    flow: str, current: dict[str, Any], previous: dict[str, Any], gate: GateConfig
) -> list[Check]:
    """Every watched figure of `current` against `previous` stats."""
    cur, prev = figures(flow, current), figures(flow, previous)
    return [_check(name, prev.get(name), value, gate) for name, value in cur.items()]


def previous_partition(
    cfg: CurateConfig, flow: str, partition: str
) -> tuple[str, dict[str, Any]] | None:
    """(URL, stats) of the latest published partition before `partition`, if any (the
    catalog names it: one read, whatever the history's length)."""
    so = cfg.storage_options
    cat = read_catalog(flow_folder(cfg.output, cfg.dataset, flow), so)
    for name in reversed(cat.before(partition)):
        uri = partition_url(cfg.output, cfg.dataset, flow, name)
        version = cat.entries[name].get("version")
        url = (
            storage.join(uri, version, "stats.json") if version else storage.join(uri, "stats.json")
        )
        try:
            return uri, storage.read_json(url, so)
        except (OSError, ValueError) as err:
            logger.warning("gate: cannot read the stats of %s: %s", uri, err)
    return None


def gate_artifact(flow: str, dataset: str, partition: str, prev: str, checks: list[Check]) -> None:
    """The comparison as a Prefect table artifact, when running inside a flow run."""
    if "prefect" not in sys.modules:  # not running under Prefect
        return
    try:
        from prefect.artifacts import create_table_artifact
        from prefect.context import FlowRunContext

        if FlowRunContext.get() is None:  # a plain call: no run to attach it to
            return

        key = f"gate-{flow}-{dataset}".lower().replace("_", "-").replace(".", "-")
        rows = [asdict(c) for c in checks]
        create_table_artifact(rows, key=key, description=f"{flow} {partition} vs {prev}")
    except Exception as err:
        logger.warning("could not create the gate artifact: %s", err)


def apply_gate(cfg: CurateConfig, flow: str, stats: dict[str, Any], version: Version) -> None:
    """Compare `stats` with the previous published partition; raise GateHeld to hold it."""
    gate, partition = cfg.gate, stats["partition"]
    if not gate.enabled:
        return
    found = previous_partition(cfg, flow, partition)
    if found is None:
        logger.info("gate: %s is the first %s partition, nothing to compare", partition, flow)
        return
    prev_url, prev_stats = found
    checks = compare(flow, stats, prev_stats, gate)
    gate_artifact(flow, cfg.dataset, partition, prev_url, checks)
    failed = [c for c in checks if not c.ok]
    reason = "; ".join(c.reason() for c in failed)
    if not failed or gate.override:
        if failed:
            logger.warning("gate overridden for %s: %s", partition, reason)
        return
    record = {"previous": prev_url, "reason": reason, "checks": [asdict(c) for c in checks]}
    where = hold(version, record)
    raise GateHeld(
        f"partition {version.final} held by the publish gate (vs {prev_url}): {reason}; "
        f"unpublished version kept in {where}; re-run with --set gate.override=true to publish"
    )
