"""A real `prefect server start` on 127.0.0.1, started once per test session, on first use.

Usage in a test module (either line makes pytest see the fixture):

    pytest_plugins = ["tests.server_fixture"]
    from tests.server_fixture import prefect_server  # noqa: F401 (then noqa: F811 on tests)

    @pytest.mark.server
    def test_something(prefect_server):
        ...  # PREFECT_API_URL (the setting and the env var) points at prefect_server.api_url

`prefect_server` is function-scoped: it points this process at the server for the test only,
so it never fights the session-scoped `prefect_harness` (Prefect's test harness) that other
tests use. The server itself (own PREFECT_HOME and SQLite file in a temp dir) lives until
the session ends. Fixtures of a wider scope call `shared_server(request.config)` and
`with server.activate(): ...` themselves.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest

from infra.server import PrefectServer, start_server, stop_server

START_TIMEOUT_S = 180.0  # a cold start on a busy 2-core machine can take half a minute
_server: PrefectServer | None = None


def shared_server(config: pytest.Config) -> PrefectServer:
    """The session's server, started on first call and stopped when the session ends."""
    global _server
    if _server is None:
        home = tempfile.mkdtemp(prefix="curate-test-server-")
        server = start_server(home, timeout=START_TIMEOUT_S)

        def stop() -> None:
            global _server
            stop_server(server)
            shutil.rmtree(home, ignore_errors=True)
            _server = None

        config.add_cleanup(stop)
        _server = server
    return _server


@pytest.fixture
def prefect_server(request: pytest.FixtureRequest) -> Iterator[PrefectServer]:
    """The shared server, with this process's Prefect API pointed at it during the test."""
    with shared_server(request.config).activate() as server:
        yield server
