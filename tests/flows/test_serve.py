"""`curate serve`, infra/prefect.yaml and backfill through deployments, on a real Prefect server."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from flows.backfill import backfill
from flows.cli import main
from flows.serve import ENTRYPOINTS, FLOW_NAMES, deployment_parameters, prefect_yaml, serve
from infra.server import stop_process
from schemas.config import ConfigError, parse_config
from tests.helpers import ROOT, published_dir
from tests.pool_factory import make_samples, write_tar

pytest_plugins = ["tests.server_fixture"]  # the `prefect_server` fixture

TZ = "America/New_York"
CRONS = {"pool": "30 1 * * *", "video": "45 4 * * 1-5"}
SIZES = {"2026-01-05": 4, "2026-01-06": 3, "2026-01-10": 6}  # inputs per date


def serve_config(root: Path, tiny_model: dict, dataset: str = "srv") -> dict:
    return {
        "dataset": dataset,
        "output": str(root / "out"),
        "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 8},
        "pool": {"input": str(root / "in" / "{date}" / "*.tar"), "clip_filter": {"threshold": 0}},
        "video": {"input": str(root / "video" / "{date}" / "*.mp4")},
        "schedule": {**CRONS, "timezone": TZ},
    }


def published(root: Path, date: str, dataset: str = "srv") -> Path:
    return root / "out" / dataset / "pool" / date


@dataclass
class Served:
    root: Path
    config: dict
    proc: subprocess.Popen
    log: Path


@pytest.fixture(scope="module")
def served(request, tmp_path_factory, tiny_model):
    """`curate serve` in a subprocess against the shared server, for this module's tests."""
    from tests.server_fixture import shared_server  # here, after pytest_plugins imported it

    server = shared_server(request.config)
    root = tmp_path_factory.mktemp("served")
    for i, (date, n) in enumerate(SIZES.items()):
        (root / "in" / date).mkdir(parents=True)
        write_tar(root / "in" / date / "00000.tar", make_samples(n, seed=20 + i))
    config = serve_config(root, tiny_model)
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PREFECT_API_URL": server.api_url, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    log = root / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "-c", str(root / "config.yaml")],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    yield Served(root, config, proc, log)
    stop_process(proc)


def wait_for_deployments(served: Served, names: list[str], timeout: float = 120.0) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            assert served.proc.poll() is None, served.log.read_text()[-3000:]
            try:
                return {n: client.read_deployment_by_name(n) for n in names}
            except ObjectNotFound:
                assert time.monotonic() < deadline, served.log.read_text()[-3000:]
                time.sleep(0.5)


def run_pool_deployment(**kwargs):
    from prefect.deployments import run_deployment

    run = run_deployment("curate-pool/srv", timeout=240, poll_interval=1, **kwargs)
    assert run.state.is_completed(), run.state
    return run


@pytest.mark.server
def test_serve_registers_both_deployments_with_schedules(prefect_server, served):
    names = {f: f"curate-{f}/srv" for f in ("pool", "video")}
    deployments = wait_for_deployments(served, list(names.values()))
    assert (prefect_server.home / "prefect.db").exists()  # its own SQLite, not the harness's
    for flow, name in names.items():
        d = deployments[name]
        got = [(s.schedule.cron, s.schedule.timezone, s.active) for s in d.schedules]
        assert got == [(CRONS[flow], TZ, True)]
        assert d.global_concurrency_limit.limit == 1
        assert d.concurrency_options.collision_strategy.value == "ENQUEUE"
        assert d.parameters["partition"] is None and d.parameters["force"] is False
        assert parse_config(d.parameters["config"]) == parse_config(served.config)
        assert d.entrypoint == f"flows.{flow}.{flow}_flow" and not d.paused


@pytest.mark.server
def test_scheduled_run_takes_its_date_from_the_schedule_in_the_config_timezone(
    prefect_server, served
):
    wait_for_deployments(served, ["curate-pool/srv"])
    # 03:00 UTC on Jan 6 is 22:00 on Jan 5 in New York: the partition is 2026-01-05
    when = dt.datetime(2026, 1, 6, 3, 0, tzinfo=dt.UTC)
    run = run_pool_deployment(scheduled_time=when)
    assert run.parameters.get("partition") is None
    assert (published(served.root, "2026-01-05") / "_SUCCESS").exists()
    assert not published(served.root, "2026-01-06").exists()


def count_runs(name: str) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(name)
        ids = DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))
        return len(client.read_flow_runs(deployment_filter=ids))


@pytest.mark.server
def test_backfill_runs_the_deployment_per_date_and_a_repeat_reuses_the_runs(prefect_server, served):
    wait_for_deployments(served, ["curate-pool/srv"])
    cfg = parse_config(served.config)
    date = "2026-01-10"
    (row,) = backfill(cfg, "pool", date, date, mode="deployment")
    assert (row.status, row.detail.split()[0]) == ("ran", f"input={SIZES[date]}")
    final = published(served.root, date)
    assert (final / "_SUCCESS").exists()
    assert json.loads((final / "manifest.json").read_text())["partition"] == date
    part = published_dir(final)
    assert json.loads((part / "stats.json").read_text())["counts"]["input"] == SIZES[date]

    # the same request again: the finished run is reused (no new run); no inputs: failed
    before = count_runs("curate-pool/srv")
    rows = backfill(cfg, "pool", date, "2026-01-12", max_parallel=2, mode="deployment")
    assert [r.status for r in rows] == ["skipped", "failed", "failed"]
    assert "no input files match" in rows[1].detail
    assert count_runs("curate-pool/srv") == before


def deploy(prefect_file: Path | str, api_url: str) -> None:
    """`prefect work-pool create` + `prefect deploy --all`, from the repository root."""
    env = {**os.environ, "PREFECT_API_URL": api_url}
    prefect = [sys.executable, "-m", "prefect", "--no-prompt"]
    for args in (
        ["work-pool", "create", "curate-process", "--type", "process", "--overwrite"],
        ["deploy", "--all", "--prefect-file", str(prefect_file)],
    ):
        done = subprocess.run([*prefect, *args], cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.server
def test_prefect_yaml_deploys_to_a_process_work_pool(prefect_server):
    deploy("infra/prefect.yaml", prefect_server.api_url)

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for flow, cron in (("pool", "0 2 * * *"), ("video", "0 3 * * *")):
            d = client.read_deployment_by_name(f"curate-{flow}/nightly")
            assert d.work_pool_name == "curate-process"
            assert [(s.schedule.cron, s.schedule.timezone) for s in d.schedules] == [(cron, "UTC")]
            assert d.global_concurrency_limit.limit == 1
            assert d.concurrency_options.collision_strategy.value == "ENQUEUE"
            assert d.entrypoint == ENTRYPOINTS[flow]
            assert d.parameters["partition"] is None
            step = d.pull_steps[0]["prefect.deployments.steps.set_working_directory"]
            assert Path(step["directory"]) == ROOT


@pytest.mark.slow
@pytest.mark.server
def test_process_worker_runs_a_deployed_flow(prefect_server, tmp_path, tiny_model):
    from prefect.deployments import run_deployment

    from infra.server import process_worker

    date = "2026-02-01"
    (tmp_path / "in" / date).mkdir(parents=True)
    write_tar(tmp_path / "in" / date / "00000.tar", make_samples(4, seed=5))
    config = serve_config(tmp_path, tiny_model, dataset="wrk")
    config.pop("video")
    (tmp_path / "prefect.yaml").write_text(yaml.safe_dump(prefect_yaml(parse_config(config))))
    deploy(tmp_path / "prefect.yaml", prefect_server.api_url)
    with process_worker("curate-process", prefect_server.api_url, tmp_path / "worker.log"):
        run = run_deployment("curate-pool/wrk", parameters={"partition": date}, timeout=300)
    assert run.state.is_completed(), (tmp_path / "worker.log").read_text()[-3000:]
    assert (published(tmp_path, date, "wrk") / "_SUCCESS").exists()


# -- without a server ------------------------------------------------------------------------


def test_infra_prefect_yaml_holds_the_generated_deployments():
    doc = yaml.safe_load((ROOT / "infra" / "prefect.yaml").read_text())
    cfg = parse_config(doc["definitions"]["config"])
    expected = prefect_yaml(cfg)["deployments"]
    assert [d["entrypoint"] for d in doc["deployments"]] == [e["entrypoint"] for e in expected]
    for got, want in zip(doc["deployments"], expected, strict=True):
        rest = [{k: v for k, v in d.items() if k != "parameters"} for d in (got, want)]
        assert rest[0] == rest[1]
        params = [dict(d["parameters"]) for d in (got, want)]
        assert parse_config(params[0].pop("config")) == parse_config(params[1].pop("config"))
        assert params[0] == params[1] == {"partition": None, "force": False}


def test_entrypoints_name_the_flows_the_deployments_are_named_after():
    import importlib

    for flow, entry in ENTRYPOINTS.items():
        path, name = entry.split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert getattr(module, name).name == FLOW_NAMES[flow]


def test_only_configured_flows_are_deployed_and_unscheduled_ones_have_no_schedule(tiny_model):
    config = serve_config(Path("/data"), tiny_model, dataset="only-pool")
    config.pop("video")
    config["schedule"]["pool"] = None
    (dep,) = prefect_yaml(parse_config(config))["deployments"]
    assert dep["entrypoint"] == ENTRYPOINTS["pool"] and dep["name"] == "only-pool"
    assert dep["schedules"] == []


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ({"pool": "every night"}, "schedule.pool"),
        ({"video": "0 25 * * *"}, "schedule.video"),
        ({"timezone": "Mars/Olympus"}, "schedule.timezone"),
    ],
)
def test_bad_schedules_fail_naming_the_key(tiny_model, schedule, message):
    config = serve_config(Path("/data"), tiny_model)
    config["schedule"].update(schedule)
    with pytest.raises(ConfigError, match=message):
        prefect_yaml(parse_config(config))


def test_deployment_parameters_refuse_credentials(tiny_model):
    config = serve_config(Path("/data"), tiny_model)
    config["storage_options"] = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    params = deployment_parameters(parse_config(config), "2026-01-01", True)
    assert params["config"]["storage_options"] == config["storage_options"]
    assert (params["partition"], params["force"]) == ("2026-01-01", True)
    config["storage_options"]["secret"] = "hunter2"
    with pytest.raises(ConfigError, match=r"'secret' looks like a credential") as err:
        parse_config(config)  # refused before it can reach a deployment's parameters
    assert "hunter2" not in str(err.value)


def test_serve_needs_a_server(tiny_model):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(restore_defaults={PREFECT_API_URL}),
        pytest.raises(ConfigError, match="PREFECT_API_URL"),
    ):
        serve(parse_config(serve_config(Path("/data"), tiny_model)))


def test_cli_prints_prefect_yaml_and_rejects_bad_ranges(tmp_path, tiny_model, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(serve_config(tmp_path, tiny_model)))
    assert main(["serve", "-c", str(path), "--prefect-yaml", "--work-pool", "wp"]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert doc == prefect_yaml(parse_config(serve_config(tmp_path, tiny_model)), "wp")
    args = ["backfill", "pool", "-c", str(path), "--start", "2026-01-02", "--end", "2026-01-01"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "before --start" in err


def test_server_env_defaults_to_sqlite_in_its_home_and_takes_a_database_url(tmp_path, monkeypatch):
    from infra.server import DB_ENV, database_kind, server_env

    monkeypatch.setenv("PREFECT_API_URL", "http://elsewhere:4200/api")
    monkeypatch.delenv(DB_ENV, raising=False)
    env = server_env(tmp_path)
    assert "PREFECT_API_URL" not in env and env["PREFECT_HOME"] == str(tmp_path)
    assert env[DB_ENV] == f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}"
    postgres = "postgresql+asyncpg://curate:pw@db:5432/prefect"
    monkeypatch.setenv(DB_ENV, postgres)
    assert server_env(tmp_path)[DB_ENV] == postgres
    assert (
        server_env(tmp_path, "postgresql+asyncpg://other")[DB_ENV] == "postgresql+asyncpg://other"
    )
    assert database_kind(postgres) == "postgresql+asyncpg"  # what gets logged: no password


@pytest.mark.server
def test_serve_fails_with_one_line_soon_after_its_api_dies(tmp_path, tiny_model):
    """Defect: `serve` after its Prefect server was gone hung (a minute and more of client
    retries) and then ended with a ConnectError traceback."""
    from infra.server import start_server, stop_server

    server = start_server(tmp_path / "home", timeout=180)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(serve_config(tmp_path, tiny_model)))
    log = tmp_path / "serve.log"
    env = {**os.environ, "PREFECT_API_URL": server.api_url}
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "flows.cli", "serve", "-c", str(tmp_path / "config.yaml")],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 180
        while "Ctrl-C stops" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
    finally:
        stop_server(server)
    try:
        status = proc.wait(timeout=120)  # generous on a busy machine; it takes seconds
    finally:
        stop_process(proc)
    lines = log.read_text().strip().splitlines()
    assert status == 1 and "Traceback" not in log.read_text()
    assert lines[-1] == (
        f"curate: ApiGone: the Prefect API at {server.api_url} stopped answering (3 health "
        "checks failed) (start the Prefect server again or point PREFECT_API_URL at one, "
        "then re-run)"
    )
