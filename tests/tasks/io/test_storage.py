"""Storage writes: whole files only, locally and on S3 (moto)."""

from __future__ import annotations

import pytest

from tasks.io import storage

pytest_plugins = ["tests.s3_fixture"]  # the `s3` and `bucket` fixtures


@pytest.mark.s3
@pytest.mark.parametrize("size", [1024, 12 << 20])  # one PUT, and a multipart upload
def test_a_writer_that_raises_leaves_no_object_on_s3(s3, bucket, size):
    """Defect: fsspec completes an upload when its file is closed, even when the writer
    raised half way, so a half-written object appeared under the final key."""
    url, so = f"{bucket}/half.bin", s3.storage_options
    with pytest.raises(RuntimeError, match="writer died"), storage.open_write(url, so) as f:
        f.write(b"x" * size)
        raise RuntimeError("writer died")
    assert not storage.exists(url, so)
    assert s3.fs().ls(bucket) == []
    with storage.open_write(url, so) as f:  # a writer that finishes does publish
        f.write(b"x" * size)
    assert len(storage.read_bytes(url, so)) == size


def test_a_local_writer_that_raises_leaves_nothing(tmp_path):
    url = str(tmp_path / "a" / "half.bin")
    with pytest.raises(RuntimeError), storage.open_write(url) as f:
        f.write(b"partial")
        raise RuntimeError("writer died")
    assert list((tmp_path / "a").iterdir()) == []


@pytest.mark.parametrize("where", ["local", "s3"])
def test_npy_rows_are_the_arrays_rows(where, tmp_path, request):
    """Rows in any order, repeated, read by byte ranges: the same as indexing the array."""
    import numpy as np

    so = None
    base = str(tmp_path)
    if where == "s3":
        so = request.getfixturevalue("s3").storage_options
        base = request.getfixturevalue("bucket")
    arr = np.arange(37 * 8, dtype=np.float16).reshape(37, 8)
    url = storage.join(base, "emb.npy")
    storage.write_bytes(url, storage.npy_bytes(arr), so)
    rows = np.array([36, 0, 5, 5, 17])
    assert np.array_equal(storage.read_npy_rows(url, rows, so), arr[rows])
    assert storage.read_npy_rows(url, np.zeros(0, np.int64), so).shape == (0, 8)
    with pytest.raises(IndexError):
        storage.read_npy_rows(url, np.array([37]), so)
