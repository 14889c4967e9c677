"""MetaCLIP metadata: load the entry list and find which entries each caption contains.

The semantics are fixed by `specs/metaclip.md`: pad the caption with spaces, wrap
`,.;:?!` and backtick in spaces, turn tabs/newlines/CRs into spaces, then entry `e` matches
when `" " + e + " "` occurs anywhere (overlaps allowed). One Aho-Corasick automaton over all
padded entries finds every occurrence in a single pass. Captions are normalised in polars and
searched in chunks: each chunk is joined with "\n" (which no normalised caption contains and
no searched pattern contains, so no match can cross two captions) and searched in one call;
match positions map back to captions through the chunk's offsets. The Rust automaton
(`ahocorasick_rs`) releases the GIL while searching but not while it builds one Python tuple
per match, so threads barely scale: small inputs run on threads, large ones (>=
`PARALLEL_MIN_ROWS`) are split across forked processes that inherit the built automaton and
return numpy arrays. `pyahocorasick` is the (slower, single-threaded) fallback.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import logging
import multiprocessing as mp
import os
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, TypeVar

import numpy as np
import polars as pl
import pyarrow as pa

from tasks import storage

logger = logging.getLogger(__name__)
T = TypeVar("T")

WRAPPED = (",", ".", ";", ":", "?", "!", "`")
SPACED = ("\t", "\n", "\r")
_SEP = "\n"
CHUNK_ROWS = 16_384
PARALLEL_MIN_ROWS = 100_000  # below this, forking costs more than it saves
_CACHE_MAX = 2


class MetadataError(ValueError):
    """The metadata file is unusable; the message is one line naming the file and the reason."""


@dataclass(frozen=True)
class Metadata:
    """The entry list (an entry's id is its position) and a hash identifying it.

    `sha256` hashes the canonical JSON of the entries (compact, ASCII-escaped), not the file
    bytes, so the same list plain or gzipped, or re-serialised, keys the same caches and counts.
    """

    entries: tuple[str, ...]
    sha256: str

    @classmethod
    def from_entries(cls, entries: Sequence[str]) -> Metadata:
        entries = tuple(entries)
        canon = json.dumps(list(entries), ensure_ascii=True, separators=(",", ":"))
        return cls(entries, hashlib.sha256(canon.encode("ascii")).hexdigest())

    def __len__(self) -> int:
        return len(self.entries)


def load_metadata(url: str, storage_options: dict[str, Any] | None = None) -> Metadata:
    """Read MetaCLIP's metadata.json (a JSON array of strings), plain or gzipped, from any URL.

    Gzip is detected by its magic bytes, not the file name. Duplicate entries keep their
    positions (ids) but only the first occurrence is ever reported as a match.
    """
    try:
        raw = storage.read_bytes(url, storage_options)
    except OSError as e:
        raise MetadataError(f"metadata: cannot read {url} ({type(e).__name__}: {e})") from None
    entries = _parse(_gunzip(raw, url), url)
    dups = len(entries) - len(set(entries))
    if dups:
        logger.warning(
            "metadata %s has %d duplicate entries; only the first id of each is matched", url, dups
        )
    return Metadata.from_entries(entries)


def _gunzip(raw: bytes, url: str) -> bytes:
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise MetadataError(f"metadata: {url} is not valid gzip ({e})") from None


def _parse(raw: bytes, url: str) -> list[str]:
    try:
        obj = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise MetadataError(f"metadata: {url} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        where = f"line {e.lineno} column {e.colno}"
        raise MetadataError(f"metadata: {url} is not valid JSON ({e.msg} at {where})") from None
    if not isinstance(obj, list):
        raise MetadataError(f"metadata: {url} is not a JSON list of strings")
    for i, e in enumerate(obj):
        if not isinstance(e, str):
            kind = type(e).__name__
            raise MetadataError(f"metadata: {url} is not a JSON list of strings (item {i}: {kind})")
    if not obj:
        raise MetadataError(f"metadata: {url} is an empty list")
    try:
        "".join(obj).encode("utf-8")
    except UnicodeEncodeError:
        raise MetadataError(f"metadata: {url} has an entry with a lone surrogate") from None
    return obj


def normalize(captions: pl.Series) -> pl.Series:
    """Spec steps 1-3 on a string Series; null captions become "" (which matches nothing)."""
    repl = [f" {p} " for p in WRAPPED] + [" "] * len(SPACED)
    return (" " + captions.str.replace_many(list(WRAPPED + SPACED), repl) + " ").fill_null("")


class _RsSearcher:
    """Rust Aho-Corasick over UTF-8 bytes; positions are byte offsets. Releases the GIL."""

    binary = True

    def __init__(self, patterns: list[str]) -> None:
        import ahocorasick_rs

        self._ac = ahocorasick_rs.BytesAhoCorasick([p.encode() for p in patterns])

    def find(self, hay: bytes) -> tuple[np.ndarray, np.ndarray]:
        m = self._ac.find_matches_as_indexes(hay, overlapping=True)
        pats = np.fromiter(map(itemgetter(0), m), np.int64, len(m))
        return pats, np.fromiter(map(itemgetter(1), m), np.int64, len(m))


class _PySearcher:
    """pyahocorasick fallback; positions are str indices (of each match's last character)."""

    binary = False

    def __init__(self, patterns: list[str]) -> None:
        import ahocorasick

        self._ac = ahocorasick.Automaton()
        for i, p in enumerate(patterns):
            self._ac.add_word(p, i)
        self._ac.make_automaton()

    def find(self, hay: str) -> tuple[np.ndarray, np.ndarray]:
        m = list(self._ac.iter(hay))
        pats = np.fromiter(map(itemgetter(1), m), np.int64, len(m))
        return pats, np.fromiter(map(itemgetter(0), m), np.int64, len(m))


_SEARCHERS: dict[str, Any] = {"ahocorasick_rs": _RsSearcher, "pyahocorasick": _PySearcher}


def _default_backend() -> str:
    try:
        import ahocorasick_rs  # noqa: F401
    except ImportError:
        return "pyahocorasick"
    return "ahocorasick_rs"


def cpu_count() -> int:
    """Cores this process may run on (its affinity), not the machine's total."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Matcher:
    """Finds the entry ids of captions; immutable and safe to share between threads."""

    def __init__(self, md: Metadata, backend: str | None = None, threads: int | None = None):
        self.metadata = md
        self.backend = backend or _default_backend()
        if self.backend not in _SEARCHERS:
            raise ValueError(f"unknown matcher backend {self.backend!r} (one of {_SEARCHERS})")
        # pyahocorasick holds the GIL while searching, so threads would only add overhead.
        self.threads = threads or (cpu_count() if self.backend == "ahocorasick_rs" else 1)
        # A pattern with a tab/newline/CR can never occur in a normalised caption; dropping it
        # keeps the "\n" joiner match-free. Later duplicates are dropped: first id wins.
        first: dict[str, int] = {}
        for i, e in enumerate(md.entries):
            if e not in first and not any(c in e for c in SPACED):
                first[e] = i
        self._entry_of = np.fromiter(first.values(), np.int64, len(first))
        patterns = [f" {e} " for e in first]
        self._searcher = _SEARCHERS[self.backend](patterns) if patterns else None

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.metadata, self.backend))

    def match_series(self, captions: pl.Series, allow_fork: bool = False) -> pl.Series:
        """Entry ids per caption as `List(UInt32)`, ascending and unique; nulls match nothing."""
        return entry_ids_series(*self.match_arrays(captions, allow_fork))

    def match(self, captions: Sequence[str | None]) -> list[np.ndarray]:
        """Entry ids per caption as sorted unique uint32 arrays."""
        offsets, values = self.match_arrays(pl.Series("caption", list(captions), dtype=pl.String))
        return np.split(values, offsets[1:-1]) if len(captions) else []

    def match_arrays(
        self, captions: pl.Series, allow_fork: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n + 1 int64 offsets, flat uint32 ids): caption i's ids are ids[off[i]:off[i + 1]].

        Inputs are searched on threads; with `allow_fork`, large ones (`PARALLEL_MIN_ROWS`)
        in forked processes, for the same result. Forking is only safe in a process whose
        other threads hold no locks (the `curate balance` command), never inside a Prefect
        worker, so it is opt-in.
        """
        captions = captions.cast(pl.String)
        n = len(captions)
        if self._searcher is None or n == 0:
            return np.zeros(n + 1, np.int64), np.zeros(0, np.uint32)
        hay, starts = self._haystack(captions)
        workers = min(self.threads, cpu_count())
        if allow_fork and n >= PARALLEL_MIN_ROWS and workers > 1:
            parts = run_forked(lambda lo, hi: self._search(hay, starts, lo, hi), n, workers)
        else:
            bounds = [(b, min(b + CHUNK_ROWS, n)) for b in range(0, n, CHUNK_ROWS)]
            workers = min(self.threads, len(bounds))
            with ThreadPoolExecutor(max(workers, 1), thread_name_prefix="metaclip-match") as ex:
                parts = list(ex.map(lambda b: self._search(hay, starts, *b), bounds))
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(np.concatenate([c for c, _ in parts]), out=offsets[1:])
        return offsets, np.concatenate([v for _, v in parts])

    def _haystack(self, captions: pl.Series) -> tuple[bytes | str, np.ndarray]:
        """All normalised captions, each followed by "\n", and each one's start (n + 1 offsets).

        Built with polars in the calling process, so `_search` needs no polars (safe to fork).
        """
        norm = normalize(captions) + _SEP
        lens = norm.str.len_bytes() if self._searcher.binary else norm.str.len_chars()
        starts = np.zeros(len(norm) + 1, np.int64)
        np.cumsum(lens.to_numpy(), out=starts[1:])
        joined = norm.str.join("")
        return (joined.cast(pl.Binary) if self._searcher.binary else joined).item(), starts

    def _search(
        self, hay: bytes | str, starts: np.ndarray, lo: int, hi: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(matches per row, uint32 entry ids) of rows lo..hi, searched CHUNK_ROWS at a time.

        Chunks bound the searcher's per-match Python objects; ids are ascending and unique.
        """
        counts, ids = [], []
        n_entries = max(len(self.metadata), 1)
        for a in range(lo, hi, CHUNK_ROWS):
            b = min(a + CHUNK_ROWS, hi)
            pats, pos = self._searcher.find(hay[starts[a] : starts[b]])
            rows = np.searchsorted(starts[a : b + 1] - starts[a], pos, side="right") - 1
            # Matches arrive in text order, so keys are nearly sorted: a stable (run-aware)
            # sort plus a neighbour check is much faster than np.unique's hashing.
            key = np.sort(rows * n_entries + self._entry_of[pats], kind="stable")
            key = key[np.diff(key, prepend=-1) != 0]
            counts.append(np.bincount(key // n_entries, minlength=b - a))
            ids.append((key % n_entries).astype(np.uint32))
        return np.concatenate(counts), np.concatenate(ids)


def entry_ids_series(offsets: np.ndarray, values: np.ndarray) -> pl.Series:
    """`Matcher.match_arrays` output as the `List(UInt32)` Series named "entry_ids"."""
    arr = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values, pa.uint32()))
    return pl.Series("entry_ids", arr, dtype=pl.List(pl.UInt32))


def run_forked(fn: Callable[[int, int], T], n: int, workers: int) -> list[T]:
    """`fn(lo, hi)` for `workers` contiguous ranges of `range(n)`, all but the first forked.

    The CPU-bound Python part of matching and hashing holds the GIL, so only processes scale.
    `fn` reaches the children through fork (nothing big is pickled; results are numpy arrays)
    and must not use polars or logging: locks and thread pools held by other threads at fork
    time do not survive it. The parent computes the first range itself. Without fork (or in a
    daemon process) every range runs here.
    """
    cuts = [n * i // workers for i in range(workers + 1)]
    ranges = [(a, b) for a, b in itertools.pairwise(cuts) if b > a]
    can_fork = "fork" in mp.get_all_start_methods() and not mp.current_process().daemon
    if len(ranges) < 2 or not can_fork:
        return [fn(a, b) for a, b in ranges]
    key = next(_fork_keys)
    _forked[key] = fn  # set before the pool forks: the children inherit it
    try:
        ctx = mp.get_context("fork")
        with ProcessPoolExecutor(len(ranges) - 1, mp_context=ctx) as ex:
            futures = [ex.submit(_call_forked, key, a, b) for a, b in ranges[1:]]
            first = fn(*ranges[0])
            return [first, *(f.result() for f in futures)]
    except BrokenProcessPool:  # a child died (out of memory, killed): redo its rows here
        logger.warning("a forked worker died; computing its rows in this process instead")
        return [fn(a, b) for a, b in ranges]
    finally:
        del _forked[key]


def _call_forked(key: int, lo: int, hi: int) -> Any:
    return _forked[key](lo, hi)


_forked: dict[int, Callable[[int, int], Any]] = {}
_fork_keys = itertools.count()


def _rebuild(md: Metadata, backend: str) -> Matcher:
    return get_matcher(md) if backend == _default_backend() else Matcher(md, backend)


_cache: dict[str, Matcher] = {}
_cache_lock = threading.Lock()


def get_matcher(md: Metadata) -> Matcher:
    """The process-wide matcher for `md`, built on first use (~2 s for 500k entries).

    Building is fast enough that nothing is cached on disk. The lock makes concurrent first
    calls build once; only the last few metadata lists are kept, as each costs memory.
    """
    with _cache_lock:
        m = _cache.get(md.sha256)
        if m is None:
            t0 = time.perf_counter()
            m = Matcher(md)
            logger.info(
                "built %s matcher for %d entries in %.2fs",
                m.backend,
                len(md),
                time.perf_counter() - t0,
            )
            _cache[md.sha256] = m
            while len(_cache) > _CACHE_MAX:
                del _cache[next(iter(_cache))]
        return m
