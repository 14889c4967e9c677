"""A credential in the config never reaches the Prefect server: refused before any run exists.

Flow-run and deployment parameters, logs and artifacts are stored by the server (and shown
in its UI), so a canary secret under each option name is given through `curate run` and
through the deployment path, and the server is then searched for it.
"""

from __future__ import annotations

import json
import uuid

import pytest
import yaml

from flows.cli import main
from flows.serve import deployment_parameters, serve
from schemas.config import ConfigError
from tests.schemas.secret_cases import CANARY, CASES, unvalidated

pytest_plugins = ["tests.server_fixture"]  # the `prefect_server` fixture (a real server)
pytestmark = pytest.mark.server
IDS = [c.id for c in CASES]


def base(tmp_path) -> dict:
    missing = tmp_path / "does-not-exist"
    return {
        "dataset": "canary",
        "output": str(tmp_path / "out"),
        "pool": {"input": str(missing / "{date}" / "*.tar")},
        "schedule": {"pool": "0 2 * * *", "video": None},
    }


def server_contents() -> tuple[dict[str, int], str]:
    """How many flow runs, deployments, logs and artifacts the server holds, and all their text."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found = {
            "flow_runs": [r.model_dump(mode="json") for r in client.read_flow_runs()],
            "deployments": [d.model_dump(mode="json") for d in client.read_deployments()],
            "logs": [log.model_dump(mode="json") for log in client.read_logs()],
            "artifacts": [a.model_dump(mode="json") for a in client.read_artifacts()],
        }
    return {k: len(v) for k, v in found.items()}, json.dumps(found)


def test_the_probe_finds_what_a_flow_run_stores(prefect_server):
    """Control: a parameter given to a flow run is in `server_contents` afterwards."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    @flow(name="secrets-probe")
    def probe(x: str) -> None: ...

    assert PREFECT_API_URL.value() == prefect_server.api_url
    marker = f"probe-{uuid.uuid4().hex}"
    before, _ = server_contents()
    with get_client(sync_client=True) as client:
        client.create_flow_run(probe, parameters={"x": marker})
    after, text = server_contents()
    assert after["flow_runs"] == before["flow_runs"] + 1 and marker in text


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cli_run_refuses_the_config_before_any_flow_run(
    prefect_server,
    tmp_path,
    capsys,
    case,
):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(case.config(base(tmp_path))))
    before, _ = server_contents()
    code = main(["run", "pool", "-c", str(path), "--partition", "2026-01-05"])
    out, err = capsys.readouterr()
    err = err.strip()
    after, text = server_contents()
    assert code == 2, err
    assert err.count("\n") == 0 and "Traceback" not in err
    assert f"'{case.path}'" in err and "credential" in err
    assert CANARY not in err and CANARY not in out
    assert after == before
    assert CANARY not in text


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_deployments_refuse_a_config_that_skipped_validation(
    prefect_server,
    monkeypatch,
    case,
    tmp_path,
):
    from prefect.runner import Runner

    async def no_loop(self, *args, **kwargs):  # never block serving (should it get that far)
        return None

    monkeypatch.setattr(Runner, "start", no_loop)
    cfg = unvalidated(case.config(base(tmp_path)))
    before, _ = server_contents()
    with pytest.raises(ConfigError) as err:
        deployment_parameters(cfg, "2026-01-05")
    assert f"'{case.path}'" in str(err.value) and CANARY not in str(err.value)
    with pytest.raises(ConfigError) as err:
        serve(cfg)  # would register `curate-pool/canary` with the config as its parameters
    assert CANARY not in str(err.value)
    after, text = server_contents()
    assert after == before
    assert CANARY not in text
