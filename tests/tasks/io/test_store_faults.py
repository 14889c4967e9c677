"""A flaky object store, one request at a time: the fault-injecting proxy in front of moto.

Each test injects the fault a real store produces on exactly the request that matters (a
reset after a conditional PUT landed, an outage in the middle of a read) and checks what the
shared mechanisms do: conditional writes stay ours, a store that keeps failing is one
`StoreError` naming it and is never mistaken for a bad input.
"""

from __future__ import annotations

import io

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infra.faulty_s3 import FaultyS3, Request
from tasks.dedup_index.runs import Pointer, RunInfo, read_pointer, swap_pointer
from tasks.errors import StoreError, is_infrastructure
from tasks.io import cas, storage
from tasks.io.lock import Holder, lock_url, partition_lock
from tasks.io.lock_backends import backend_for
from tasks.pool.sources import iter_samples
from tasks.publish.commit import abort, begin

pytestmark = pytest.mark.s3
pytest_plugins = ["tests.s3_fixture"]  # the `s3` and `bucket` fixtures
FAST = {"config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}}}  # a short budget


@pytest.fixture
def proxy(s3):
    with FaultyS3(s3.endpoint) as p:
        yield p


def reset_after_first(proxy: FaultyS3, suffix: str) -> list[Request]:
    """The first PUT of a key ending in `suffix` lands, and its answer is lost (a reset)."""
    hit: list[Request] = []

    def first(req: Request) -> bool:
        if req.method == "PUT" and req.path.endswith(suffix) and not hit:
            hit.append(req)
            return True
        return False

    proxy.rate, proxy.kinds, proxy.only = 1.0, {"reset_after": 1.0}, first
    return hit


def test_a_lock_whose_creating_put_was_retried_after_landing_is_ours(proxy, bucket):
    """Defect: botocore retried the If-None-Match PUT that had created the lock; the store
    answered 412, the run took its own lock for another run's and waited for itself until
    CURATE_LOCK_TIMEOUT_S ran out (PartitionLocked naming its own pid)."""
    final, so = f"{bucket}/ds/pool/2026-01-02", proxy.storage_options
    hit = reset_after_first(proxy, ".2026-01-02.lock")
    with partition_lock(final, so, timeout_s=2):
        holder = Holder.parse(storage.read_bytes(lock_url(final), so))
        assert holder is not None
    assert hit and proxy.counts["reset_after"] == 1  # the fault was met


def test_a_heartbeat_retried_after_landing_keeps_the_lock(proxy, bucket):
    """Defect: a refresh (If-Match PUT) retried after it landed got 412 and was taken for a
    take-over: the lock was marked lost and a healthy run refused to publish."""
    so = proxy.storage_options
    backend = backend_for(f"{bucket}/ds/pool/.2026-01-02.lock", so)
    version = backend.create(b'{"token": "a"}')
    assert version is not None
    reset_after_first(proxy, ".2026-01-02.lock")
    renewed = backend.refresh(version, b'{"token": "a", "heartbeat": "1"}')
    assert renewed is not None and backend.holds(renewed)
    assert proxy.counts["reset_after"] == 1
    # a refresh over a lock someone else replaced is still refused
    assert backend.refresh(version, b'{"token": "a", "heartbeat": "2"}') is None


def test_a_pointer_swap_retried_after_landing_succeeds(proxy, bucket):
    """Defect: the dedup index's pointer swap (`_dedup/CURRENT.json`) was retried after it
    landed; the CAS saw the new pointer, called it a concurrent compaction (PointerMoved) and
    the night's compaction was dropped."""
    folder, so = f"{bucket}/ds/pool", proxy.storage_options
    new = Pointer([RunInfo("r-1", 3, {"2026-01-02": "v-1"}, {"2026-01-02": 0})])
    reset_after_first(proxy, "_dedup/CURRENT.json")
    swap_pointer(folder, None, new, so)
    assert read_pointer(folder, so)[0] == new
    assert proxy.counts["reset_after"] == 1


def test_a_catalog_update_retried_after_landing_applies_once(proxy, bucket):
    """The catalog's CAS under the same fault: the change lands exactly once."""
    url, so = f"{bucket}/ds/pool/_catalog.json", proxy.storage_options
    cas.update(url, lambda old: b"1", so)
    reset_after_first(proxy, "_catalog.json")
    assert cas.update(url, lambda old: (old or b"") + b"+", so) == b"1+"
    assert storage.read_bytes(url, so) == b"1+"
    assert proxy.counts["reset_after"] == 1


def test_an_outage_is_one_store_error_naming_the_store(proxy, bucket, s3):
    url = f"{bucket}/data/x.bin"
    storage.write_bytes(url, b"x", s3.storage_options)
    so = {**proxy.storage_options, **FAST}
    for mode in ("slowdown", "reset"):
        proxy.outage(mode)
        with pytest.raises(StoreError) as err:
            storage.read_bytes(url, so)
        assert str(err.value).startswith(f"store {bucket} at {proxy.endpoint} kept failing on ")
        assert url.removeprefix("s3://") in str(err.value)
        assert is_infrastructure(err.value) and isinstance(err.value, OSError)
        with pytest.raises(StoreError, match="kept failing"):
            storage.write_bytes(f"{bucket}/data/y.bin", b"y", so)
    proxy.restore()
    assert storage.read_bytes(url, so) == b"x"


def test_a_missing_object_is_still_file_not_found(proxy, bucket):
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"{bucket}/nothing-here", proxy.storage_options)


def parquet_bytes(rows: int) -> bytes:
    """Rows of 1 MB incompressible "images", 4 per row group: reading it takes many GETs."""
    rng = np.random.default_rng(0)
    images = [rng.bytes(1 << 20) for _ in range(rows)]
    table = pa.table({"jpg": images, "caption": [f"caption {i}" for i in range(rows)]})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=4, compression="none")
    return buf.getvalue()


@pytest.mark.parametrize("answered", [0, 1], ids=["at-open", "mid-read"])
def test_a_store_failing_under_a_parquet_shard_is_not_a_corrupt_shard(proxy, bucket, s3, answered):
    """Defect: the parquet reader took the store's OSError for a corrupt file: at open the
    shard became `unreadable`, mid-read its rows `corrupt_parquet`, and both were cached and
    published as bad input."""
    url = f"{bucket}/pool/00000.parquet"
    storage.write_bytes(url, parquet_bytes(12), s3.storage_options)
    so = {**proxy.storage_options, **FAST}
    proxy.outage_after(lambda r: r.method == "GET" and r.path.endswith(".parquet"), answered)
    if answered == 0:
        proxy.outage()
    with pytest.raises(StoreError, match=r"00000\.parquet"):
        list(iter_samples(url, so, fmt="parquet", image_column="jpg"))
    proxy.restore()
    samples = list(iter_samples(url, so, fmt="parquet", image_column="jpg"))
    assert len(samples) == 12 and "corrupt_parquet" not in {s.error for s in samples}


def test_aborting_a_version_while_the_store_is_down_keeps_the_run_error(proxy, bucket):
    """Defect: the clean-up of a failed run's version read the manifest from the store that
    had just failed, and its own error replaced the run's."""
    version = begin(f"{bucket}/ds/pool/2026-01-02", {**proxy.storage_options, **FAST})
    proxy.outage()
    abort(version)  # logs, never raises


def test_scores_table_round_trip_through_faults(proxy, bucket):
    """Whole files under every kind of fault at a high rate: what is read equals what was
    written (retries resend whole requests; a reset upload never half-lands)."""
    proxy.rate, proxy.seed = 0.4, 7
    so = proxy.storage_options
    frame = pl.DataFrame({"uid": [f"u{i}" for i in range(500)], "score": range(500)})
    for i in range(6):
        storage.write_parquet(frame, f"{bucket}/t/{i}.parquet", so)
    for i in range(6):
        assert storage.read_parquet(f"{bucket}/t/{i}.parquet", so).equals(frame)
    assert sum(proxy.counts[k] for k in ("slowdown", "internal", "reset", "reset_after")) > 0
