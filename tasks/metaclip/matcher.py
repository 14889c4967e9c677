"""MetaCLIP matching: find which metadata entries each caption contains.

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

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from operator import itemgetter
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from tasks.metaclip.metadata import Metadata
from tasks.metaclip.padding import Padding, pad_entry
from tasks.parallel import cpu_count, run_forked

logger = logging.getLogger(__name__)

WRAPPED = (",", ".", ";", ":", "?", "!", "`")
SPACED = ("\t", "\n", "\r")
_SEP = "\n"
CHUNK_ROWS = 16_384
PARALLEL_MIN_ROWS = 100_000  # below this, forking costs more than it saves
# Matchers kept per process, by their entries in all (an automaton takes ~200 bytes per
# entry: 500k English entries ~100 MiB); the most recently used one is always kept.
CACHE_MAX_ENTRIES = 10_000_000


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


class Matcher:
    """Finds the entry ids of captions; immutable and safe to share between threads.

    `padding` is how entries are padded (`tasks.metaclip.padding`): "plain" for English-only
    balancing, "tight" for worldwide balancing.
    """

    def __init__(
        self,
        md: Metadata,
        backend: str | None = None,
        threads: int | None = None,
        padding: Padding = "plain",
    ):
        self.metadata = md
        self.padding = padding
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
        patterns = [pad_entry(e, padding) for e in first]
        self._searcher = _SEARCHERS[self.backend](patterns) if patterns else None

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.metadata, self.backend, self.padding))

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

    @property
    def has_patterns(self) -> bool:
        """False when no entry can ever match (every one holds a tab, newline or CR)."""
        return self._searcher is not None

    def haystack(self, captions: pl.Series) -> tuple[bytes | str, np.ndarray]:
        """The searched text of `captions` and each one's start, for `search` (one group of
        a larger search that spreads its chunks over a shared thread pool)."""
        return self._haystack(captions.cast(pl.String))

    def search(
        self, hay: bytes | str, starts: np.ndarray, lo: int, hi: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(matches per row, ids) of rows lo..hi of a `haystack`; see `_search`."""
        return self._search(hay, starts, lo, hi)

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


def _rebuild(md: Metadata, backend: str, padding: Padding = "plain") -> Matcher:
    if backend == _default_backend():
        return get_matcher(md, padding)
    return Matcher(md, backend, padding=padding)


_cache: dict[tuple[str, str], Matcher] = {}
_cache_lock = threading.Lock()


def get_matcher(md: Metadata, padding: Padding = "plain") -> Matcher:
    """The process-wide matcher for `md`, built on first use (~2 s for 500k entries).

    The Rust automaton cannot be serialised, and building it costs less than loading a
    serialised pyahocorasick one (0.37 s vs 0.51 s for 100k entries), so automata live in
    memory only; what is cached on disk is the parsed list (`tasks.metaclip.folder`). The
    lock makes concurrent first calls build once; least recently used matchers go once the
    kept ones hold more than `CACHE_MAX_ENTRIES` entries.
    """
    key = (md.sha256, padding)
    with _cache_lock:
        m = _cache.pop(key, None)
        if m is None:
            t0 = time.perf_counter()
            m = Matcher(md, padding=padding)
            logger.info(
                "built %s matcher (%s padding) for %d entries in %.2fs",
                m.backend,
                padding,
                len(md),
                time.perf_counter() - t0,
            )
        _cache[key] = m  # most recently used last
        while len(_cache) > 1 and sum(len(v.metadata) for v in _cache.values()) > CACHE_MAX_ENTRIES:
            del _cache[next(iter(_cache))]
        return m
