"""Parquet streaming: one sample per row, read a record batch at a time.

Memory is bounded by one record batch whatever the file size; a row group that cannot be
decoded turns its unread rows into ``corrupt_parquet`` samples instead of failing the shard.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import IO, Any

from tasks.errors import is_infrastructure
from tasks.pool.sample import (
    PARQUET_BATCH_ROWS,
    RawSample,
    Select,
    ShardReadError,
    decode_caption,
    download_failure,
    sniff_image_ext,
)

logger = logging.getLogger(__name__)


def iter_parquet(
    f: IO[bytes], url: str, columns: tuple[str, str, str | None], select: Select | None
) -> Iterator[RawSample]:
    """The rows of an open parquet file as samples, in order, filtered by `select`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
    except (pa.ArrowException, OSError) as err:
        if is_infrastructure(err):  # the store or the disk failed, not the file
            raise
        raise ShardReadError(url, f"not a readable parquet file ({err})") from None
    names = _parquet_columns(pf.schema_arrow, url, columns)
    start = 0
    for group in range(pf.metadata.num_row_groups):
        end = start + pf.metadata.row_group(group).num_rows
        yield from _parquet_row_group(pf, group, names, url, range(start, end), columns, select)
        start = end


def _parquet_row_group(
    pf: Any,
    group: int,
    names: list[str],
    url: str,
    rows: range,
    columns: tuple[str, str, str | None],
    select: Select | None,
) -> Iterator[RawSample]:
    """One row group's samples; if it cannot be decoded, its unread rows as errors."""
    import pyarrow as pa

    index = rows.start
    batches = pf.iter_batches(PARQUET_BATCH_ROWS, row_groups=[group], columns=names)
    try:
        for batch in batches:
            for row in batch.to_pylist():
                raw_key = row.pop("key", None)
                key = f"{index:09d}" if raw_key is None else str(raw_key)
                if select is None or select(key, index):
                    yield _parquet_sample(row, key, index, columns[0], columns[1])
                index += 1
    except (pa.ArrowException, OSError) as err:
        if is_infrastructure(err) or (
            not isinstance(err, pa.ArrowException) and type(err) is not OSError
        ):
            raise  # FileNotFoundError, a store that kept failing...: not the file
        logger.warning("%s: row group %d unreadable from row %d: %s", url, group, index, err)
        for i in range(index, rows.stop):
            if select is None or select(f"{i:09d}", i):
                yield RawSample(f"{i:09d}", i, None, None, None, {}, "corrupt_parquet")


def _parquet_columns(schema: Any, url: str, columns: tuple[str, str, str | None]) -> list[str]:
    """Columns to read: image, caption, and every scalar column (key, uid, url, ...) as meta."""
    import pyarrow as pa

    image_column, caption_column, uid_column = columns
    binary = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view)
    text = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    for name, kinds in ((image_column, binary), (caption_column, text + binary)):
        if name not in schema.names:
            raise ShardReadError(url, f"no column {name!r} (columns: {schema.names})")
        t = schema.field(name).type
        is_image_struct = pa.types.is_struct(t) and t.get_field_index("bytes") >= 0
        if not any(k(t) for k in kinds) and not (name == image_column and is_image_struct):
            raise ShardReadError(url, f"column {name!r} has unsupported type {t}")
    scalar = [
        fld.name
        for fld in schema
        if fld.name not in columns
        and (pa.types.is_primitive(fld.type) or any(k(fld.type) for k in text))
    ]
    if uid_column in schema.names and uid_column not in scalar:
        scalar.append(uid_column)
    return [image_column, caption_column, *scalar]


def _parquet_sample(
    row: dict[str, Any], key: str, index: int, image_column: str, caption_column: str
) -> RawSample:
    image = row.pop(image_column)
    if isinstance(image, dict):  # HuggingFace datasets' Image feature: {bytes, path}
        image = image.get("bytes")
    caption, caption_error = row.pop(caption_column), None
    if isinstance(caption, bytes):
        caption, caption_error = decode_caption(caption)
    detail = None
    if image is None:
        error, detail = download_failure(row) or ("missing_image", None)
    else:
        error = caption_error or (None if caption is not None else "missing_caption")
    return RawSample(key, index, image, sniff_image_ext(image), caption, row, error, detail)
