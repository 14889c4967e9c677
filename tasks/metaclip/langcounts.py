"""Per-language entry counts of worldwide balancing: one vector per metadata language.

A count set maps each metadata language to an int64 vector (one count per entry of that
language's list, ids = positions) and remembers which list each vector counts (the list's
sha256), because counts of another list mean nothing. Count sets merge by addition
(`add_counts`), whichever shards, workers or nights they come from, and are stored as one
small parquet of the non-zero counts: columns `lang`, `entry_id`, `count`, with the lists'
hashes and sizes in the parquet's key-value metadata (`to_parquet_bytes`/`from_parquet_bytes`).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

LANGS_KEY = b"clip_curate.languages"  # {code: {"sha256": ..., "entries": n}}
PADDING_KEY = b"clip_curate.padding"  # counts of tight-padded matching (worldwide mode)


class CountsError(ValueError):
    """A count file or count set that cannot be used (corrupt, or mixing lists)."""


@dataclass(frozen=True)
class LangCounts:
    """`vectors[code]`: counts of language `code`'s entries; `sha256[code]`: its list."""

    vectors: Mapping[str, np.ndarray] = field(default_factory=dict)
    sha256: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.vectors) != set(self.sha256):
            raise CountsError("every language's counts need the sha256 of their list")

    def get(self, code: str, n: int) -> np.ndarray:
        """Counts of `code` (zeros of length `n` when the set has none)."""
        v = self.vectors.get(code)
        return np.asarray(v, np.int64) if v is not None else np.zeros(n, np.int64)

    def total(self) -> dict[str, int]:
        return {code: int(v.sum()) for code, v in sorted(self.vectors.items())}


def add_counts(a: LangCounts, b: LangCounts) -> LangCounts:
    """The sum of two count sets: languages of either, vectors of the same list added.

    The same language counted against two different lists (or sizes) is an error: their
    ids are positions in different lists.
    """
    vectors = {k: np.asarray(v, np.int64).copy() for k, v in a.vectors.items()}
    shas = dict(a.sha256)
    for code, v in b.vectors.items():
        v = np.asarray(v, np.int64)
        if code not in vectors:
            vectors[code], shas[code] = v.copy(), b.sha256[code]
            continue
        if shas[code] != b.sha256[code] or len(vectors[code]) != len(v):
            raise CountsError(f"counts of {code!r} were taken against different metadata lists")
        vectors[code] += v
    return LangCounts(vectors, shas)


def merge_history(newer: LangCounts, older: LangCounts) -> LangCounts:
    """Counts of a later night (or this night's own) on top of earlier ones, for a running
    total: languages counted against the same list add up; a language whose list changed
    keeps only the newer counts (the older ones count positions of another list)."""
    kept = {}
    for code in older.vectors:
        if code in newer.sha256 and newer.sha256[code] != older.sha256[code]:
            logger.info("running counts of %r restart: its list changed", code)
            continue
        kept[code] = older.vectors[code]
    return add_counts(newer, LangCounts(kept, {c: older.sha256[c] for c in kept}))


def restrict(counts: LangCounts, wanted: Mapping[str, str]) -> LangCounts:
    """The languages of `wanted` ({code: list sha256}) whose counts were taken against that
    very list."""
    codes = [c for c in counts.vectors if wanted.get(c) == counts.sha256[c]]
    return LangCounts({c: counts.vectors[c] for c in codes}, {c: counts.sha256[c] for c in codes})


def to_parquet_bytes(counts: LangCounts) -> bytes:
    """The non-zero counts as a parquet (lang, entry_id, count), sorted by lang and id."""
    langs, ids, vals = [], [], []
    meta = {}
    for code in sorted(counts.vectors):
        v = np.asarray(counts.vectors[code], np.int64)
        if len(v) and v.min() < 0:
            raise CountsError(f"counts of {code!r} must not be negative")
        nz = np.flatnonzero(v)
        langs += [code] * len(nz)
        ids.append(nz)
        vals.append(v[nz])
        meta[code] = {"sha256": counts.sha256[code], "entries": len(v)}
    table = pa.table(
        {
            "lang": pa.array(langs, pa.string()),
            "entry_id": pa.array(np.concatenate(ids) if ids else [], pa.uint32()),
            "count": pa.array(np.concatenate(vals) if vals else [], pa.int64()),
        }
    )
    kv = {LANGS_KEY: json.dumps(meta, sort_keys=True).encode(), PADDING_KEY: b"tight"}
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(kv), buf, compression="zstd")
    return buf.getvalue()


def is_lang_counts(data: bytes) -> bool:
    """True for a file written by `to_parquet_bytes` (English-only count files are not)."""
    try:
        meta = pq.read_schema(io.BytesIO(data)).metadata or {}
    except pa.ArrowException:
        return False
    return LANGS_KEY in meta and meta.get(PADDING_KEY) == b"tight"


def from_parquet_bytes(
    data: bytes, wanted: Mapping[str, str] | None = None, where: str = "counts"
) -> LangCounts:
    """A count set read back; with `wanted` ({code: sha256}), only those languages whose
    counts were taken against that very list (others are logged and left out)."""
    try:
        table = pq.read_table(io.BytesIO(data))
        meta = json.loads((table.schema.metadata or {})[LANGS_KEY])
        langs = table.column("lang").to_pylist()
        ids = table.column("entry_id").to_numpy().astype(np.int64)
        vals = table.column("count").to_numpy().astype(np.int64)
    except (pa.ArrowException, KeyError, ValueError, TypeError) as e:
        raise CountsError(f"{where} are unreadable ({e})") from None
    codes = np.asarray(langs, dtype=object)
    vectors, shas = {}, {}
    for code, info in sorted(meta.items()):
        if wanted is not None and code not in wanted:
            continue
        if wanted is not None and wanted[code] != info.get("sha256"):
            logger.warning("ignoring %s of %r: taken against another list", where, code)
            continue
        n, rows = int(info.get("entries", -1)), np.flatnonzero(codes == code)
        if n < 0 or (len(rows) and (ids[rows].min() < 0 or ids[rows].max() >= n)):
            raise CountsError(f"{where} are corrupt ({code!r}: ids out of range)")
        if len(rows) and vals[rows].min() < 0:
            raise CountsError(f"{where} are corrupt ({code!r}: negative counts)")
        v = np.zeros(n, np.int64)
        np.add.at(v, ids[rows], vals[rows])
        vectors[code], shas[code] = v, str(info["sha256"])
    return LangCounts(vectors, shas)
