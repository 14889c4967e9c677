"""Compaction: fold newly published segments into runs, and keep the number of runs small.

Run after a night's commit (and by `curate verify --repair`-style tools): it reads the
catalog and the pointer, then

1. keeps every run whose covered partitions are all still published at the covered version
   (and, with semantic dedup, encoded with the dataset's codebook); partitions of the other
   runs that are still current go back to the pool of segments to place;
2. trains the dataset's codebook once enough embeddings exist (`ann.TRAIN_MIN`), from a
   deterministic sample of the earliest partitions' embeddings;
3. builds one new run from the segments no run covers (a night's segment, usually), and when
   `MERGE_AT` runs below `SEAL_ROWS` rows exist, rebuilds those, in partition order, into
   runs that close once they reach `SEAL_ROWS` rows (sealed: never rewritten again; a run
   may pass the seal by less than its last partition) and one last, open, run;
4. writes the new runs (new folders nobody reads yet), then swaps the pointer with a
   compare-and-swap, then removes run folders that no pointer names (the new one, the one it
   replaced, the current one) once they are an hour old (a reader that read the old pointer
   can finish; another compaction's fresh folders are not touched; a killed compaction's
   folders go later).

Embeddings of other weights are not comparable: each model (by the weights' identity) has
its own codebook, trained once its partitions hold `ann.TRAIN_MIN` embeddings, and its own
runs.

A kill at any point leaves the old pointer or the new one, never a mix; a compaction that
loses the swap to another one gives up (the next night's tries again).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from schemas.tables import DEDUP_EMB_FILE, DEDUP_INDEX_FILE
from tasks.dedup_index import ann
from tasks.dedup_index.keys import KeyTable
from tasks.dedup_index.runs import (
    ROOT,
    Codebook,
    Pointer,
    RunInfo,
    Segment,
    codebook_url,
    id_time,
    model_key,
    new_id,
    read_pointer,
    run_url,
    swap_pointer,
    write_rows,
)
from tasks.io import storage
from tasks.publish.catalog import read_catalog

logger = logging.getLogger(__name__)

SEAL_ROWS = 1_000_000  # runs this large (or larger) are never merged again
MERGE_AT = 4  # small runs merged when there are this many (a merge copies codes)


@dataclass
class Live:
    """The published partitions with a dedup segment, from the catalog."""

    versions: dict[str, str]  # partition -> current version
    rows: dict[str, int]  # kept samples (segment rows)
    embedded: set[str]  # partitions whose segment has embeddings
    models: dict[str, str | None]  # partition -> model key of its embeddings


def live_segments(folder: str, so: dict[str, Any] | None) -> Live:
    cat = read_catalog(folder, so)
    live = Live({}, {}, set(), {})
    for name, entry in cat.entries.items():
        files = entry.get("history_files") or []
        if entry.get("version") and DEDUP_INDEX_FILE in files:
            live.versions[name] = entry["version"]
            live.rows[name] = int((entry.get("counts") or {}).get("kept", 0))
            live.models[name] = model_key(entry.get("model"))
            if DEDUP_EMB_FILE in files and live.rows[name] > 0:
                live.embedded.add(name)
    return live


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
    live = live_segments(folder, so)
    pointer, seen = read_pointer(folder, so)
    books = dict(pointer.codebooks) if semantic else {}
    trained = []
    for model in sorted({live.models[p] for p in live.embedded} - {None}) if semantic else []:
        mine = sorted(p for p in live.embedded if live.models[p] == model)
        rows = sum(live.rows[p] for p in mine)
        book = books.get(model)
        grown = book is not None and rows >= ann.RETRAIN_FACTOR * max(book.rows, 1)
        if rows >= ann.TRAIN_MIN and (book is None or grown):
            books[model] = _train(folder, so, live, mine, rows)
            trained.append(model)
    keep = [r for r in pointer.runs if _still_good(r, live, books, max_distance)]
    covered = {p for r in keep for p in r.covers}
    loose = sorted(p for p in live.versions if p not in covered)
    rebuild: list[RunInfo] = []
    for model in sorted({r.model or "" for r in keep} | {live.models[p] or "" for p in loose}):
        small = [r for r in keep if (r.model or "") == model and r.rows < seal_rows]
        fresh = any((live.models[p] or "") == model for p in loose)
        if len(small) + int(fresh) >= merge_at:
            rebuild += small
    keep = [r for r in keep if r not in rebuild]
    reuse = [r for r in pointer.runs if r not in keep]  # codes worth copying, not encoding
    todo = sorted(loose + [p for r in rebuild for p in r.covers])
    if not todo and not trained:
        return {"runs": len(pointer.runs), "built": 0, "rows_written": 0}
    built = []
    for model in sorted({live.models[p] or "" for p in todo}):
        names = [p for p in todo if (live.models[p] or "") == model]
        book = books.get(model) if model else None
        data = storage.read_bytes(codebook_url(folder, book.id), so) if book else None
        for group in _groups(names, live.rows, seal_rows):
            segs = [Segment(folder, p, live.versions[p]) for p in group]
            built.append(build_run(folder, segs, so, data, book.id if book else None,
                                   max_distance, live.embedded, model or None, reuse))  # fmt: skip
    new = Pointer(sorted(keep + built, key=lambda r: min(r.covers)), books)
    swap_pointer(folder, seen, new, so)
    _collect_garbage(folder, so, new, pointer)
    done = {"runs": len(new.runs), "built": len(built), "rows_written": sum(r.rows for r in built),
            "trained_codebooks": len(trained)}  # fmt: skip
    logger.info("dedup index compacted: %s", done)
    return done


def _still_good(
    run: RunInfo, live: Live, books: dict[str, Codebook], max_distance: int | None
) -> bool:
    """A run is kept when every partition it covers is still published at that version, it
    holds one model's rows, and it is encoded with that model's current codebook."""
    if any(live.versions.get(p) != v for p, v in run.covers.items()):
        return False
    if any(live.models.get(p) != run.model for p in run.covers):
        return False
    book = books.get(run.model) if run.model else None
    has_emb = any(p in live.embedded for p in run.covers)
    encoded = run.ivf == (book.id if book and has_emb else None)
    return encoded and run.max_distance == max_distance


def _groups(names: list[str], sizes: dict[str, int], seal_rows: int) -> list[list[str]]:
    """Consecutive partitions in runs that close once they reach `seal_rows` rows (sealed:
    never rewritten); the last one may be smaller. A run that closed *before* the seal (the
    next partition would not fit) stayed below it, counted as small, and was rewritten with
    every merge for ever: a 986k-row run copied every third night of the 60-night bench."""
    out: list[list[str]] = []
    rows = 0
    for name in names:
        if not out or rows >= seal_rows:
            out.append([])
            rows = 0
        out[-1].append(name)
        rows += sizes.get(name, 0)
    return out


def _train(folder: str, so: Any, live: Live, names: list[str], embedded: int) -> Codebook:
    """A model's codebook, trained on its earliest partitions' embeddings (up to
    `ann.TRAIN_MAX` rows) with lists for the `embedded` rows the history holds, written
    under a new id, with its calibration."""
    parts, rows = [], 0
    for name in names:
        emb = Segment(folder, name, live.versions[name]).embeddings(so)
        if len(emb):
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
    return Codebook(book_id, embedded, calibration)


def build_run(
    folder: str,
    segments: list[Segment],
    so: dict[str, Any] | None,
    book: bytes | None,
    book_id: str | None,
    max_distance: int | None,
    with_emb: set[str],
    model: str | None = None,
    reuse: list[RunInfo] | None = None,
) -> RunInfo:
    """A new run holding `segments` (partition order, one model), in a new folder; the codes
    of partitions that a run of `reuse` holds at the same version, encoded with the same
    codebook, are copied from it instead of encoded again."""
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
    ivf = None
    if book is not None and any(s.partition in with_emb for s in segments):
        codes = _encode(folder, book, book_id, segments, starts, so, with_emb, reuse or [])
        storage.write_bytes(run_url(folder, run_id, "ivf.faiss"), codes, so)
        ivf = book_id
    return RunInfo(run_id, row, covers, starts, ivf, max_distance, model)


def _encode(
    folder: str,
    book: bytes,
    book_id: str | None,
    segments: list[Segment],
    starts: dict[str, int],
    so: Any,
    with_emb: set[str],
    reuse: list[RunInfo],
) -> bytes:
    """The segments' embeddings in the codebook's IVF-PQ, ids = run rows. Partitions an
    earlier run of `reuse` holds (same version, same codebook) are copied from its codes
    (`ann.merge_encoded`): a merge of runs costs a copy, not an encoding (assigning 1M rows
    to 3,432 lists took ~35 s of a compaction). The rest is encoded, one segment's
    embeddings in memory at a time."""
    wanted = {s.partition: s.version for s in segments if s.partition in with_emb}
    sources: list[tuple[bytes, ann.Remap]] = []
    copied: set[str] = set()
    for run in reuse:
        names = run.partitions()
        mine = [n for n in names if n not in copied and wanted.get(n) == run.covers[n]]
        if run.ivf is None or run.ivf != book_id or not mine:
            continue
        new_start = np.array([starts[n] if n in mine else -1 for n in names], dtype=np.int64)
        sources.append((storage.read_bytes(run_url(folder, run.id, "ivf.faiss"), so),
                        _remap(run, new_start)))  # fmt: skip
        copied.update(mine)

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for seg in segments:
            if seg.partition in wanted and seg.partition not in copied:
                emb = seg.embeddings(so)
                if len(emb):
                    yield emb, np.arange(len(emb), dtype=np.int64) + starts[seg.partition]

    fresh = ann.encode(book, chunks())
    if not sources:
        return fresh
    return ann.merge_encoded(book, [*sources, (fresh, lambda ids: (ids >= 0, ids))])


def _remap(run: RunInfo, new_start: np.ndarray) -> ann.Remap:
    """Run rows -> (kept, row in the new run): a row is kept when its partition moves
    (`new_start` >= 0, per partition in the run's order) and lands at the same offset."""

    def remap(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        part, seg_row = run.locate(ids)
        base = new_start[part]
        return base >= 0, base + seg_row

    return remap


GRACE_S = 3600  # an unnamed run or codebook younger than this may be a compaction in flight


def _collect_garbage(folder: str, so: Any, new: Pointer, old: Pointer) -> None:
    """Remove run folders and codebooks that no pointer names (the new one, the one it
    replaced, and the current one: another compaction may have swapped since) and that are
    older than GRACE_S (a compaction in flight writes its runs before it swaps). Best effort."""
    current, _ = read_pointer(folder, so)
    pointers = (new, old, current)
    named = {r.id for p in pointers for r in p.runs}
    books = {c.id for p in pointers for c in p.codebooks.values()}
    now = dt.datetime.now(dt.UTC)
    for sub, keep, strip in (("runs", named, ""), ("codebooks", books, ".faiss")):
        base = storage.join(folder, ROOT, sub)
        try:
            urls = storage.listdir(base, so)
        except (FileNotFoundError, OSError):
            continue
        for url in urls:
            name = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(strip)
            made = id_time(name)
            if name in keep or made is None or (now - made).total_seconds() < GRACE_S:
                continue
            try:
                storage.remove(url, so, recursive=True)
            except OSError as err:
                logger.warning("could not remove %s: %s", url, err)
