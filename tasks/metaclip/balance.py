"""MetaCLIP balancing: entry counts, keep probabilities and reproducible keep decisions.

Per `specs/metaclip.md`: `count[e]` is the number of captions in the pool matching entry `e`,
`p[e] = t / max(count[e], t)`, and a caption with matches `M` is kept with probability
`1 - prod_{e in M} (1 - p[e])` (0 for empty `M`). Counts are global, so a pool split into
shards is balanced in two passes: match every shard and sum its counts, then decide each shard
with the summed counts. A caption's draw depends only on (seed, uid), never on sharding.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.errors import InputError, is_infrastructure, short
from tasks.io import storage
from tasks.metaclip.matcher import PARALLEL_MIN_ROWS, entry_ids_series, get_matcher
from tasks.metaclip.metadata import MetadataError, load_metadata
from tasks.parallel import cpu_count, run_forked

logger = logging.getLogger(__name__)

_SHA_KEY = b"clip_curate.metadata_sha256"
_N_KEY = b"clip_curate.n_entries"


def _flatten(entry_ids: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(matches per caption, all entry ids in caption order); null lists count as empty."""
    lengths = entry_ids.list.len().fill_null(0).to_numpy().astype(np.int64)
    values = entry_ids.explode().drop_nulls().to_numpy().astype(np.int64)
    if len(values) != lengths.sum():
        raise ValueError("entry_ids lists must not contain nulls")
    return lengths, values


def entry_counts(entry_ids: pl.Series, n_entries: int) -> np.ndarray:
    """Captions per entry (int64, length `n_entries`), each caption counted once per entry.

    Lists from the matcher are already unique; other lists are de-duplicated first.
    """
    lengths, values = _flatten(entry_ids)
    if len(values) and (values.min() < 0 or values.max() >= n_entries):
        raise ValueError(f"entry id out of range for {n_entries} metadata entries")
    row_start = np.zeros(len(values), bool)
    row_start[(np.cumsum(lengths) - lengths)[lengths > 0]] = True
    if not np.all((np.diff(values, prepend=-1) > 0) | row_start):
        _, values = _flatten(entry_ids.list.unique())
    return np.bincount(values, minlength=n_entries).astype(np.int64)


def keep_probabilities(entry_ids: pl.Series, counts: np.ndarray, t: int) -> np.ndarray:
    """`1 - prod_{e in M}(1 - t / max(count[e], t))` per caption (float64), 0 for empty `M`.

    The product runs over each caption's ids in list order (ascending for matcher output).
    """
    if t < 1:
        raise ValueError(f"t must be a positive integer, got {t}")
    lengths, values = _flatten(entry_ids)
    if len(values) and values.max() >= len(counts):
        raise ValueError(f"entry id {values.max()} has no count (only {len(counts)} entries)")
    return _keep_prob(lengths, values, counts, t)


def _keep_prob(lengths: np.ndarray, values: np.ndarray, counts: np.ndarray, t: int) -> np.ndarray:
    """`keep_probabilities` on flattened, validated ids (`lengths` per caption, `values`)."""
    return _keep_prob_from_p(lengths, values, t / np.maximum(np.asarray(counts, np.int64), t))


def _keep_prob_from_p(lengths: np.ndarray, values: np.ndarray, p: np.ndarray) -> np.ndarray:
    """`1 - prod(1 - p[e])` over each caption's ids in list order; 0 for no ids."""
    out = np.zeros(len(lengths), np.float64)
    nonempty = lengths > 0
    if nonempty.any():
        starts = (np.cumsum(lengths) - lengths)[nonempty]
        out[nonempty] = 1.0 - np.multiply.reduceat(1.0 - p[values], starts)
    return out


def uniform_draws(uids: pl.Series | Sequence[str], seed: int) -> np.ndarray:
    """A float64 in [0, 1) per uid from blake2b(f"{seed}\\0{uid}"): 53 bits, big-endian.

    Depends on nothing but (seed, uid), so every process, platform and sharding agrees.
    """
    items = uids.to_list() if isinstance(uids, pl.Series) else list(uids)
    if any(u is None for u in items):
        raise ValueError("uids must not be null")
    return _uid_draws(items, seed)


def _uid_draws(items: Sequence[str], seed: int) -> np.ndarray:
    """`uniform_draws` on a list of non-null uids, without polars (runs in forked children)."""
    prefix, b2 = f"{int(seed)}\0".encode(), hashlib.blake2b
    enc = "surrogatepass"
    return _unit([b2(prefix + u.encode("utf-8", enc), digest_size=8).digest() for u in items])


def caption_draws(captions: pl.Series, seed: int) -> np.ndarray:
    """`uniform_draws(caption_uids(captions), seed)` in one pass: the hashing dominates."""
    return _caption_draws(captions.fill_null("").to_list(), seed)


def _caption_draws(texts: Sequence[str], seed: int) -> np.ndarray:
    """`caption_draws` on a list of non-null captions, without polars (runs in forked children)."""
    sha, b2, prefix = hashlib.sha256, hashlib.blake2b, f"{int(seed)}\0".encode()
    return _unit(
        [b2(prefix + sha(c.encode()).hexdigest().encode(), digest_size=8).digest() for c in texts]
    )


def _unit(digests: list[bytes]) -> np.ndarray:
    """Top 53 bits of each 8-byte big-endian digest as a float64 in [0, 1)."""
    bits = np.frombuffer(b"".join(digests), ">u8") >> np.uint64(11)
    return bits.astype(np.float64) * 2.0**-53


def undecided_rows(keep_prob: np.ndarray) -> np.ndarray:
    """Rows whose decision needs a draw: a draw in [0, 1) never beats 0 and always beats 1."""
    return np.flatnonzero((keep_prob > 0.0) & (keep_prob < 1.0))


def keep_mask(keep_prob: np.ndarray, uids: pl.Series | Sequence[str], seed: int) -> np.ndarray:
    """`uniform_draws(uids, seed) < keep_prob`, hashing only the rows where it can differ."""
    keep = np.asarray(keep_prob) >= 1.0
    rows = undecided_rows(keep_prob)
    picked = uids.gather(rows) if isinstance(uids, pl.Series) else [uids[i] for i in rows]
    keep[rows] = uniform_draws(picked, seed) < keep_prob[rows]
    return keep


def caption_uids(captions: pl.Series) -> list[str]:
    """sha256 hex of each caption's UTF-8: the uid when a table has none (same text, same draw)."""
    return [hashlib.sha256(c.encode()).hexdigest() for c in captions.fill_null("").to_list()]


def load_running_counts(
    url: str, md_sha256: str, storage_options: dict[str, Any] | None = None
) -> np.ndarray | None:
    """Counts saved by `save_running_counts`, or None when absent or tied to other metadata.

    Running counts let a nightly partition balance against history: the counts used for a
    partition are the running counts of all earlier partitions plus this partition's own
    counts. Keep one file per partition (its own counts) and sum the earlier ones, so that a
    re-run or backfill replaces its contribution instead of counting it twice. Counts only
    mean something for the exact metadata list (ids are positions), hence the hash check.
    """
    if not storage.exists(url, storage_options):
        return None
    try:
        table = pq.read_table(io.BytesIO(storage.read_bytes(url, storage_options)))
        meta = table.schema.metadata or {}
        saved = meta.get(_SHA_KEY, b"").decode()
        n = int(meta.get(_N_KEY, b"-1"))
        ids = table.column("entry_id").to_numpy().astype(np.int64)
        vals = table.column("count").to_numpy().astype(np.int64)
    except (pa.ArrowException, KeyError, ValueError) as e:
        raise ValueError(f"running counts {url} are unreadable ({e})") from None
    if saved != md_sha256:
        logger.warning(
            "ignoring running counts %s: saved for metadata %s, not %s",
            url,
            saved[:12] or "?",
            md_sha256[:12],
        )
        return None
    if n < 0 or (len(ids) and (ids.min() < 0 or ids.max() >= n or vals.min() < 0)):
        raise ValueError(f"running counts {url} are corrupt (ids or counts out of range)")
    counts = np.zeros(n, np.int64)
    np.add.at(counts, ids, vals)
    return counts


def save_running_counts(
    url: str, counts: np.ndarray, md_sha256: str, storage_options: dict[str, Any] | None = None
) -> None:
    """Write counts as a small parquet (entry_id, count) of the non-zero entries, atomically.

    The metadata hash and the entry count go in the parquet's key-value metadata.
    """
    counts = np.asarray(counts, np.int64)
    if len(counts) and counts.min() < 0:
        raise ValueError("running counts must not be negative")
    ids = np.flatnonzero(counts)
    table = pa.table(
        {"entry_id": pa.array(ids, pa.uint32()), "count": pa.array(counts[ids], pa.int64())}
    )
    meta = {_SHA_KEY: md_sha256.encode(), _N_KEY: str(len(counts)).encode()}
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), buf, compression="zstd")
    storage.write_bytes(url, buf.getvalue(), storage_options)


def _read_captions(url: str, storage_options: dict[str, Any] | None) -> pl.DataFrame:
    """The captions table; a missing or unreadable file is the input's fault (one line)."""
    try:
        return storage.read_parquet(url, storage_options)
    except (OSError, pl.exceptions.PolarsError, pa.ArrowException) as err:
        if is_infrastructure(err):
            raise
        raise InputError(f"balance: cannot read --input {url} as parquet: {short(err)}") from None


def _captions(df: pl.DataFrame, column: str, url: str) -> pl.Series:
    if column not in df.columns:
        raise InputError(
            f"balance: {url} has no caption column {column!r} (its columns: "
            f"{', '.join(df.columns)}; name the captions with --caption-column)"
        )
    col = df[column]
    if col.dtype not in (pl.String, pl.Categorical, pl.Null) and not isinstance(col.dtype, pl.Enum):
        raise InputError(
            f"balance: caption column {column!r} of {url} is {col.dtype}, not text "
            "(name the captions with --caption-column)"
        )
    return col.cast(pl.String)


def _uid_column(df: pl.DataFrame, uid_column: str | None, url: str) -> str | None:
    if uid_column is not None and uid_column not in df.columns:
        raise InputError(
            f"balance: {url} has no uid column {uid_column!r} (its columns: "
            f"{', '.join(df.columns)}; leave --uid-column out to draw by caption)"
        )
    if uid_column is None and "uid" in df.columns:
        return "uid"
    return uid_column


def _row_draws(
    df: pl.DataFrame, captions: pl.Series, uid_col: str | None, rows: np.ndarray, seed: int
) -> np.ndarray:
    """Draws of `rows` only: by the uid column's value, else (or when null) the caption hash.

    Many rows are hashed in forked processes (the hashing holds the GIL); draws depend only
    on each row's key, so the split cannot change them.
    """
    if uid_col is None:
        keys, draw = captions.gather(rows).fill_null("").to_list(), _caption_draws
    else:
        given = df[uid_col].cast(pl.String).gather(rows).to_list()
        hashed = caption_uids(captions.gather(rows)) if None in given else given
        keys = [g if g is not None else h for g, h in zip(given, hashed, strict=True)]
        draw = _uid_draws
    if len(keys) < PARALLEL_MIN_ROWS:
        return draw(keys, seed)
    parts = run_forked(lambda lo, hi: draw(keys[lo:hi], seed), len(keys), cpu_count())
    return np.concatenate(parts)


def _write_parquet(df: pl.DataFrame, url: str, storage_options: dict[str, Any] | None) -> None:
    """Like `storage.write_parquet`, at zstd level 1: ~40% faster, ~25% larger than level 3."""
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", compression_level=1, statistics=True)
    storage.write_bytes(url, buf.getvalue(), storage_options)


class _Clock:
    """Wall seconds per named stage, for the stats an operator reads when a run is slow."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now


def balance_file(
    metadata: str,
    input: str,
    out: str,
    t: int,
    seed: int = 0,
    caption_column: str = "caption",
    uid_column: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`curate balance`: balance one captions parquet on its own counts (the pool is the file).

    Writes every input row in input order plus `entry_ids`, `keep_prob` and `keep`. Draws use
    the uid column (`uid_column`, else a column named `uid` when present), falling back to the
    sha256 of the caption, so identical uid-less captions share a draw.
    """
    if t < 1:
        raise ValueError(f"balance: t must be a positive integer, got {t}")
    from tasks.metaclip.folder import is_folder

    if is_folder(metadata, storage_options):
        raise MetadataError(
            f"metadata: {metadata} is a folder; curate balance takes one list (English-only), "
            "worldwide balancing runs in the pool flow (pool.balance.metadata)"
        )
    clock = _Clock()
    md = load_metadata(metadata, storage_options)
    df = _read_captions(input, storage_options)
    captions = _captions(df, caption_column, input)
    uid_col = _uid_column(df, uid_column, input)
    clock.lap("read")
    matcher = get_matcher(md)
    clock.lap("build")  # ~0 once this process has built the matcher for this metadata
    offsets, values = matcher.match_arrays(captions, allow_fork=True)
    clock.lap("match")
    # Matcher ids are unique per caption and in range: count and multiply without re-checking.
    lengths = np.diff(offsets)
    counts = np.bincount(values, minlength=len(md)).astype(np.int64)
    keep_prob = _keep_prob(lengths, values, counts, t)
    keep = keep_prob >= 1.0
    rows = undecided_rows(keep_prob)
    keep[rows] = _row_draws(df, captions, uid_col, rows, seed) < keep_prob[rows]
    clock.lap("decide")
    result = df.with_columns(
        entry_ids_series(offsets, values),
        pl.Series("keep_prob", keep_prob, pl.Float64),
        pl.Series("keep", keep, pl.Boolean),
    )
    _write_parquet(result, out, storage_options)
    clock.lap("write")
    seconds = sum(clock.laps.values())
    stats = {
        "rows": df.height,
        "matched": int((lengths > 0).sum()),
        "kept": int(keep.sum()),
        "seconds": round(seconds, 3),
        "captions_per_s": round(df.height / seconds, 1) if seconds > 0 else None,
        "stage_seconds": {k: round(v, 3) for k, v in clock.laps.items()},
        "metadata_sha256": md.sha256,
    }
    logger.info("balanced %s -> %s: %s", input, out, stats)
    return stats
