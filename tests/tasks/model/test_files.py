"""Model files: remote checkpoints fetched once per version, checkpoint hashes remembered."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import fsspec
import pytest

from tasks.model import files


@pytest.fixture
def remote() -> str:
    return f"memory://ckpt-{uuid.uuid4().hex[:8]}/weights.pt"


def test_a_replaced_remote_checkpoint_is_fetched_again(remote: str) -> None:
    """Defect: the download was cached by URL alone, so a replaced checkpoint at the same
    URL was never fetched again (scores kept coming from the old weights)."""
    fs = fsspec.filesystem("memory")
    fs.pipe(remote, b"version one")
    first = files.local_checkpoint(remote)
    assert first.read_bytes() == b"version one"
    assert files.local_checkpoint(remote) == first  # unchanged: no second download
    fs.pipe(remote, b"version two, longer")
    second = files.local_checkpoint(remote)
    assert second != first and second.read_bytes() == b"version two, longer"


def test_concurrent_fetches_download_once_to_a_complete_file(
    remote: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: concurrent processes shared one `.part` file. Each download now writes its own
    attempt folder under an inter-process lock, and lands by an atomic rename."""
    fsspec.filesystem("memory").pipe(remote, b"w" * 10_000)
    real, downloads = files._download, []

    def counted(*a, **k):
        downloads.append(1)
        return real(*a, **k)

    monkeypatch.setattr(files, "_download", counted)
    start, got = threading.Barrier(4), []

    def fetch() -> None:
        start.wait(60)
        got.append(files.local_checkpoint(remote))

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert downloads == [1] and len(set(got)) == 1 and got[0].read_bytes() == b"w" * 10_000
    assert not any(p.name.endswith(".tmp") for p in got[0].parent.iterdir())


def test_file_hash_is_remembered_by_path_size_and_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"abc")
    digest = files.file_sha256(str(path))
    assert digest == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    monkeypatch.setattr(files.storage, "sha256_file", lambda *a: pytest.fail("hashed again"))
    assert files.file_sha256(str(path)) == digest
    monkeypatch.undo()
    path.write_bytes(b"abcd")  # changed size (and mtime): hashed again
    assert files.file_sha256(str(path)) != digest


def test_missing_checkpoint_is_one_clear_error(tmp_path: Path, remote: str) -> None:
    with pytest.raises(files.ModelLoadError, match="not found"):
        files.local_checkpoint(str(tmp_path / "nope.pt"))
    with pytest.raises(files.ModelLoadError, match="not found"):
        files.local_checkpoint(remote)
