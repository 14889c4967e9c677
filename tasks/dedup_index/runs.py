"""Where the index lives: partition segments, immutable runs, and the one pointer to them.

```
{output}/{dataset}/pool/
  {partition}/{version}/dedup/index.parquet, emb.npy   # a segment: commits with its version
  _dedup/CURRENT.json                                  # the pointer: runs, codebook
  _dedup/runs/r-{time}-{id}/keys.npz, rows.parquet, ivf.faiss
  _dedup/codebooks/cb-{time}-{id}.faiss
```

A run holds the rows of whole segments of one model (the weights that embedded them), in
partition order: `keys.npz` (`keys.KeyTable`), `rows.parquet` (uid, partition, sha256, pHash
per run row, in row groups so a few rows read cheaply) and, once that model has a codebook,
`ivf.faiss` (the embeddings' PQ codes; ids = run rows). Embeddings of other weights are not
comparable, so each model has its own codebook and its own runs. The pointer names each run
with the partition versions it covers and where each one's rows start; runs and codebooks
are never changed, only replaced by new ones and a new pointer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from schemas.tables import DEDUP_EMB_FILE, DEDUP_INDEX_FILE
from tasks.io import cas, storage

ROOT = "_dedup"
POINTER = "CURRENT.json"
# 3: a run's keys.npz may hold fewer pHash blocks than d + 1 (`keys.mih_plan`);
# 4: rows.parquet holds sha256 as its 32 bytes (`write_rows`)
FORMAT = 4
READS = (2, 3, 4)  # layouts this code reads; an older reader takes a newer pointer for none
ROW_GROUP = 1 << 16
MODEL_KEYS = ("architecture_sha256", "pretrained", "checkpoint_sha256")  # what the weights are


def model_key(model: dict[str, Any] | None) -> str | None:
    """A short name for the weights that embedded a partition's images (None: unknown)."""
    values = [(model or {}).get(k) for k in MODEL_KEYS]
    if not any(values):
        return None
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:16]


def id_time(name: str) -> dt.datetime | None:
    """When a run or codebook id (`r-20261206T120000Z-...`) was made."""
    try:
        return dt.datetime.strptime(name.split("-")[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except (IndexError, ValueError):
        return None


def new_id(prefix: str) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{prefix}-{stamp}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Segment:
    """The dedup files of one published partition version."""

    folder: str  # the flow folder
    partition: str
    version: str

    @property
    def base(self) -> str:
        return storage.join(self.folder, self.partition, self.version)

    def keys(self, so: dict[str, Any] | None) -> pl.DataFrame:
        df = storage.read_parquet(storage.join(self.base, DEDUP_INDEX_FILE), so)
        return df.select(
            pl.col("uid").cast(pl.String),
            pl.col("sha256").cast(pl.String),
            pl.col("phash").cast(pl.UInt64),
        )

    def emb_url(self) -> str:
        return storage.join(self.base, DEDUP_EMB_FILE)

    def embeddings(self, so: dict[str, Any] | None) -> np.ndarray:
        return storage.read_npy(self.emb_url(), so)

    def emb_rows(self, rows: np.ndarray, so: dict[str, Any] | None) -> np.ndarray:
        return storage.read_npy_rows(self.emb_url(), rows, so)


@dataclass
class RunInfo:
    """A run as the pointer lists it."""

    id: str
    rows: int
    covers: dict[str, str]  # partition -> version
    starts: dict[str, int]  # partition -> first run row
    ivf: str | None = None  # codebook id its embeddings were encoded with
    max_distance: int | None = None  # pHash distance its MIH blocks were sorted for
    model: str | None = None  # `model_key` of every partition it holds

    def locate(self, run_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index into `partitions()`, row within that partition's segment) per run row."""
        names = self.partitions()
        starts = np.array([self.starts[n] for n in names], dtype=np.int64)
        part = np.searchsorted(starts, run_rows, side="right") - 1
        return part, run_rows - starts[part]

    def partitions(self) -> list[str]:
        return sorted(self.starts, key=lambda n: self.starts[n])


@dataclass
class Codebook:
    """A model's codebook: its id, the embeddings the history held when it was trained, and
    its calibration ((cosine, PQ estimate floor) pairs, `ann.calibrate`)."""

    id: str
    rows: int
    calibration: list[list[float]]


@dataclass
class Pointer:
    """`_dedup/CURRENT.json`: the runs of the index and each model's codebook."""

    runs: list[RunInfo] = field(default_factory=list)
    codebooks: dict[str, Codebook] = field(default_factory=dict)  # model key -> codebook

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT,
            "codebooks": {m: asdict(c) for m, c in sorted(self.codebooks.items())},
            "runs": [asdict(r) for r in self.runs],
        }
        return json.dumps(doc, indent=1, sort_keys=True).encode()

    @staticmethod
    def parse(data: bytes | None) -> Pointer:
        if data is None:
            return Pointer()
        doc = json.loads(data)
        if doc.get("format") not in READS:  # another layout: the next compaction rebuilds it
            return Pointer()
        runs = [RunInfo(**r) for r in doc.get("runs") or []]
        books = {m: Codebook(**c) for m, c in (doc.get("codebooks") or {}).items()}
        return Pointer(runs, books)

    def book_for(self, model: str | None) -> Codebook | None:
        return self.codebooks.get(model) if model else None


def pointer_url(folder: str) -> str:
    return storage.join(folder, ROOT, POINTER)


def run_url(folder: str, run_id: str, name: str = "") -> str:
    url = storage.join(folder, ROOT, "runs", run_id)
    return storage.join(url, name) if name else url


def codebook_url(folder: str, codebook: str) -> str:
    return storage.join(folder, ROOT, "codebooks", f"{codebook}.faiss")


def read_pointer(folder: str, so: dict[str, Any] | None) -> tuple[Pointer, bytes | None]:
    """The pointer and its bytes (what a swap must still find), empty when there is none."""
    data = cas.read(pointer_url(folder), so)
    return Pointer.parse(data), data


class PointerMoved(RuntimeError):
    """Another compaction swapped the pointer first."""


def swap_pointer(folder: str, seen: bytes | None, new: Pointer, so: dict[str, Any] | None) -> None:
    """Replace the pointer with `new` if it still holds `seen` (compare-and-swap). Finding
    `new` there already is success: a retried write whose first attempt landed."""
    target = new.to_bytes()

    def change(current: bytes | None) -> bytes:
        if current not in (seen, target):
            raise PointerMoved(f"{pointer_url(folder)} changed during compaction")
        return target

    cas.update(pointer_url(folder), change, so)


HEX64 = r"^[0-9a-f]{64}$"  # a sha256 that its 32 bytes give back exactly


def write_rows(url: str, rows: pl.DataFrame, so: dict[str, Any] | None) -> None:
    """uid, partition, sha256, phash per run row, in row groups (a few rows read cheaply).

    sha256 is stored as its 32 bytes (`sha256_text` keeps any value that is not lowercase
    hex, as it was): a night's matches touch most row groups of a long history, and the
    64-character strings were two thirds of decoding them (0.48 -> 0.13 s CPU per 1M rows)."""
    import io

    sha = pl.col("sha256").cast(pl.String)
    canonical = sha.str.contains(HEX64).fill_null(False)
    table = rows.select(
        pl.col("uid"),
        pl.col("partition"),
        pl.when(canonical).then(sha.str.decode("hex", strict=False)).alias("sha256"),
        pl.when(~canonical).then(sha).alias("sha256_text"),
        pl.col("phash"),
    )
    buf = io.BytesIO()
    pq.write_table(table.to_arrow(), buf, row_group_size=ROW_GROUP, compression="zstd")
    storage.write_bytes(url, buf.getvalue(), so)


def decode_rows(df: pl.DataFrame) -> pl.DataFrame:
    """Rows as written by `write_rows` (or an older run's, sha256 as text) with sha256 as
    the text it was."""
    if "sha256_text" not in df.columns:
        return df
    text = pl.coalesce(pl.col("sha256_text"), pl.col("sha256").bin.encode("hex"))
    return df.with_columns(text.alias("sha256")).drop("sha256_text")


def read_all_rows(url: str, so: dict[str, Any] | None) -> pl.DataFrame:
    """Every row of a run's `rows.parquet` (verification, tools)."""
    return decode_rows(storage.read_parquet(url, so))


def read_rows(url: str, rows: np.ndarray, so: dict[str, Any] | None) -> pl.DataFrame:
    """The given run rows of `rows.parquet`, in that order, reading their row groups one
    at a time (matches spread over a long history touch most groups: holding them all at
    once grew a night's memory with the history)."""
    import io

    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    group_of = rows[order] // ROW_GROUP
    pieces = []
    with storage.open_read(url, so) as f:
        table = pq.ParquetFile(io.BytesIO(f.read()) if not hasattr(f, "seek") else f)
        empty = pl.from_arrow(table.schema_arrow.empty_table())
        assert isinstance(empty, pl.DataFrame)
        bounds = np.flatnonzero(np.diff(group_of)) + 1
        for at in np.split(np.arange(len(rows)), bounds) if len(rows) else []:
            group = int(group_of[at[0]])
            df = pl.from_arrow(table.read_row_group(group))
            assert isinstance(df, pl.DataFrame)
            pieces.append(df[rows[order[at]] - group * ROW_GROUP])
    if not pieces:
        return decode_rows(empty)
    out = pl.concat(pieces)
    return decode_rows(out[np.argsort(order, kind="stable")])
