"""Compaction: fold newly published segments into runs, and keep the number of runs small.

Run after a night's commit (and by `curate verify --repair`-style tools): it reads the
catalog and the pointer, then

1. keeps every run whose covered partitions are all still published at the covered version
   (and, with semantic dedup, encoded with the dataset's codebook); partitions of the other
   runs that are still current go back to the pool of segments to place;
2. trains the dataset's codebook once enough embeddings exist (`ann.TRAIN_MIN`), from a
   deterministic sample of the earliest partitions' embeddings;
3. builds one new run from the segments no run covers (a night's segment, usually), and when
   `MERGE_AT` runs below `SEAL_ROWS` rows exist, rebuilds those into runs of up to
   `SEAL_ROWS` rows (runs that large are never rewritten again);
4. writes the new runs (new folders nobody reads yet), then swaps the pointer with a
   compare-and-swap, then removes run folders that neither the new pointer nor the one it
   replaced names (a reader that read the old pointer can finish; a killed compaction's
   folders go at the next one).

A kill at any point leaves the old pointer or the new one, never a mix; a compaction that
loses the swap to another one gives up (the next night's tries again).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import polars as pl

from schemas.tables import DEDUP_EMB_FILE, DEDUP_INDEX_FILE
from tasks.dedup_index import ann
from tasks.dedup_index.keys import KeyTable
from tasks.dedup_index.runs import (
    ROOT,
    Pointer,
    RunInfo,
    Segment,
    codebook_url,
    new_id,
    read_pointer,
    run_url,
    swap_pointer,
    write_rows,
)
from tasks.io import storage
from tasks.publish.catalog import read_catalog

logger = logging.getLogger(__name__)

SEAL_ROWS = 1_000_000  # runs this large are never merged again
MERGE_AT = 8  # small runs merged when there are this many


def live_segments(folder: str, so: dict[str, Any] | None) -> tuple[dict[str, str], dict, set]:
    """({partition: version} with a dedup segment, {partition: kept rows}, partitions with
    embeddings), from the catalog."""
    cat = read_catalog(folder, so)
    live, rows, emb = {}, {}, set()
    for name, entry in cat.entries.items():
        files = entry.get("history_files") or []
        if entry.get("version") and DEDUP_INDEX_FILE in files:
            live[name] = entry["version"]
            rows[name] = int((entry.get("counts") or {}).get("kept", 0))
            if DEDUP_EMB_FILE in files:
                emb.add(name)
    return live, rows, emb


def compact(
    folder: str,
    so: dict[str, Any] | None,
    *,
    semantic: bool,
    max_distance: int | None,
    seal_rows: int = SEAL_ROWS,
    merge_at: int = MERGE_AT,
) -> dict[str, Any]:
    """Bring the index up to date with the published partitions; what it did."""
    live, sizes, with_emb = live_segments(folder, so)
    pointer, seen = read_pointer(folder, so)
    codebook, calibration, trained = pointer.codebook, pointer.calibration, False
    embedded = sum(sizes[p] for p in with_emb)
    grown = codebook is not None and embedded >= ann.RETRAIN_FACTOR * max(pointer.codebook_rows, 1)
    if semantic and embedded >= ann.TRAIN_MIN and (codebook is None or grown):
        codebook, calibration = _train(folder, so, live, with_emb, embedded)
        trained = True
    keep: list[RunInfo] = []
    for run in pointer.runs:
        current = all(live.get(p) == v for p, v in run.covers.items())
        encoded = not semantic or run.ivf == codebook
        if current and encoded and run.max_distance == max_distance:
            keep.append(run)
    covered = {p for r in keep for p in r.covers}
    loose = sorted(p for p in live if p not in covered)
    small = [r for r in keep if r.rows < seal_rows]
    rebuild = small if len(small) + (1 if loose else 0) >= merge_at else []
    keep = [r for r in keep if r not in rebuild]
    todo = sorted(loose + [p for r in rebuild for p in r.covers])
    if not todo and not trained:
        return {"runs": len(pointer.runs), "built": 0, "rows_written": 0}
    book = storage.read_bytes(codebook_url(folder, codebook), so) if codebook else None
    built = []
    for group in _groups(todo, sizes, seal_rows):
        segs = [Segment(folder, p, live[p]) for p in group]
        built.append(build_run(folder, segs, so, book, codebook, max_distance, with_emb))
    rows = embedded if trained else pointer.codebook_rows
    new = Pointer(sorted(keep + built, key=lambda r: min(r.covers)), codebook, rows, calibration)
    swap_pointer(folder, seen, new, so)
    _collect_garbage(folder, so, new, pointer)
    done = {"runs": len(new.runs), "built": len(built), "rows_written": sum(r.rows for r in built),
            "trained_codebook": trained}  # fmt: skip
    logger.info("dedup index compacted: %s", done)
    return done


def _groups(names: list[str], sizes: dict[str, int], seal_rows: int) -> list[list[str]]:
    """Consecutive partitions in runs of at most `seal_rows` rows (a bigger one alone)."""
    out: list[list[str]] = []
    rows = 0
    for name in names:
        if not out or rows + sizes.get(name, 0) > seal_rows:
            out.append([])
            rows = 0
        out[-1].append(name)
        rows += sizes.get(name, 0)
    return out


def _train(folder: str, so: Any, live: dict[str, str], with_emb: set[str], embedded: int) -> str:
    """The dataset's codebook, trained on the earliest partitions' embeddings (up to
    `ann.TRAIN_MAX` rows, an even stride through them), written under a new id."""
    parts, rows = [], 0
    for name in sorted(with_emb):
        emb = Segment(folder, name, live[name]).embeddings(so)
        parts.append(emb)
        rows += len(emb)
        if rows >= ann.TRAIN_MAX:
            break
    sample = np.concatenate(parts)[: ann.TRAIN_MAX]
    book_id = new_id("cb")
    nlist = ann.n_lists(embedded, len(sample))
    data, calibration = ann.train_codebook(sample, nlist)
    storage.write_bytes(codebook_url(folder, book_id), data, so)
    logger.info("dedup index: codebook %s (%d lists) trained on %d embeddings", book_id, nlist,
                len(sample))  # fmt: skip
    return book_id, calibration


def build_run(
    folder: str,
    segments: list[Segment],
    so: dict[str, Any] | None,
    book: bytes | None,
    book_id: str | None,
    max_distance: int | None,
    with_emb: set[str],
) -> RunInfo:
    """A new run holding `segments` (partition order), written to its own new folder."""
    run_id = new_id("r")
    frames, starts, covers, row = [], {}, {}, 0
    for seg in segments:
        keys = seg.keys(so)
        starts[seg.partition], covers[seg.partition] = row, seg.version
        frames.append(keys.with_columns(pl.lit(seg.partition).alias("partition")))
        row += keys.height
    rows = pl.concat(frames) if frames else pl.DataFrame()
    table = KeyTable.build(rows["sha256"], rows["phash"])
    storage.write_bytes(run_url(folder, run_id, "keys.npz"), table.to_bytes(max_distance), so)
    write_rows(run_url(folder, run_id, "rows.parquet"),
               rows.select("uid", "partition", "sha256", "phash"), so)  # fmt: skip
    if book is not None:
        storage.write_bytes(run_url(folder, run_id, "ivf.faiss"),
                            _encode(book, segments, starts, so, with_emb), so)  # fmt: skip
    return RunInfo(run_id, row, covers, starts, book_id if book else None, max_distance)


def _encode(
    book: bytes, segments: list[Segment], starts: dict[str, int], so: Any, with_emb: set[str]
) -> bytes:
    """The segments' embeddings in the codebook's IVF-PQ, ids = run rows (one segment's
    embeddings in memory at a time)."""

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for seg in segments:
            if seg.partition in with_emb:
                emb = seg.embeddings(so)
                yield emb, np.arange(len(emb), dtype=np.int64) + starts[seg.partition]

    return ann.encode(book, chunks())


def _collect_garbage(folder: str, so: Any, new: Pointer, old: Pointer) -> None:
    """Remove run folders and codebooks neither pointer names (best effort)."""
    named = {r.id for r in new.runs} | {r.id for r in old.runs}
    books = {b for b in (new.codebook, old.codebook) if b}
    for sub, keep, strip in (("runs", named, ""), ("codebooks", books, ".faiss")):
        base = storage.join(folder, ROOT, sub)
        try:
            urls = storage.listdir(base, so)
        except (FileNotFoundError, OSError):
            continue
        for url in urls:
            name = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(strip)
            if name not in keep:
                try:
                    storage.remove(url, so, recursive=True)
                except OSError as err:
                    logger.warning("could not remove %s: %s", url, err)
