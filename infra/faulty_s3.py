"""A fault-injecting S3 endpoint for tests and benchmarks: a proxy on 127.0.0.1 in front of moto.

The faults a nightly job meets on a real object store, injected on real HTTP so that every
layer (botocore's retries, s3fs's, Prefect's task retries, our conditional writes) reacts as
it would against AWS:

- `slowdown`: 503 SlowDown, `internal`: 500 InternalError (nothing reaches the store);
- `reset`: the connection is reset before the request reaches the store;
- `reset_after`: the request reaches the store (a PUT lands), then the connection is reset
  instead of the answer: the client cannot tell it landed and retries;
- `slow_body`: the answer arrives in small pieces over `slow_body_s`.

Which request gets which fault is decided from `seed` and the request itself (method, path,
query, and how many times the same request was seen), never from arrival order, so threads or
processes interleaving differently meet the same faults. `outage()` fails every request until
`restore()` (503 SlowDown, or connection resets), and `outage_after(match, n)` starts one once
`n` requests that `match` have been answered: a deterministic point in the middle of a run.
`hold(match)` keeps the first matching request waiting until released (a worker stuck in
the middle of a task, for a test to act on).

Listens on 127.0.0.1 only; use as `with FaultyS3(target, rate=0.1, seed=1) as proxy:` and
pass `proxy.storage_options` (the endpoint only) in a config.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

KINDS = ("slowdown", "internal", "reset", "reset_after", "slow_body")
HOST = "127.0.0.1"
_HOP = {"transfer-encoding", "connection", "keep-alive", "content-length", "date", "server"}
_ERRORS = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "internal": (500, "InternalError", "We encountered an internal error. Please try again."),
}


@dataclass(frozen=True)
class Request:
    """What a fault decision or a `match` sees of one request."""

    method: str
    path: str  # /bucket/key
    query: str

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}?{self.query}"


Match = Callable[[Request], bool]


@dataclass
class Held:
    """A request kept waiting by `hold`: `reached` is set when it arrives; `peer` is the
    client's (host, port); `release()` lets it (and every later one) through."""

    match: Match
    reached: threading.Event = field(default_factory=threading.Event)
    go: threading.Event = field(default_factory=threading.Event)
    peer: tuple[str, int] | None = None
    request: Request | None = None

    def release(self) -> None:
        self.go.set()


@dataclass
class _Outage:
    mode: str = "slowdown"  # slowdown | reset
    match: Match | None = None  # start after `after` answered requests that match
    after: int = 0
    seen: int = 0
    on: bool = False


class FaultyS3:
    """The proxy. `rate` of the requests get a fault drawn from `kinds` (weights)."""

    def __init__(
        self,
        target: str,
        *,
        rate: float = 0.0,
        seed: int = 0,
        kinds: dict[str, float] | None = None,
        slow_body_s: float = 0.3,
        only: Match | None = None,
    ) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or HOST, parts.port or 80)
        self.rate, self.seed, self.slow_body_s = rate, seed, slow_body_s
        self.only = only  # faults only for the requests it matches (None: every request)
        self.kinds = dict(kinds or dict.fromkeys(KINDS, 1.0))
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {KINDS}")
        self.counts: Counter[str] = Counter()  # requests, faults by kind, outage answers
        self.guard = threading.Lock()
        self._seen: Counter[str] = Counter()
        self._outage = _Outage()
        self._held: list[Held] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- life cycle ------------------------------------------------------------------------
    def start(self) -> FaultyS3:
        server = ThreadingHTTPServer((HOST, 0), _Handler)
        server.daemon_threads = True
        server.proxy = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        for held in self._held:
            held.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> FaultyS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start() the proxy first"
        return f"http://{HOST}:{self._server.server_address[1]}"

    @property
    def storage_options(self) -> dict[str, Any]:
        """What goes into a config: the endpoint only (credentials come from the env)."""
        return {"client_kwargs": {"endpoint_url": self.endpoint}}

    # --- controls ----------------------------------------------------------------------------
    def outage(self, mode: str = "slowdown") -> None:
        """Fail every request from now on (`slowdown`: 503; `reset`: connection resets)."""
        with self.guard:
            self._outage = _Outage(mode=mode, on=True)

    def outage_after(self, match: Match, after: int, mode: str = "slowdown") -> None:
        """Start an outage once `after` requests matching `match` have been answered."""
        with self.guard:
            self._outage = _Outage(mode=mode, match=match, after=after)

    def restore(self) -> None:
        """End an outage (and a pending `outage_after`)."""
        with self.guard:
            self._outage = _Outage()

    @property
    def down(self) -> bool:
        return self._outage.on

    def hold(self, match: Match) -> Held:
        """Keep the first request matching `match` waiting until `release()`."""
        held = Held(match)
        with self.guard:
            self._held.append(held)
        return held

    # --- decisions ---------------------------------------------------------------------------
    def decide(self, req: Request) -> str | None:
        """The fault for this request (None: forward it untouched)."""
        with self.guard:
            self.counts["requests"] += 1
            if self._outage.on:
                self.counts[f"outage_{self._outage.mode}"] += 1
                return "reset" if self._outage.mode == "reset" else "slowdown"
            n = self._seen[req.key]
            self._seen[req.key] += 1
        if self.rate <= 0 or (self.only is not None and not self.only(req)):
            return None
        digest = hashlib.sha256(f"{self.seed}|{req.key}|{n}".encode()).digest()
        draw, pick = (int.from_bytes(digest[i : i + 8], "big") / 2**64 for i in (0, 8))
        if draw >= self.rate:
            return None
        kind = self._pick(pick)
        with self.guard:
            self.counts[kind] += 1
        return kind

    def _pick(self, u: float) -> str:
        """The kind at quantile `u` of the weights."""
        total, acc = sum(self.kinds.values()), 0.0
        for kind, weight in self.kinds.items():
            acc += weight / total
            if u < acc:
                return kind
        return next(reversed(self.kinds))

    def answered(self, req: Request) -> None:
        """Count a request answered by the store (it may start a pending outage)."""
        with self.guard:
            out = self._outage
            if out.match is not None and not out.on and out.match(req):
                out.seen += 1
                out.on = out.seen >= out.after

    def held_for(self, req: Request) -> Held | None:
        with self.guard:
            for held in self._held:
                if not held.reached.is_set() and held.match(req):
                    held.request = req
                    return held
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    @property
    def proxy(self) -> FaultyS3:
        return self.server.proxy  # type: ignore[attr-defined]

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                out += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return bytes(out)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        body = self._body()
        parts = urlsplit(self.path)
        req = Request(self.command, parts.path, parts.query)
        held = self.proxy.held_for(req)
        if held is not None:
            held.peer = self.client_address[:2]
            held.reached.set()
            held.go.wait()
        fault = self.proxy.decide(req)
        if fault in _ERRORS:
            status, code, message = _ERRORS[fault]
            xml = (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>{message}</Message><Resource>{parts.path}</Resource></Error>"
            ).encode()
            self._reply(status, [("Content-Type", "application/xml")], xml)
            return
        if fault == "reset":
            self._reset()
            return
        status, headers, data = self._forward(body)
        self.proxy.answered(req)
        if fault == "reset_after":
            self._reset()
            return
        self._reply(status, headers, data, slow=fault == "slow_body")

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.proxy.target, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("expect",)}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def _reply(
        self, status: int, headers: list[tuple[str, str]], data: bytes, slow: bool = False
    ) -> None:
        self.send_response(status)
        head = self.command == "HEAD"
        for k, v in headers:
            if k.lower() not in _HOP or (head and k.lower() == "content-length"):
                self.send_header(k, v)
        if not head:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if head:
            return
        if not slow or len(data) < 2:
            self.wfile.write(data)
            return
        pieces = 8
        step = max(1, len(data) // pieces)
        for i in range(0, len(data), step):
            self.wfile.write(data[i : i + step])
            self.wfile.flush()
            time.sleep(self.proxy.slow_body_s / pieces)

    def _reset(self) -> None:
        """Close the connection with a TCP reset (SO_LINGER 0), answering nothing."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
