"""Untrusted bytes are decoded in helper processes: a crash costs one sample, not the run.

decord and FFmpeg are C libraries: hostile or corrupt bytes can crash them (a segfault ends
the whole process, every task of a worker with it) or make them spin for good. Work that
feeds them input bytes runs in a helper process instead (`isolated`):

- a helper is a plain `python -m tasks.isolation` child (not a fork of a threaded process,
  and allowed under daemonic Dask workers), kept and reused for the next input once a call
  has finished cleanly, so its start-up (imports) is paid once per concurrent task;
- a call sends one JSON request; the helper answers with messages (a JSON header, then raw
  byte blobs: arrays travel as bytes with their dtype and shape, never pickled);
- a helper that dies (a signal, an exit) fails that call with `SampleError(crash_code)`;
  one that sends nothing for `timeout_s` is killed and the call fails with
  `SampleError(timeout_code)`: both are that input's fault, recorded as its row;
- errors keep the policy of `tasks.errors`: a `SampleError` in the helper is raised as one
  here, an infrastructure error (disk full, out of memory) as `InfraError`, anything else
  (a bug) as `IsolatedError`, which fails the task as it would have in process;
- the helper's log records are re-emitted here under their own logger names.

A helper whose parent dies sees its request pipe close and exits. Operations are named
`module:function`; the function is a generator of `(header dict, [bytes, ...])` items.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import suppress
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from tasks.errors import InfraError, SampleError, is_infrastructure, short

logger = logging.getLogger(__name__)
ALLOWED = ("tasks.", "tests.")  # modules whose generators a helper runs
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Item = tuple[dict[str, Any], list[bytes]]


class IsolatedError(RuntimeError):
    """The helper's operation raised an unexpected error (a bug, not the input's fault)."""


def array_blob(a: np.ndarray) -> tuple[dict[str, Any], bytes]:
    """An array as (its dtype and shape, its bytes) for a message."""
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape)}, a.tobytes()


def blob_array(meta: dict[str, Any], data: bytes) -> np.ndarray:
    """The array `array_blob` sent (a read-only view of the received bytes)."""
    return np.frombuffer(data, np.dtype(meta["dtype"])).reshape(meta["shape"])


class _Helper:
    """One helper process and its two pipes."""

    def __init__(self) -> None:
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": ROOT + (os.pathsep + path if path else "")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tasks.isolation", str(req_r), str(res_w)],
            pass_fds=(req_r, res_w),
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a Ctrl-C to the run's terminal is the run's to handle
        )
        os.close(req_r)
        os.close(res_w)
        self.requests = Connection(req_w, readable=False)
        self.results = Connection(res_r, writable=False)

    def kill(self) -> None:
        with suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()
        self.requests.close()
        self.results.close()

    def died(self) -> str:
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # its pipe closed but it lives on: end it
            self.kill()
            code = self.proc.returncode
        if code < 0:
            return f"the decoder process died of {signal.Signals(-code).name}"
        return f"the decoder process exited with status {code}"


_idle: list[_Helper] = []
_lock = threading.Lock()


def _acquire() -> _Helper:
    with _lock:
        while _idle:
            helper = _idle.pop()
            if helper.proc.poll() is None:
                return helper
            helper.kill()
    return _Helper()


def isolated(
    op: str,
    kwargs: dict[str, Any],
    timeout_s: float,
    crash_code: str = "decoder_crash",
    timeout_code: str = "decode_timeout",
) -> Iterator[Item]:
    """The items of `op(**kwargs)` run in a helper process (module docstring)."""
    helper, clean = _acquire(), False
    try:
        try:
            helper.requests.send_bytes(json.dumps({"op": op, "kwargs": kwargs}).encode())
        except OSError:
            raise SampleError(crash_code, helper.died()) from None
        while True:
            head, blobs = _receive(helper, timeout_s, crash_code, timeout_code)
            kind = head["kind"]
            if kind == "item":
                yield head["data"], blobs
            elif kind == "log":
                logging.getLogger(head["name"]).log(head["level"], "%s", head["message"])
            else:
                clean = True
                _raise(head)
                return
    finally:
        if clean:
            with _lock:
                _idle.append(helper)
        else:  # mid-conversation (a crash, a timeout, or the caller stopped reading)
            helper.kill()


def _receive(helper: _Helper, timeout_s: float, crash: str, timeout: str) -> Item:
    def read() -> bytes:
        if not helper.results.poll(timeout_s):
            helper.kill()
            raise SampleError(timeout, f"no progress for {timeout_s:g}s: the decoder was stopped")
        try:
            return helper.results.recv_bytes()
        except (EOFError, OSError):
            raise SampleError(crash, helper.died()) from None

    head = json.loads(read())
    return head, [read() for _ in range(int(head.get("blobs", 0)))]


def _raise(head: dict[str, Any]) -> None:
    kind = head["kind"]
    if kind == "sample_error":
        raise SampleError(head["code"], head["detail"])
    if kind == "infra":
        raise InfraError(head["message"])
    if kind == "error":
        raise IsolatedError(head["message"])


# ---- the helper's side ----------------------------------------------------------------


class _Forward(logging.Handler):
    def __init__(self, send: Any) -> None:
        super().__init__()
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        head = {"kind": "log", "name": record.name, "level": record.levelno}
        with suppress(Exception):
            self.send({**head, "message": record.getMessage()})


def _operation(name: str) -> Any:
    module, _, function = name.partition(":")
    if not module.startswith(ALLOWED):
        raise ValueError(f"operation {name} is not allowed")
    return getattr(importlib.import_module(module), function)


def _serve(requests: Connection, results: Connection) -> None:
    def send(head: dict[str, Any], blobs: list[bytes] = ()) -> None:
        results.send_bytes(json.dumps({**head, "blobs": len(blobs)}).encode())
        for blob in blobs:
            results.send_bytes(blob)

    logging.basicConfig(handlers=[_Forward(send)], level=logging.INFO, force=True)
    while True:
        try:
            request = json.loads(requests.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            for data, blobs in _operation(request["op"])(**request["kwargs"]):
                send({"kind": "item", "data": data}, list(blobs))
            send({"kind": "end"})
        except SampleError as err:
            send({"kind": "sample_error", "code": err.code, "detail": err.detail})
        except Exception as err:
            if is_infrastructure(err):
                send({"kind": "infra", "message": f"{type(err).__name__}: {short(err)}"})
            else:
                text = "".join(traceback.format_exception(err, limit=-4))
                send({"kind": "error", "message": f"{type(err).__name__}: {short(err)}\n{text}"})


def main(argv: list[str]) -> None:
    requests = Connection(int(argv[0]), writable=False)
    results = Connection(int(argv[1]), readable=False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with suppress(BrokenPipeError, EOFError):  # the parent is gone
        _serve(requests, results)


if __name__ == "__main__":
    main(sys.argv[1:])
