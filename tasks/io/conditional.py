"""Conditional writes on S3 that stay right when the client retries them.

A conditional PUT (`If-None-Match: *`, `If-Match: ETAG`) can land while its answer is lost (a
reset connection, a timeout); botocore then sends it again, and the store answers the retry
412 Precondition Failed, because the first attempt changed the object. Taken at its word, that
answer says another writer won: a run would wait for a partition lock it holds itself, call
its own heartbeat a take-over, or give up a compare-and-swap it completed. `put_if` looks
before it believes a refusal: when the object now holds exactly the bytes it sent, its own
earlier attempt landed, and the write succeeded. The bytes written here identify their writer
(a lock names its holder and token; a CAS writes a pure function of what it read), so equal
bytes mean the write was ours or changed nothing.

Every call re-raises a store that keeps failing as a `StoreError` naming it.
"""

from __future__ import annotations

from typing import Any

from fsspec.asyn import sync

from tasks.io import storage

CONFLICT_CODES = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


def conflict(err: BaseException) -> bool:
    """A failed precondition (someone else's write) rather than a store error."""
    if isinstance(err, FileExistsError):
        return True
    cause = err.__cause__ or err
    code = (getattr(cause, "response", None) or {}).get("Error", {}).get("Code")
    return code in CONFLICT_CODES


def url_of(fs: Any, path: str) -> str:
    return storage.unstrip(fs, path)


def get(fs: Any, path: str) -> tuple[bytes, dict[str, Any]] | None:
    """(content, response) of the object, or None when it does not exist."""
    bucket, key = fs.split_path(path)[:2]

    async def fetch() -> tuple[bytes, dict[str, Any]]:
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        return await resp["Body"].read(), resp

    with storage.named_store(url_of(fs, path), fs.storage_options):
        try:
            return sync(fs.loop, fetch)
        except FileNotFoundError:
            return None


def put_if(fs: Any, path: str, body: bytes, **cond: str) -> str | None:
    """PUT `body` under condition `cond` (IfMatch=/IfNoneMatch=); the new ETag, or None when
    the condition failed because another writer changed the object."""
    bucket, key = fs.split_path(path)[:2]
    with storage.named_store(url_of(fs, path), fs.storage_options):
        try:
            out = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, **cond)
        except OSError as err:
            if not conflict(err):
                raise
            return _landed(fs, path, body)
    fs.invalidate_cache(path)
    return str(out["ETag"])


def _landed(fs: Any, path: str, body: bytes) -> str | None:
    """The object's ETag when it holds `body` (an earlier attempt of this PUT landed)."""
    found = get(fs, path)
    if found is None or found[0] != body:
        return None
    fs.invalidate_cache(path)
    return str(found[1]["ETag"])
