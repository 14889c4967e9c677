"""A night's query of the index: which earlier published rows its candidates copy.

The history is what the plan read from the catalog: every published partition before the
night with a dedup segment, at its current version. Each run of the pointer serves the
partitions it covers *at that version* (rows of a partition re-published since are ignored);
segments no run covers are read directly. Runs are read one at a time, so memory is one run
plus the night's own candidates, whatever the history's length.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from tasks.dedup_index import ann
from tasks.dedup_index.keys import KeyTable, exact_links, perceptual_links
from tasks.dedup_index.runs import (
    Codebook,
    RunInfo,
    Segment,
    codebook_url,
    model_key,
    read_pointer,
    read_rows,
    run_url,
)
from tasks.io import storage

logger = logging.getLogger(__name__)

PRIOR_SCHEMA = {"uid": pl.String, "partition": pl.String, "sha256": pl.String, "phash": pl.UInt64}
METHODS = ("exact", "perceptual", "semantic")
Key = tuple[str, int]  # (partition, row in its segment)


@dataclass
class Matches:
    """Earlier rows that candidates copy, and the links per method.

    `rows` are the matched earlier rows, earliest partition first; each method's links are
    (candidate index, row index, distance or cosine).
    """

    rows: pl.DataFrame
    emb: np.ndarray | None  # the rows' fp16 embeddings (semantic dedup, comparable rows)
    links: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    versions: dict[str, str] = field(default_factory=dict)  # partition -> version queried
    read: dict[str, int] = field(default_factory=dict)  # runs, segments, rows looked at

    @staticmethod
    def empty(versions: dict[str, str] | None = None) -> Matches:
        z = np.zeros(0, np.int64)
        links = {m: (z, z, np.zeros(0)) for m in METHODS}
        return Matches(pl.DataFrame(schema=PRIOR_SCHEMA), None, links, dict(versions or {}))


class _Found:
    """Links gathered source by source, keyed by the earlier row's (partition, row)."""

    def __init__(self) -> None:
        self.parts: dict[str, list[tuple[np.ndarray, list[Key], np.ndarray]]] = {
            m: [] for m in METHODS
        }
        self.info: dict[Key, dict[str, Any]] = {}
        self.vectors: dict[Key, np.ndarray] = {}

    def add(self, method: str, ci: np.ndarray, keys: list[Key], value: np.ndarray,
            info: pl.DataFrame) -> None:  # fmt: skip
        for key, row in zip(keys, info.iter_rows(named=True), strict=True):
            self.info.setdefault(key, row)
        self.parts[method].append((ci, keys, value))

    def matches(self, versions: dict[str, str], read: dict[str, int], dim: int | None) -> Matches:
        order = sorted(self.info)
        index = {k: i for i, k in enumerate(order)}
        rows = pl.DataFrame(
            [{c: self.info[k].get(c) for c in PRIOR_SCHEMA} | {"partition": k[0]} for k in order],
            schema=PRIOR_SCHEMA,
        )
        links = {}
        for method, parts in self.parts.items():
            ci = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0)
            ri = [index[k] for p in parts for k in p[1]]
            val = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0)
            links[method] = (ci.astype(np.int64), np.array(ri, np.int64), val.astype(np.float64))
        emb = None
        if dim is not None and order:  # rows without a comparable vector: zeros match nothing
            emb = np.zeros((len(order), dim), np.float16)
            for k, v in self.vectors.items():
                if k in index:  # vectors read for candidates the cosine turned down: unused
                    emb[index[k]] = v
        return Matches(rows, emb, links, versions, read)


def query_history(
    folder: str,
    history: dict[str, dict[str, Any]],
    cand: pl.DataFrame,
    emb: np.ndarray | None,
    cfg: Any,
    model: dict[str, Any] | None,
    so: dict[str, Any] | None,
) -> Matches:
    """Links from `cand` (uid, sha256, phash; emb row i = cand row i) to earlier kept rows.

    `history`: {partition: {"version", "model", "embeddings"}} of the earlier partitions with
    a segment (the plan's, from the catalog); `cfg` the dedup config. Embeddings of
    partitions scored with other weights than `model` are not compared (not comparable).
    """
    versions = {p: info["version"] for p, info in sorted(history.items())}
    if not versions or cand.height == 0:
        return Matches.empty(versions)
    semantic = cfg.semantic is not None and emb is not None
    comparable = {
        p for p, info in history.items()
        if info.get("embeddings") and (model is None or info.get("model") == model)
    }  # fmt: skip
    pointer, _ = read_pointer(folder, so)
    book = pointer.book_for(model_key(model)) if semantic else None
    job = _Job(folder, so, cand, cfg, versions, comparable if semantic else set(), emb)
    covered: set[str] = set()
    read = {"runs": 0, "segments": 0, "rows": 0}
    for run in pointer.runs:
        live = {p for p, v in run.covers.items() if versions.get(p) == v}
        if live:
            covered |= live
            job.run(run, live, book)
            read["runs"] += 1
            read["rows"] += run.rows
    for p, v in versions.items():  # published since the last compaction, or re-published
        if p not in covered:
            read["rows"] += job.segment(Segment(folder, p, v), book)
            read["segments"] += 1
    job.fetch_vectors()
    return job.found.matches(versions, read, emb.shape[1] if semantic else None)


def match_rows(
    rows: pl.DataFrame,
    vectors: np.ndarray | None,
    cand: pl.DataFrame,
    emb: np.ndarray | None,
    cfg: Any,
) -> Matches:
    """Links from `cand` to earlier rows held in memory (uid, sha256, phash, partition; row i
    of `vectors` is row i of `rows`): the lookup of `query_history` without an index (tests,
    small tools)."""
    versions = {p: "" for p in rows["partition"].unique().sort().to_list()}
    semantic = cfg.semantic is not None and emb is not None and vectors is not None
    job = _Job("", None, cand, cfg, versions, set(versions) if semantic else set(), emb)
    if rows.height and cand.height:
        job.frame(rows, vectors if semantic else None, None)
    return job.found.matches(versions, {"rows": rows.height}, emb.shape[1] if semantic else None)


class _Job:
    """One night's candidates, looked up in source after source."""

    def __init__(self, folder: str, so: Any, cand: pl.DataFrame, cfg: Any,
                 versions: dict[str, str], comparable: set[str],
                 emb: np.ndarray | None) -> None:  # fmt: skip
        self.folder, self.so, self.cand, self.cfg = folder, so, cand, cfg
        self.versions, self.comparable = versions, comparable
        self.searcher = (
            ann.Searcher(emb, cfg.semantic.threshold, cfg.semantic.nprobe) if comparable else None
        )
        self.found = _Found()
        self._books: dict[str, bytes] = {}  # codebook id -> its bytes, read once

    def _keys(self, table: KeyTable) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        """(method, candidate, table row, value) of the exact and perceptual links."""
        out = []
        if self.cfg.exact:
            ci, rr = exact_links(table, self.cand["sha256"])
            out.append(("exact", ci, rr, np.zeros(len(ci))))
        if self.cfg.perceptual is not None:
            ci, rr, dist = perceptual_links(
                table, self.cand["phash"], self.cfg.perceptual.max_distance
            )
            out.append(("perceptual", ci, rr, dist.astype(np.float64)))
        return out

    def run(self, run: RunInfo, live: set[str], book: Codebook | None) -> None:
        data = storage.read_bytes(run_url(self.folder, run.id, "keys.npz"), self.so)
        found = self._keys(KeyTable.from_bytes(data))
        if self.searcher is not None and live & self.comparable:  # embeddings of this model
            found.append(self._semantic_run(run, live, book))
        names = run.partitions()
        kept = []
        for method, ci, rr, value in found:
            part, seg_row = run.locate(rr)
            usable = self.comparable if method == "semantic" else live
            ok = np.array([names[p] in live and names[p] in usable for p in part], dtype=bool)
            if ok.any():
                keys = [(names[p], int(r)) for p, r in zip(part[ok], seg_row[ok], strict=True)]
                kept.append((method, ci[ok], keys, value[ok], rr[ok]))
        if not kept:
            return
        # the rows every method matched, read in one pass (matches spread over a long
        # history touch most row groups: one pass per method read the run's rows 3 times)
        wanted = np.unique(np.concatenate([k[4] for k in kept]))
        rows = read_rows(run_url(self.folder, run.id, "rows.parquet"), wanted, self.so)
        for method, ci, keys, value, rr in kept:
            self.found.add(method, ci, keys, value, rows[np.searchsorted(wanted, rr)])

    def _semantic_run(
        self, run: RunInfo, live: set[str], book: Codebook | None
    ) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
        searcher = self.searcher
        assert searcher is not None
        names = run.partitions()
        if book is not None and run.ivf == book.id:
            data = storage.read_bytes(run_url(self.folder, run.id, "ivf.faiss"), self.so)
            floor = ann.floor_for(book.calibration, searcher.threshold)
            qi, rr = searcher.candidates(data, self._assigned(book), floor)
            part, seg_row = run.locate(rr)
            use = np.array([names[p] in live and names[p] in self.comparable for p in part], bool)
            qi, rr, part, seg_row = qi[use], rr[use], part[use], seg_row[use]
            keys = [(names[p], int(r)) for p, r in zip(part, seg_row, strict=True)]
            vectors = self._vectors(keys)
            ok, cos = searcher.confirm(qi, vectors)
            for j in np.flatnonzero(ok).tolist():  # kept for the reported cosine
                self.found.vectors[keys[j]] = vectors[j]
            return ("semantic", qi[ok], rr[ok], cos[ok])
        # encoded with no codebook (a small history): every pair compared, segment by segment
        qs, rs, cs = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
        for name in names:
            if name in live and name in self.comparable:
                vectors = Segment(self.folder, name, run.covers[name]).embeddings(self.so)
                if not len(vectors):
                    continue
                q, r, c = searcher.exact(vectors)
                for row in np.unique(r):
                    self.found.vectors[(name, int(row))] = vectors[int(row)]
                qs.append(q)
                rs.append(r + run.starts[name])
                cs.append(c)
        return ("semantic", np.concatenate(qs), np.concatenate(rs), np.concatenate(cs))

    def _vectors(self, keys: list[Key]) -> np.ndarray:
        """fp16 embeddings of earlier rows, read by byte ranges, grouped by segment."""
        assert self.searcher is not None
        dim = self.searcher.q.shape[1]
        out = np.zeros((len(keys), dim), np.float16)
        by_part: dict[str, list[int]] = {}
        for i, (name, _) in enumerate(keys):
            by_part.setdefault(name, []).append(i)
        for name, at in by_part.items():
            rows = np.array([keys[i][1] for i in at], dtype=np.int64)
            seg = Segment(self.folder, name, self.versions[name])
            out[at] = seg.emb_rows(rows, self.so)
        return out

    def segment(self, seg: Segment, book: Codebook | None = None) -> int:
        """Look the candidates up in a segment no run covers (read whole: it is one night)."""
        keys = seg.keys(self.so)
        use_emb = self.searcher is not None and seg.partition in self.comparable
        vectors = seg.embeddings(self.so) if use_emb else None
        if vectors is not None and not len(vectors):  # a night that kept nothing
            vectors = None
        use_book = vectors is not None and book is not None and len(vectors) > ann.FLAT_MAX
        parts = pl.Series([seg.partition] * keys.height, dtype=pl.String)
        self.frame(keys.with_columns(parts.alias("partition")), vectors,
                   book if use_book else None)  # fmt: skip
        return keys.height

    def _assigned(self, book: Codebook) -> tuple[np.ndarray, np.ndarray]:
        """The candidates' probed lists under `book` (read and assigned once a night)."""
        assert self.searcher is not None
        if book.id not in self._books:
            self._books[book.id] = storage.read_bytes(codebook_url(self.folder, book.id), self.so)
        return self.searcher.assign(book.id, self._books[book.id])

    def frame(
        self,
        rows: pl.DataFrame,
        vectors: np.ndarray | None,
        book: Codebook | None,
    ) -> None:
        """Look the candidates up in earlier rows held in memory (uid, sha256, phash,
        partition; `vectors` row i = rows row i), encoded with `book` when given, else
        compared pair by pair; a row's key is (partition, its index)."""
        found = self._keys(KeyTable.build(rows["sha256"], rows["phash"]))
        if vectors is not None and self.searcher is not None:
            if book is not None:
                assigned = self._assigned(book)
                index = ann.encode(self._books[book.id], [(vectors, np.arange(len(vectors)))])
                floor = ann.floor_for(book.calibration, self.searcher.threshold)
                qi, rr = self.searcher.candidates(index, assigned, floor)
                ok, cos = self.searcher.confirm(qi, vectors[rr])
                found.append(("semantic", qi[ok], rr[ok], cos[ok]))
            else:
                found.append(("semantic", *self.searcher.exact(vectors)))
        names = rows["partition"].to_list()
        for method, ci, rr, value in found:
            if not len(ci):
                continue
            keys = [(names[r], int(r)) for r in rr.tolist()]
            if vectors is not None:
                for k, r in zip(keys, rr.tolist(), strict=True):
                    self.found.vectors[k] = vectors[r]
            self.found.add(method, ci, keys, value, rows[rr.astype(np.int64)])

    def fetch_vectors(self) -> None:
        """Embeddings of matched earlier rows not read yet (for the reported cosine)."""
        if self.searcher is None:
            return
        missing = [k for k in self.found.info if k not in self.found.vectors
                   and k[0] in self.comparable]  # fmt: skip
        if missing:
            for k, v in zip(missing, self._vectors(missing), strict=True):
                self.found.vectors[k] = v
