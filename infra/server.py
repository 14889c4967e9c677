"""Start and stop a local Prefect server (and a process worker) for operators and tests.

`prefect server start` on 127.0.0.1 with a free port, its own PREFECT_HOME, and SQLite in that
home unless `PREFECT_SERVER_DATABASE_CONNECTION_URL` (or `database_url`) names a PostgreSQL
database. `prefect_server()` waits until `/api/health` answers, so callers can use the API at
once, and stops the whole process group on exit.

    python -m infra.server --home ~/.curate-prefect            # serve until Ctrl-C
    python -m infra.server --worker curate-process             # ... plus a process worker
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
DB_ENV = "PREFECT_SERVER_DATABASE_CONNECTION_URL"
START_TIMEOUT_S = 120.0
# client/server settings of the calling process that must not leak into the server's own
_DROP_ENV = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_API_DATABASE_CONNECTION_URL", DB_ENV)


class ServerError(RuntimeError):
    """The server did not come up (the message carries the tail of its log)."""


class ApiGone(RuntimeError):
    """The Prefect API a long-running process (`curate serve`) relies on stopped answering."""


@dataclass
class PrefectServer:
    """A running `prefect server start` process and where to reach it."""

    api_url: str
    home: Path
    log_path: Path
    process: subprocess.Popen

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @contextlib.contextmanager
    def activate(self) -> Iterator[PrefectServer]:
        """Point this process (Prefect settings and the env of child processes) at the server."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        old = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = self.api_url
        try:
            with temporary_settings({PREFECT_API_URL: self.api_url}):
                yield self
        finally:
            if old is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = old


def free_port(host: str = HOST) -> int:
    """A port nothing listens on right now (the caller retries if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def database_kind(url: str | None) -> str:
    """The database's scheme only: connection URLs can hold passwords, never log them."""
    return url.split(":", 1)[0] if url else "sqlite (PREFECT_HOME/prefect.db)"


def server_env(home: Path, database_url: str | None = None, ui: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="true" if ui else "false",
        PREFECT_SERVER_LOGGING_LEVEL=env.get("PREFECT_SERVER_LOGGING_LEVEL", "WARNING"),
    )
    url = database_url or os.environ.get(DB_ENV)
    env[DB_ENV] = url or f"sqlite+aiosqlite:///{home / 'prefect.db'}"
    return env


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


WATCH_INTERVAL_S = 2.0  # a serving process notices a dead API within about 3 intervals
WATCH_MISSES = 3


async def watch_api(
    api_url: str, interval: float = WATCH_INTERVAL_S, misses: int = WATCH_MISSES
) -> str:
    """Return, with a sentence saying so, once `api_url` failed `misses` health checks in a
    row: Prefect's own client retries each call for about a minute before it gives up."""
    import asyncio

    failed = 0
    while failed < misses:
        await asyncio.sleep(interval)
        failed = 0 if await asyncio.to_thread(healthy, api_url, interval) else failed + 1
    return f"the Prefect API at {api_url} stopped answering ({misses} health checks failed)"


def wait_healthy(server: PrefectServer, timeout: float = START_TIMEOUT_S) -> None:
    """Block until the API answers; fail early (with its log) if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerError(
                f"prefect server exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        if healthy(server.api_url):
            return
        time.sleep(0.5)
    raise ServerError(f"prefect server not healthy after {timeout:.0f}s:\n{server.log_tail()}")


def start_server(
    home: str | Path,
    port: int | None = None,
    database_url: str | None = None,
    timeout: float = START_TIMEOUT_S,
    ui: bool = False,
) -> PrefectServer:
    """Start `prefect server start` in its own process group and wait for its health check."""
    home = Path(home).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    attempts = 1 if port else 3  # a free port can be taken between probing and binding
    for attempt in range(attempts):
        server = _spawn(home, port or free_port(), database_url, ui)
        try:
            wait_healthy(server, timeout)
            break
        except ServerError:
            exited = server.process.poll() is not None  # e.g. the port was taken meanwhile
            stop_server(server)
            if attempt == attempts - 1 or not exited:
                raise
        except BaseException:  # interrupted while waiting: leave no server behind
            stop_server(server)
            raise
    logger.info("prefect server at %s (%s)", server.api_url, database_kind(database_url))
    return server


def prefect_command(*args: str) -> list[str]:
    """`prefect ARGS` in a child that ends itself when this process dies (even by SIGKILL)."""
    return [sys.executable, "-m", "infra.server_child", str(os.getpid()), *args]


def _spawn(home: Path, port: int, database_url: str | None, ui: bool) -> PrefectServer:
    log_path = home / f"server-{port}.log"
    cmd = prefect_command("server", "start", "--host", HOST, "--port", str(port))
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            env=server_env(home, database_url, ui),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return PrefectServer(f"http://{HOST}:{port}/api", home, log_path, proc)


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the process group we started, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


def stop_server(server: PrefectServer, timeout: float = 20.0) -> None:
    stop_process(server.process, timeout)


@contextlib.contextmanager
def prefect_server(
    home: str | Path | None = None,
    port: int | None = None,
    database_url: str | None = None,
    timeout: float = START_TIMEOUT_S,
    ui: bool = False,
) -> Iterator[PrefectServer]:
    """A running server for the block; without `home` its home (and SQLite db) is temporary.

    This does not change the caller's settings: use `server.activate()` to point Prefect
    clients at it.
    """
    tmp = None if home else tempfile.mkdtemp(prefix="curate-prefect-")
    server = start_server(home or tmp, port, database_url, timeout, ui)
    try:
        yield server
    finally:
        stop_server(server)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def configured_api_url() -> str | None:
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


def drain_prefect_clients() -> None:
    """Send what Prefect's background event/log workers still hold before their API goes."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (EventsWorker, APILogWorker):
        service.drain_all(timeout=10, at_exit=False)


class _SharedServer:
    """One temporary server for every run of this process, started on first use.

    `scope()` keeps it alive across runs (a backfill), `use()` is one run; the server stops
    when the last of them leaves. Runs see it through PREFECT_API_URL (settings and env).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.server: contextlib.ExitStack | None = None
        self.url: str | None = None
        self.holders = 0

    def _enter(self, start: bool) -> str | None:
        with self.lock:
            self.holders += 1
            if self.url is None and start:
                stack = contextlib.ExitStack()
                server = stack.enter_context(prefect_server())
                os.environ["PREFECT_API_URL"] = server.api_url
                stack.callback(os.environ.pop, "PREFECT_API_URL", None)
                self.server, self.url = stack, server.api_url
                logger.info(
                    "PREFECT_API_URL is not set: started a local Prefect server at %s for this "
                    "run (temporary database; set PREFECT_API_URL to keep the run history)",
                    server.api_url,
                )
            return self.url

    def _leave(self) -> None:
        with self.lock:
            self.holders -= 1
            if self.holders == 0 and self.server is not None:
                with contextlib.suppress(Exception):
                    drain_prefect_clients()
                self.server.close()
                self.server, self.url = None, None

    @contextlib.contextmanager
    def use(self) -> Iterator[str]:
        url = self._enter(start=True)
        try:
            from prefect.settings import PREFECT_API_URL, temporary_settings

            with temporary_settings({PREFECT_API_URL: url}):
                yield str(url)
        finally:
            self._leave()

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        self._enter(start=False)
        try:
            yield
        finally:
            self._leave()


_SHARED = _SharedServer()


@contextlib.contextmanager
def run_api() -> Iterator[str]:
    """The Prefect API a run reports to: PREFECT_API_URL when set, else this process's
    temporary server (one for all runs of the process; it dies with the process)."""
    url = configured_api_url()
    if url and url != _SHARED.url:
        yield url
        return
    with _SHARED.use() as url:
        yield url


@contextlib.contextmanager
def api_scope() -> Iterator[None]:
    """Keep a temporary server, once some run starts it, alive until the block ends."""
    with _SHARED.scope():
        yield


def worker_command(pool: str, limit: int | None = None) -> list[str]:
    """`prefect worker start` for a process work pool (created if it does not exist)."""
    cmd = prefect_command("worker", "start", "--pool", pool, "--type", "process")
    return [*cmd, "--limit", str(limit)] if limit else cmd


@contextlib.contextmanager
def process_worker(
    pool: str, api_url: str, log_path: str | Path, limit: int | None = None
) -> Iterator[subprocess.Popen]:
    """A process worker polling `pool` on `api_url` for the block (run from the repo root)."""
    env = {**os.environ, "PREFECT_API_URL": api_url}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            worker_command(pool, limit),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop_process(proc)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infra.server", description=__doc__.split("\n")[0])
    p.add_argument("--home", default=os.environ.get("CURATE_PREFECT_HOME", "~/.curate-prefect"))
    p.add_argument("--port", type=int, default=4200, help="0 picks a free port")
    p.add_argument("--database-url", default=None, help=f"default: ${DB_ENV}, else SQLite")
    p.add_argument("--ui", action="store_true", help="also serve the dashboard")
    p.add_argument("--worker", metavar="POOL", help="also run a process worker on POOL")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the server too, not only Ctrl-C
    with prefect_server(args.home, args.port or None, args.database_url, ui=args.ui) as server:
        logger.info("export PREFECT_API_URL=%s", server.api_url)
        with contextlib.ExitStack() as stack:
            if args.worker:
                log = server.home / f"worker-{args.worker}.log"
                stack.enter_context(process_worker(args.worker, server.api_url, log))
                logger.info("process worker on pool %r, log %s", args.worker, log)
            with contextlib.suppress(KeyboardInterrupt):
                while server.process.poll() is None:
                    time.sleep(1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
