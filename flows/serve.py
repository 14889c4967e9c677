"""`curate serve`: both flows as Prefect deployments with the config's cron schedules.

Deployment names are predictable, one per flow and dataset: `curate-pool/<dataset>` and
`curate-video/<dataset>` (flow name / deployment name). Their parameters carry the whole
config (so every run is reproducible from the run's page) and `partition=None`, so a
scheduled run processes the date it was scheduled for (`flows.common.resolve_partition`).
A deployment concurrency limit (1, collision strategy ENQUEUE) keeps at most one run of a
flow and dataset at a time; later ones wait in the queue instead of being dropped.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from schemas.config import ConfigError, CurateConfig, find_credentials

logger = logging.getLogger(__name__)

FLOWS = ("pool", "video")
FLOW_NAMES = {"pool": "curate-pool", "video": "curate-video"}
ENTRYPOINTS = {"pool": "flows/pool.py:pool_flow", "video": "flows/video.py:video_flow"}
WORK_POOL = "curate-process"
COLLISION = "ENQUEUE"


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment, independent of how it is served (`serve` or `prefect deploy`)."""

    flow: str
    name: str
    cron: str | None
    timezone: str
    parameters: dict[str, Any] = field(hash=False)
    concurrency_limit: int = 1

    @property
    def full_name(self) -> str:
        return deployment_name(self.flow, self.name)

    @property
    def description(self) -> str:
        when = f"'{self.cron}' ({self.timezone})" if self.cron else "on demand only"
        return f"{self.flow} curation of dataset '{self.name}', {when}"


def deployment_name(flow: str, dataset: str) -> str:
    """`<flow name>/<deployment name>`, as `run_deployment` and `prefect deployment` take it."""
    return f"{FLOW_NAMES[flow]}/{dataset}"


def deployment_parameters(
    cfg: CurateConfig, partition: str | None = None, force: bool = False
) -> dict[str, Any]:
    """Flow parameters for a deployment or a deployment run.

    They are stored by the Prefect server and shown in its UI, so a config holding
    credentials is refused: give them through the environment instead.
    """
    data = cfg.model_dump(mode="json")
    # the detector config validation uses, again: a config built without validation
    # (model_construct) must not reach the server either
    found = find_credentials(data)
    if found:
        raise ConfigError(
            found[0].line("deployment parameters are stored on the Prefect server, so ")
        )
    return {"config": data, "partition": partition, "force": force}


def flows_in(cfg: CurateConfig) -> list[str]:
    """The flows this config configures (a flow without its section is not deployed)."""
    return [f for f in FLOWS if getattr(cfg, f) is not None]


def deployment_specs(cfg: CurateConfig, concurrency_limit: int = 1) -> list[DeploymentSpec]:
    if concurrency_limit < 1:
        raise ConfigError("serve: --concurrency-limit must be at least 1")
    check_schedule(cfg)
    return [
        DeploymentSpec(
            flow=f,
            name=cfg.dataset,
            cron=getattr(cfg.schedule, f),
            timezone=cfg.schedule.timezone,
            parameters=deployment_parameters(cfg),
            concurrency_limit=concurrency_limit,
        )
        for f in flows_in(cfg)
    ]


def check_schedule(cfg: CurateConfig) -> None:
    """Bad cron strings and timezones fail before anything is registered, naming the key."""
    from zoneinfo import ZoneInfo

    from prefect.schedules import validate_cron_string

    try:
        ZoneInfo(cfg.schedule.timezone)
    except (ValueError, KeyError):
        raise ConfigError(
            f"config: invalid value for 'schedule.timezone': unknown timezone "
            f"{cfg.schedule.timezone!r} (use an IANA name such as Europe/Berlin)"
        ) from None
    for f in flows_in(cfg):
        cron = getattr(cfg.schedule, f)
        try:
            if cron:
                validate_cron_string(cron)
        except ValueError as err:
            raise ConfigError(f"config: invalid value for 'schedule.{f}': {err}") from None


def flow_object(flow: str) -> Any:
    if flow == "pool":
        from flows.pool import pool_flow

        return pool_flow
    from flows.video import video_flow

    return video_flow


def schedules(spec: DeploymentSpec) -> list[Any]:
    from prefect.schedules import Cron

    return [Cron(spec.cron, timezone=spec.timezone)] if spec.cron else []


def concurrency(spec: DeploymentSpec) -> Any:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    return ConcurrencyLimitConfig(
        limit=spec.concurrency_limit, collision_strategy=ConcurrencyLimitStrategy(COLLISION)
    )


def _require_server() -> str:
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        raise ConfigError(
            "serve: PREFECT_API_URL is not set; schedules need a running Prefect server "
            "(see infra/README.md: `prefect server start`)"
        )
    return api


def serve(
    cfg: CurateConfig,
    config_path: str | None = None,
    concurrency_limit: int = 1,
    limit: int | None = None,
) -> None:
    """Register the deployments and run their flow runs in this process until interrupted.

    Served runs use the config's task runner (`runner:`), cluster included, for as long as
    this process lives. `limit` caps the runs this process executes at once.
    """
    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    from flows.common import execution

    specs = deployment_specs(cfg, concurrency_limit)
    if not specs:
        raise ConfigError("serve: the config has neither a 'pool' nor a 'video' section")
    api = _require_server()
    with execution(cfg) as task_runner:
        runner = Runner(name=f"curate-{cfg.dataset}", limit=limit, pause_on_shutdown=True)
        for spec in specs:
            _add(runner, spec, task_runner, config_path)
            logger.info("serving %s: %s", spec.full_name, spec.description)
        logger.info("runs are executed here; Prefect API at %s; Ctrl-C stops", api)
        try:
            asyncio.run(_serve(runner, api))
        except (KeyboardInterrupt, TerminationSignal):
            logger.info("stopped serving (schedules paused)")


STOP_WAIT_S = 10.0


async def _serve(runner: Any, api: str) -> None:
    """The runner until it stops, or until its API stops answering: then it is cancelled
    without pausing the schedules (that would need the API) and the command fails at once."""
    from infra.server import ApiGone, watch_api

    serving = asyncio.create_task(runner.start())
    watching = asyncio.create_task(watch_api(api))
    await asyncio.wait({serving, watching}, return_when=asyncio.FIRST_COMPLETED)
    if serving.done():
        watching.cancel()
        return serving.result()
    runner.pause_on_shutdown = False
    serving.cancel()
    await asyncio.wait({serving}, timeout=STOP_WAIT_S)
    raise ApiGone(watching.result())


def _add(runner: Any, spec: DeploymentSpec, task_runner: Any, config_path: str | None) -> None:
    from prefect.types.entrypoint import EntrypointType

    source = f" (config {config_path})" if config_path else ""
    runner.add_flow(
        flow_object(spec.flow).with_options(task_runner=task_runner),
        name=spec.name,
        schedules=schedules(spec),
        concurrency_limit=concurrency(spec),
        parameters=spec.parameters,
        description=spec.description + source,
        tags=["curate", spec.flow, spec.name],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def prefect_yaml(
    cfg: CurateConfig, work_pool: str = WORK_POOL, concurrency_limit: int = 1
) -> dict[str, Any]:
    """The same deployments as a `prefect.yaml` for `prefect deploy` and a process work pool.

    No `pull` section: `prefect deploy`, run from the repository root, adds a
    set_working_directory step pointing there, which is where the entrypoints live.
    """
    deployments = [
        {
            "name": spec.name,
            "entrypoint": ENTRYPOINTS[spec.flow],
            "description": spec.description,
            "tags": ["curate", spec.flow, spec.name],
            "parameters": spec.parameters,
            "schedules": [{"cron": spec.cron, "timezone": spec.timezone, "active": True}]
            if spec.cron
            else [],
            "concurrency_limit": {"limit": spec.concurrency_limit, "collision_strategy": COLLISION},
            "work_pool": {"name": work_pool, "work_queue_name": None, "job_variables": {}},
        }
        for spec in deployment_specs(cfg, concurrency_limit)
    ]
    return {"name": "clip-curate", "build": None, "push": None, "deployments": deployments}


def prefect_yaml_text(cfg: CurateConfig, work_pool: str = WORK_POOL) -> str:
    import yaml

    class _NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return yaml.dump(prefect_yaml(cfg, work_pool), Dumper=_NoAliases, sort_keys=False)
