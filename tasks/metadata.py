"""MetaCLIP metadata: load the entry list and find which entries each caption contains.

The semantics are fixed by `specs/metaclip.md`: pad the caption with spaces, wrap
`,.;:?!` and backtick in spaces, turn tabs/newlines/CRs into spaces, then entry `e` matches
when `" " + e + " "` occurs anywhere (overlaps allowed). One Aho-Corasick automaton over all
padded entries finds every occurrence in a single pass. Captions are normalised in polars and
searched in chunks: each chunk is joined with "\n" (which no normalised caption contains and
no searched pattern contains, so no match can cross two captions) and searched in one call;
match positions map back to captions through the chunk's offsets. The Rust automaton
(`ahocorasick_rs`) releases the GIL while searching, so chunks run on threads, one per core;
`pyahocorasick` is the (slower, single-threaded) fallback when it is not installed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from tasks import storage

logger = logging.getLogger(__name__)

WRAPPED = (",", ".", ";", ":", "?", "!", "`")
SPACED = ("\t", "\n", "\r")
_SEP = "\n"
CHUNK_ROWS = 16_384
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


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Matcher:
    """Finds the entry ids of captions; immutable and safe to share between threads."""

    def __init__(self, md: Metadata, backend: str | None = None, threads: int | None = None):
        self.metadata = md
        self.backend = backend or _default_backend()
        if self.backend not in _SEARCHERS:
            raise ValueError(f"unknown matcher backend {self.backend!r} (one of {_SEARCHERS})")
        # pyahocorasick holds the GIL while searching, so threads would only add overhead.
        self.threads = threads or (_cpu_count() if self.backend == "ahocorasick_rs" else 1)
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

    def match_series(self, captions: pl.Series) -> pl.Series:
        """Entry ids per caption as `List(UInt32)`, ascending and unique; nulls match nothing."""
        offsets, values = self._find(captions.cast(pl.String))
        arr = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values, pa.uint32()))
        return pl.Series("entry_ids", arr, dtype=pl.List(pl.UInt32))

    def match(self, captions: Sequence[str | None]) -> list[np.ndarray]:
        """Entry ids per caption as sorted unique uint32 arrays."""
        offsets, values = self._find(pl.Series("caption", list(captions), dtype=pl.String))
        return np.split(values, offsets[1:-1]) if len(captions) else []

    def _find(self, captions: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        n = len(captions)
        bounds = list(range(0, n, CHUNK_ROWS))
        parts = [captions.slice(b, CHUNK_ROWS) for b in bounds]
        workers = min(self.threads, len(parts))
        if workers <= 1:
            found = [self._find_chunk(p) for p in parts]
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="metaclip-match") as ex:
                found = list(ex.map(self._find_chunk, parts))
        rows = np.concatenate([r + b for (r, _), b in zip(found, bounds, strict=True)] or [[]])
        values = np.concatenate([v for _, v in found] or [[]]).astype(np.uint32)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(rows.astype(np.int64), minlength=n), out=offsets[1:])
        return offsets, values

    def _find_chunk(self, captions: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """(row, entry id) of every match in one chunk, sorted by row then entry, unique."""
        empty = np.zeros(0, np.int64)
        if self._searcher is None:
            return empty, empty
        norm = normalize(captions)
        binary = self._searcher.binary
        lens = (norm.str.len_bytes() if binary else norm.str.len_chars()).to_numpy()
        sizes = lens.astype(np.int64) + 1  # each caption plus its "\n"
        starts = np.cumsum(sizes) - sizes
        joined = norm.str.join(_SEP)
        hay = joined.cast(pl.Binary).item() if binary else joined.item()
        pats, pos = self._searcher.find(hay)
        rows = np.searchsorted(starts, pos, side="right") - 1
        n_entries = max(len(self.metadata), 1)
        # Matches arrive in text order, so keys are nearly sorted: a stable (run-aware) sort
        # plus a neighbour check is much faster than np.unique's hashing.
        key = np.sort(rows * n_entries + self._entry_of[pats], kind="stable")
        key = key[np.diff(key, prepend=-1) != 0]
        return key // n_entries, key % n_entries


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
