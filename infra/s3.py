"""A local S3 for tests and demos: moto's server mode on 127.0.0.1, the way s3fs tests itself.

The server speaks real HTTP, so every layer (s3fs, aiobotocore, botocore retries, conditional
writes) runs as it would against AWS. Credentials go into the environment, never into the
config's `storage_options`, which holds only the endpoint, as a real config would.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass
class LocalS3:
    """A running moto S3: its endpoint, the env it needs and the storage options to use."""

    endpoint: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def storage_options(self) -> dict[str, Any]:
        """What goes into a config: the endpoint only (credentials come from the env)."""
        return {"client_kwargs": {"endpoint_url": self.endpoint}}

    def fs(self) -> Any:
        """A fresh (uncached) s3fs filesystem on this server."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)

    def create_bucket(self, name: str) -> str:
        fs = self.fs()
        if not fs.exists(name):
            fs.mkdir(name)
        return f"s3://{name}"

    def upload(self, local: str, url: str) -> list[str]:
        """Copy a local folder's files (recursively) under `url`; returns the object URLs."""
        fs = self.fs()
        out = []
        for root, _dirs, files in os.walk(local):
            for name in sorted(files):
                src = os.path.join(root, name)
                rel = os.path.relpath(src, local).replace(os.sep, "/")
                dst = f"{url.rstrip('/')}/{rel}"
                fs.put_file(src, dst)
                out.append(dst)
        return out


@contextmanager
def patched_env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block and restore the previous values after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _AtomicConditionals:
    """WSGI middleware: one conditional write (If-Match / If-None-Match) at a time.

    S3 checks a write's precondition and applies the write atomically; moto checks, then
    writes, in two steps, and its threaded server can interleave two writers between them,
    so both of two compare-and-swaps on one key "succeed" and one update is lost. Holding a
    lock around conditional requests restores S3's semantics for what our locks, catalog and
    index pointer rely on (unconditional requests still run in parallel).
    """

    def __init__(self, app: Any) -> None:
        import threading

        self.app, self.lock = app, threading.Lock()

    def __call__(self, environ: dict, start_response: Any) -> Any:
        conditional = "HTTP_IF_MATCH" in environ or "HTTP_IF_NONE_MATCH" in environ
        if not conditional or environ.get("REQUEST_METHOD") not in ("PUT", "POST", "DELETE"):
            return self.app(environ, start_response)
        with self.lock:
            return list(self.app(environ, start_response))  # the whole body inside the lock


def _server() -> Any:
    """moto's threaded server with atomic conditional writes, on a free port of 127.0.0.1."""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    class Server(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = _AtomicConditionals(DomainDispatcherApplication(create_backend_app))
            self._server = make_server(self._ip_address, self._port, app, True,
                                       request_handler=MotoRequestHandler)  # fmt: skip
            self._server_ready_event.set()
            self._server.serve_forever()

    return Server(ip_address="127.0.0.1", port=0, verbose=False)


@contextmanager
def moto_s3(buckets: Iterable[str] = (), set_env: bool = True) -> Iterator[LocalS3]:
    """Run moto's S3 server on a free port of 127.0.0.1 for the block.

    With `set_env`, fake AWS credentials are put in the environment for the block (botocore
    reads them from there), so subprocesses started inside it inherit them too.
    """
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = _server()
    server.start()
    host, port = server.get_host_and_port()
    s3 = LocalS3(f"http://{host}:{port}", dict(FAKE_ENV))
    try:
        with patched_env(s3.env if set_env else {}):
            for bucket in buckets:
                s3.create_bucket(bucket)
            yield s3
    finally:
        server.stop()
