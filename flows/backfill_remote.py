"""Backfill against a Prefect server: one deployment run per date, with an idempotency key.

The key names the request (flow, dataset, date and the run key: input fingerprints, output
config, model identity, publish version), so a repeated or concurrent backfill attaches to
the run already made for it instead of adding one. A finished run is reused only while its
partition is still published under that run key: the same rule (`flows.run`) that a local
run uses to skip.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from flows.dates import Mode, Row, counts_detail, one_line
from flows.plan import already_published, plan_run
from flows.serve import deployment_name, deployment_parameters
from schemas.config import ConfigError, CurateConfig
from tasks.publish.manifest import partition_url, read_manifest

logger = logging.getLogger(__name__)

POLL_S = 2.0
MAX_RESUBMITS = 50


def use_deployment(cfg: CurateConfig, flow: str, mode: Mode) -> bool:
    """Server mode when asked (`--deployment`), or by default when the server has it."""
    from prefect.settings import PREFECT_API_URL

    if mode == "local":
        return False
    api, name = PREFECT_API_URL.value(), deployment_name(flow, cfg.dataset)
    if not api:
        if mode == "deployment":
            raise ConfigError("backfill --deployment: PREFECT_API_URL is not set")
        return False
    found = _deployment_exists(name, api)
    if not found and mode == "deployment":
        raise ConfigError(f"backfill: no deployment {name} on {api} (start `curate serve`)")
    logger.info("backfill %s via %s", "deployment " + name if found else "in-process runs", api)
    return found


def _deployment_exists(name: str, api: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(name)
    except ObjectNotFound:
        return False
    except Exception as err:
        raise ConfigError(f"backfill: cannot reach the Prefect API at {api}: {err}") from None
    return True


def remote_runner(
    cfg: CurateConfig, flow: str, force: bool, timeout: float | None
) -> Callable[[str], Row]:
    token = uuid.uuid4().hex[:8]  # --force: new runs, shared by this invocation's dates

    def one(date: str) -> Row:
        return run_remote(cfg, flow, date, force, timeout, force_token=token)

    return one


def run_remote(
    cfg: CurateConfig,
    flow: str,
    date: str,
    force: bool = False,
    timeout: float | None = None,
    force_token: str = "",
) -> Row:
    """One date as a deployment run; a finished run for the same request is reused."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    so = cfg.storage_options
    plan = plan_run(cfg, flow, date)
    final = plan.final
    key = idempotency_key(cfg, flow, date, plan.key) + (f"-force-{force_token}" if force else "")
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment_name(flow, cfg.dataset))
        key, done = settle_key(
            key,
            find=lambda k: _find_run(client, dep.id, k),
            matches=lambda: already_published(plan, so),
        )
    if done is not None:
        return Row(date, "skipped", f"{counts_detail(cfg, flow, date)} (run {done.name})".strip())
    before = read_manifest(final, so)
    logger.info("%s: deployment run with idempotency key %s", date, key)
    run = run_deployment(
        deployment_name(flow, cfg.dataset),
        parameters=deployment_parameters(cfg, date, force),
        idempotency_key=key,
        flow_run_name=f"{cfg.dataset}-{date}",
        timeout=timeout,
        poll_interval=POLL_S,
        as_subflow=False,
    )
    return outcome(cfg, flow, date, run, before, timeout)


def idempotency_key(cfg: CurateConfig, flow: str, date: str, run_key: str) -> str:
    """Same flow, dataset, date and run key (inputs, output config, model): same key."""
    return f"{flow}-{cfg.dataset}-{date}-{run_key[:16]}"


def settle_key(
    key: str, find: Callable[[str], Any], matches: Callable[[], bool]
) -> tuple[str, Any]:
    """The key to submit under, or the finished run whose partition is still what we ask for.

    A finished run under the key that failed, or whose partition has since been replaced or
    removed (`matches()` is false), must not block a new attempt: the next key derives from
    that run's id, so two backfills racing on the same date still agree on one run. A run
    still in flight is attached to by submitting under its key.
    """
    base = key
    for _ in range(MAX_RESUBMITS):
        run = find(key)
        if run is None or run.state is None or not run.state.is_final():
            return key, None
        if run.state.is_completed() and matches():
            return key, run
        key = f"{base}-after-{run.id.hex[:8]}"
    raise RuntimeError(f"more than {MAX_RESUBMITS} finished runs under {base}")


def _find_run(client: Any, deployment_id: Any, key: str) -> Any:
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterIdempotencyKey,
    )

    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(idempotency_key=FlowRunFilterIdempotencyKey(any_=[key])),
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        limit=1,
    )
    return runs[0] if runs else None


def outcome(
    cfg: CurateConfig, flow: str, date: str, run: Any, before: dict | None, timeout: float | None
) -> Row:
    """ran / skipped / failed from the run's final state and the partition's manifest."""
    state = run.state
    if state is None or not state.is_final():
        name = state.name if state else "unknown"
        return Row(date, "failed", f"run {run.name} still {name} after {timeout}s")
    if not state.is_completed():
        return Row(date, "failed", f"run {run.name} {state.name}: {one_line(state.message or '')}")
    after = read_manifest(partition_url(cfg.output, cfg.dataset, flow, date), cfg.storage_options)
    if after is None:
        return Row(date, "failed", f"run {run.name} completed but the partition is not published")
    same = before is not None and _identity(before) == _identity(after)
    detail = f"{counts_detail(cfg, flow, date)} (run {run.name})".strip()
    return Row(date, "skipped" if same else "ran", detail)


def _identity(manifest: dict) -> tuple:
    return manifest.get("created"), manifest.get("run_key")
