"""A curated dataset as its consumers see it: partitions, tables, shard URLs.

Everything follows each partition's `manifest.json` (the pointer to its published version),
so a reader never needs to know the folder layout, and a partition being re-published
while it is read is seen whole, old or new. Imports polars and fsspec only: no Prefect,
torch or open_clip (`torch_dataset` imports torch when called).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import polars as pl

from schemas.partition import check_optional_date
from schemas.tables import EVENTS, FRAMES, SAMPLES, VIDEOS
from tasks.io import storage
from tasks.publish.catalog import Catalog, read_catalog
from tasks.publish.manifest import Published, read_published

FLOWS = ("pool", "video")
# the columns of a table when no partition in a range has published one
EMPTY = {
    "samples.parquet": SAMPLES,
    "frames.parquet": FRAMES,
    "videos.parquet": VIDEOS,
    "events.parquet": EVENTS,
}


class Partition:
    """One published partition of one flow, as the dataset's catalog lists it; its manifest
    (the source of truth for its files) is read when first needed."""

    def __init__(
        self, flow: str, name: str, uri: str, entry: dict[str, Any], storage_options: dict
    ) -> None:
        self.flow, self.name, self.uri = flow, name, uri
        self.entry, self.storage_options = entry, storage_options

    def __repr__(self) -> str:
        return f"Partition({self.flow!r}, {self.name!r}, version={self.version!r})"

    @cached_property
    def published(self) -> Published:
        found = read_published(self.uri, self.storage_options)
        if found is None:
            raise FileNotFoundError(f"{self.uri} is no longer published")
        return found

    @property
    def version(self) -> str | None:
        return self.entry.get("version")

    @property
    def manifest(self) -> dict[str, Any]:
        return self.published.manifest

    @property
    def counts(self) -> dict[str, Any]:
        """The partition's status counts (from the catalog: no file read)."""
        return dict(self.entry.get("counts") or {})

    @property
    def created(self) -> str | None:
        return self.entry.get("created")

    def url(self, name: str) -> str:
        """URL of file `name` of the published version (e.g. `samples.parquet`)."""
        return self.published.url(name)

    @cached_property
    def stats(self) -> dict[str, Any]:
        return storage.read_json(self.url("stats.json"), self.storage_options)

    def shard_urls(self) -> list[str]:
        names = sorted(n for n in self.published.names() if n.startswith("shards/"))
        return [self.url(n) for n in names if n.endswith(".tar")]

    def sizes(self) -> dict[str, int]:
        """{tar URL: samples}, from the version's `shards/sizes.json`."""
        if not self.published.has("shards/sizes.json"):
            return {}
        sizes = storage.read_json(self.url("shards/sizes.json"), self.storage_options)
        return {self.url(f"shards/{k}"): int(v) for k, v in sorted(sizes.items())}

    def table(self, name: str) -> pl.DataFrame:
        df = storage.read_parquet(self.url(name), self.storage_options)
        return df.with_columns(pl.lit(self.name).alias("partition"))

    def held(self) -> bool:
        """Whether a newer version of this partition is held by the publish gate."""
        return bool(self.entry.get("held"))


class Dataset:
    """`{output}/{dataset}` on any fsspec store (local path, s3://...)."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        self.uri = uri.rstrip("/")
        self.storage_options = dict(storage_options or {})

    def __repr__(self) -> str:
        return f"Dataset({self.uri!r})"

    def partitions(
        self,
        flow: str,
        start: str | None = None,
        end: str | None = None,
        catalog: Catalog | None = None,
    ) -> list[Partition]:
        """Published partitions of `flow` with start <= name <= end, oldest first (from the
        flow's catalog: `catalog` when the caller has read it already)."""
        if flow not in FLOWS:
            raise ValueError(f"flow must be one of {FLOWS}, not {flow!r}")
        lo, hi = check_optional_date(start, "start"), check_optional_date(end, "end")
        folder = storage.join(self.uri, flow)
        out = []
        for name, entry in sorted((catalog or self.catalog(flow)).entries.items()):
            if (lo and name < lo) or (hi and name > hi):
                continue
            uri = storage.join(folder, name)
            out.append(Partition(flow, name, uri, entry, self.storage_options))
        return out

    def catalog(self, flow: str) -> Catalog:
        """The flow's catalog: every published partition in one read."""
        return read_catalog(storage.join(self.uri, flow), self.storage_options)

    def _frame(self, flow: str, table: str, start: str | None, end: str | None) -> pl.LazyFrame:
        frames = [_plain_enums(p.table(table)) for p in self.partitions(flow, start, end)]
        if not frames:  # nothing published in the range: no rows, but the table's columns
            schema = {**EMPTY.get(table, {}), "partition": pl.String}
            return _plain_enums(pl.DataFrame(schema=schema)).lazy()
        return pl.concat(frames, how="diagonal_relaxed").lazy()

    def samples(
        self,
        flow: str = "pool",
        start: str | None = None,
        end: str | None = None,
        status: str | None = None,
    ) -> pl.LazyFrame:
        """Every partition's `samples.parquet` (one row per input sample), plus `partition`."""
        if flow != "pool":
            raise ValueError("samples() reads the pool flow; use events(), frames(), videos()")
        frame = self._frame("pool", "samples.parquet", start, end)
        if status is not None:
            frame = frame.filter(pl.col("status").cast(pl.String) == status)
        return frame

    def events(self, start: str | None = None, end: str | None = None) -> pl.LazyFrame:
        return self._frame("video", "events.parquet", start, end)

    def frames(self, start: str | None = None, end: str | None = None) -> pl.LazyFrame:
        return self._frame("video", "frames.parquet", start, end)

    def videos(self, start: str | None = None, end: str | None = None) -> pl.LazyFrame:
        return self._frame("video", "videos.parquet", start, end)

    def shard_urls(self, flow: str, start: str | None = None, end: str | None = None) -> list[str]:
        """The tar URLs of the published versions, in partition then shard order."""
        return [u for p in self.partitions(flow, start, end) for u in p.shard_urls()]

    def torch_dataset(
        self,
        flow: str,
        start: str | None = None,
        end: str | None = None,
        shuffle: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> Any:
        """A torch IterableDataset of the kept samples (pool) or event clips (video).

        See `clip_curate.loader.CurateIterable` for the options (decode, fps, rank...).
        """
        from clip_curate.loader import CurateIterable

        shards = [(u, n) for p in self.partitions(flow, start, end) for u, n in p.sizes().items()]
        return CurateIterable(
            flow, shards, self.storage_options, shuffle=shuffle, seed=seed, **kwargs
        )

    def card(self) -> str:
        """The dataset card at the root (README.md), when written."""
        url, so = storage.join(self.uri, "README.md"), self.storage_options
        return storage.read_bytes(url, so).decode() if storage.exists(url, so) else ""


def open_dataset(uri: str, storage_options: dict[str, Any] | None = None) -> Dataset:
    """Open `{output}/{dataset}` (a local path or any fsspec URL)."""
    return Dataset(uri, storage_options)


def _plain_enums(df: pl.DataFrame) -> pl.DataFrame:
    """Enum columns as strings: partitions published by older releases hold fewer statuses,
    and two different enums have no common type to concatenate under."""
    enums = [c for c, t in df.schema.items() if isinstance(t, pl.Enum)]
    return df.with_columns(pl.col(enums).cast(pl.String)) if enums else df
