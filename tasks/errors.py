"""The one error policy: a bad sample is a row with a reason, broken infrastructure fails.

Two kinds of failure, decided here and nowhere else (webdataset's `handler=` idea):

- **Sample errors** (`SampleError`): one image, caption, video or clip is unusable. The stage
  that met it records a row with an error *code* (short, stable, counted in the stats) and
  a *detail* (free text for a person), and goes on with the next item. Such rows are cached
  with the results: the same bytes will fail the same way next time.
- **Infrastructure errors**: the model does not load, the device runs out of memory, the
  disk is full, the store keeps failing after its retries, the run was cancelled. They fail
  the task, nothing is cached (a cache entry is only committed after its computation
  returns), and the run exits non-zero with one line. A later run with the problem fixed
  recomputes everything that was not finished.

`as_sample_error(code, *types)` is how a stage says which library exceptions are data
problems; `is_infrastructure` overrides it for exceptions that are never about one sample
(an `OSError` of a full disk raised while decoding is still a full disk).

An object store that keeps failing after the client's retries (503 SlowDown, 500, reset or
refused connections, timeouts) is infrastructure too: `is_store_failure` recognises what
s3fs, botocore and aiohttp raise for it, and the storage layer re-raises it as one
`StoreError` that names the store (`tasks.io.storage.named_store`).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

# OSError numbers that describe the machine or the store, never the bytes being read.
INFRA_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EIO,
        errno.EROFS,
        errno.ENOMEM,
        errno.EMFILE,
        errno.ENFILE,
        errno.ENODEV,
        errno.ESTALE,
        errno.ETIMEDOUT,
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.EBUSY,  # s3fs: 503 SlowDown / ServiceUnavailable
        errno.EREMOTEIO,  # s3fs: 500 InternalError
    }
)
# What botocore and aiohttp raise (they are not OSErrors) when a store cannot be reached or
# stops answering mid-request, matched by class name: this module imports neither library.
STORE_ERROR_TYPES = frozenset(
    {
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "HTTPClientError",
        "ResponseStreamingError",
        "ClientConnectionError",
        "ClientPayloadError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
    }
)
DETAIL_CHARS = 200


class InfraError(RuntimeError):
    """Broken infrastructure: the task fails, nothing is cached, the run exits non-zero."""


class Cancelled(InfraError):
    """The run was asked to stop (SIGTERM, Ctrl-C) and gave up its in-flight work."""


class InputError(RuntimeError):
    """The run's input (files, a table, a published dataset) is missing, unreadable or empty:
    the command stops with one line naming it (exit status 3)."""


class StoreError(OSError):
    """A store kept failing after every retry; the message names the store and the object.

    An `OSError` (errno EIO) so that whatever treats I/O failures as such (Prefect's task
    retries, best-effort clean-ups) keeps doing so.
    """

    def __str__(self) -> str:
        return str(self.strerror)


class SampleError(Exception):
    """One item is unusable: recorded as a row with `code` and `detail`, never raised further."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


def short(err: BaseException) -> str:
    """The first line of an error, bounded, for a detail column or a log line."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else type(err).__name__
    return text[:DETAIL_CHARS]


def is_store_failure(err: BaseException) -> bool:
    """True for what a remote store's client raises when the store failed (not the object):
    throttling and 5xx answers after retries, lost connections, timeouts."""
    if isinstance(err, StoreError | ConnectionError | TimeoutError):
        return True
    if any(t.__name__ in STORE_ERROR_TYPES for t in type(err).__mro__):
        return True
    return isinstance(err, OSError) and type(err) is OSError and err.errno in INFRA_ERRNOS


def is_infrastructure(err: BaseException) -> bool:
    """True for failures of the machine, device, store or run, whatever raised them."""
    if isinstance(err, InfraError | MemoryError | ConnectionError | TimeoutError):
        return True
    if is_store_failure(err):
        return True
    if type(err).__name__ in ("OutOfMemoryError", "AcceleratorError"):  # torch, any device
        return True
    text = str(err)
    if isinstance(err, RuntimeError) and ("CUDA error" in text or "out of memory" in text):
        return True
    return isinstance(err, OSError) and err.errno in INFRA_ERRNOS


@contextmanager
def as_sample_error(code: str, *data_errors: type[BaseException]) -> Iterator[None]:
    """Turn the listed library exceptions raised inside into `SampleError(code, detail)`.

    Infrastructure failures pass through unchanged, as does a `SampleError` raised inside
    (it already names its own code).
    """
    try:
        yield
    except SampleError:
        raise
    except data_errors as err:
        if is_infrastructure(err):
            raise
        raise SampleError(code, short(err)) from err
