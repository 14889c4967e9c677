"""Hand a curated selection to other tools: DataComp subset files and uid tables.

DataComp's `resharder.py` takes a subset as a numpy file of dtype `u8,u8`: each 128-bit
hex uid split into its high and low 64 bits, sorted, so that membership is a binary search
(`np.searchsorted`). DataComp and img2dataset uids are 32 hex digits; anything else cannot
be expressed in that format and is refused with one line.
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import polars as pl

from clip_curate.dataset import Dataset
from tasks.io import storage

SUBSET_DTYPE = np.dtype("u8,u8")
_HEX128 = re.compile(r"[0-9a-fA-F]{32}")


class ExportError(ValueError):
    """The selection cannot be written in the requested format (one clear line)."""


def kept_uids(ds: Dataset, start: str | None = None, end: str | None = None) -> pl.DataFrame:
    """uid and partition of every kept pool sample in [start, end], in partition order."""
    frame = ds.samples("pool", start, end, status="kept")
    if not frame.collect_schema().names():
        return pl.DataFrame(schema={"uid": pl.String, "partition": pl.String})
    return frame.select("uid", "partition").collect()


def datacomp_subset(uids: list[str]) -> np.ndarray:
    """The sorted `u8,u8` array DataComp's resharder reads, from 128-bit hex uids."""
    bad = [u for u in uids if not _HEX128.fullmatch(u or "")]
    if bad:
        raise ExportError(
            f"{len(bad)} uids are not 128-bit hex (e.g. {bad[0]!r}): DataComp subsets need "
            "uids of 32 hex digits (export them with `curate export uids` instead)"
        )
    out = np.empty(len(uids), SUBSET_DTYPE)
    out["f0"] = [int(u[:16], 16) for u in uids]
    out["f1"] = [int(u[16:], 16) for u in uids]
    return np.unique(out)  # sorted, and a uid kept on two dates counts once


def write_npy(array: np.ndarray, url: str, storage_options: dict[str, Any] | None = None) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    storage.write_bytes(url, buf.getvalue(), storage_options)
