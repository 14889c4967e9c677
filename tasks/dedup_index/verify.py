"""Check the dedup index against the bytes it was derived from: for every run, the rows of each
partition it covers are exactly that partition version's segment (its kept samples, which
`tasks.verify` checks against `samples.parquet`), its lookup tables are the ones those rows
give, and its IVF index holds one code per embedded row. Problems are sentences, as in
`tasks.verify`; rows of partitions re-published since a run was built are not problems (the
queries ignore them, and the next compaction drops them)."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from tasks.dedup_index.compact import live_segments
from tasks.dedup_index.keys import KeyTable
from tasks.dedup_index.runs import RunInfo, Segment, read_all_rows, read_pointer, run_url
from tasks.io import storage


def verify_index(folder: str, so: dict[str, Any] | None = None) -> list[str]:
    """Every problem of the dedup index of a pool flow folder; empty: it is exact."""
    try:
        pointer, _ = read_pointer(folder, so)
    except ValueError as err:
        return [f"dedup index pointer unreadable: {err}"]
    found = live_segments(folder, so)
    live, with_emb = found.versions, found.embedded
    problems: list[str] = []
    owner: dict[str, str] = {}
    for run in pointer.runs:
        for p in run.covers:
            if p in owner:
                problems.append(f"dedup index: {p} is in runs {owner[p]} and {run.id}")
            owner[p] = run.id
        try:
            problems += _check_run(folder, run, live, with_emb, so)
        except (OSError, ValueError, KeyError) as err:
            problems.append(f"dedup index run {run.id}: {type(err).__name__}: {err}")
    return problems


def _check_run(
    folder: str,
    run: RunInfo,
    live: dict[str, str],
    with_emb: set[str],
    so: dict[str, Any] | None,
) -> list[str]:
    rows = read_all_rows(run_url(folder, run.id, "rows.parquet"), so)
    if rows.height != run.rows:
        return [f"dedup index run {run.id}: {rows.height} rows, pointer says {run.rows}"]
    problems = []
    names = run.partitions()
    ends = [run.starts[n] for n in names[1:]] + [run.rows]
    for name, end in zip(names, ends, strict=True):
        part = rows[run.starts[name] : end]
        if set(part["partition"].unique().to_list()) - {name}:
            problems.append(f"dedup index run {run.id}: rows of {name} name other partitions")
        if live.get(name) != run.covers[name]:
            continue  # superseded since: ignored by queries
        seg = Segment(folder, name, run.covers[name]).keys(so)
        cols = ["uid", "sha256", "phash"]
        if not part.select(cols).equals(seg.select(cols)):
            problems.append(
                f"dedup index run {run.id}: rows of {name} ({part.height}) are not its "
                f"segment {run.covers[name]} ({seg.height} kept samples)"
            )
    table = KeyTable.from_bytes(storage.read_bytes(run_url(folder, run.id, "keys.npz"), so))
    want = KeyTable.build(rows["sha256"], rows["phash"])
    for field in ("sha_words", "sha_rows", "ph_values", "ph_rows"):
        if not np.array_equal(getattr(table, field), getattr(want, field)):
            problems.append(f"dedup index run {run.id}: keys.npz {field} differs from its rows")
    if run.ivf is not None:  # (a run built before its model had a codebook has none:
        problems += _check_ivf(folder, run, names, ends, with_emb, so)  # searched exactly)
    return problems


def _check_ivf(
    folder: str,
    run: RunInfo,
    names: list[str],
    ends: list[int],
    with_emb: set[str],
    so: dict[str, Any] | None,
) -> list[str]:
    from tasks.dedup_index.ann import _faiss

    faiss = _faiss()
    data = storage.read_bytes(run_url(folder, run.id, "ivf.faiss"), so)
    index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    want = sum(end - run.starts[n] for n, end in zip(names, ends, strict=True) if n in with_emb)
    if index.ntotal != want:
        return [f"dedup index run {run.id}: ivf.faiss holds {index.ntotal} codes, want {want}"]
    return []


def frame_of(folder: str, run: RunInfo, so: dict[str, Any] | None) -> pl.DataFrame:
    """A run's rows (tests and tools)."""
    return read_all_rows(run_url(folder, run.id, "rows.parquet"), so)
