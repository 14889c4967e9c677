"""The one cache: get-or-compute, marker last, nothing cached on failure, attempts apart."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tasks.io import storage
from tasks.io.cache import MARKER, Attempt, Cache


def test_computes_once_then_reads_back(tmp_path: Path) -> None:
    cache, calls = Cache(str(tmp_path)), []

    def compute(attempt: Attempt) -> dict:
        calls.append(1)
        attempt.write_bytes("data.bin", b"payload")
        return {"n": 7}

    first = cache.get_or_compute("ns", {"input": "a"}, compute)
    second = cache.get_or_compute("ns", {"input": "a"}, compute)
    assert not first.cached and second.cached and calls == [1]
    assert first.key == second.key and second.meta == {"n": 7}
    assert storage.read_bytes(second.files["data.bin"]) == b"payload"
    other = cache.get_or_compute("ns", {"input": "b"}, compute)  # another key: computed
    assert other.key != first.key and calls == [1, 1]


def test_a_failed_computation_caches_nothing(tmp_path: Path) -> None:
    """The error policy: broken infrastructure leaves no marker, so the next run recomputes."""
    cache = Cache(str(tmp_path))

    def broken(attempt: Attempt) -> dict:
        attempt.write_bytes("half.bin", b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        cache.get_or_compute("ns", {"input": "a"}, broken)
    assert cache.lookup("ns", {"input": "a"}) is None
    assert list(tmp_path.rglob(MARKER)) == []
    # defect: the failed attempt's files stayed, so a full disk stayed full after the failure
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_force_recomputes_and_drops_the_superseded_attempt(tmp_path: Path) -> None:
    cache = Cache(str(tmp_path))
    first = cache.get_or_compute("ns", {"k": 1}, lambda a: a.write_bytes("x", b"1") or {})
    forced = cache.get_or_compute(
        "ns", {"k": 1}, lambda a: a.write_bytes("x", b"2") or {}, force=True
    )
    assert storage.read_bytes(forced.files["x"]) == b"2"
    assert not Path(first.files["x"]).exists()  # the old attempt's files are gone
    assert cache.lookup("ns", {"k": 1}).files == forced.files


def test_concurrent_computations_never_mix_their_files(tmp_path: Path) -> None:
    """Two writers of one key interleave: the marker names one complete attempt."""
    cache = Cache(str(tmp_path))
    a_wrote, b_done = threading.Event(), threading.Event()

    def slow(attempt: Attempt) -> dict:
        attempt.write_bytes("one", b"A1")
        a_wrote.set()
        assert b_done.wait(60)
        attempt.write_bytes("two", b"A2")
        return {"who": "A"}

    def fast(attempt: Attempt) -> dict:
        assert a_wrote.wait(60)
        attempt.write_bytes("one", b"B1")
        attempt.write_bytes("two", b"B2")
        return {"who": "B"}

    t = threading.Thread(target=lambda: cache.get_or_compute("ns", {"k": 1}, slow))
    t.start()
    cache.get_or_compute("ns", {"k": 1}, fast, force=True)
    b_done.set()
    t.join(60)
    hit = cache.lookup("ns", {"k": 1})
    got = (storage.read_bytes(hit.files["one"]), storage.read_bytes(hit.files["two"]))
    assert got == {"A": (b"A1", b"A2"), "B": (b"B1", b"B2")}[hit.meta["who"]]


def test_lock_makes_concurrent_callers_compute_once(tmp_path: Path) -> None:
    cache, calls, lock = Cache(str(tmp_path)), [], threading.Lock()
    start = threading.Barrier(4)

    def compute(attempt: Attempt) -> dict:
        with lock:
            calls.append(1)
        attempt.write_bytes("f", b"x")
        return {}

    def call() -> None:
        start.wait(60)
        cache.get_or_compute("dl", {"url": "u"}, compute, lock=True)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert calls == [1]
