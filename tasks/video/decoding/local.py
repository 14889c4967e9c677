"""A local path for a video on any store: decord and PyAV's decoders read local files.

decord 0.6 cannot stream: given a file object it reads the whole file into memory
(`bytearray(f.read())`). Remote videos are therefore spooled to a local temporary file in
fixed-size pieces, which bounds memory at the cost of local disk; local paths are used in
place. A stage that reads one remote video several times enters `local_video` once and
passes the local path on.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tasks.io import storage

SPOOL_CHUNK = 8 << 20


@contextmanager
def local_video(url: str, storage_options: dict[str, Any] | None = None) -> Iterator[str]:
    """Yield a local path for `url`: the file itself when local, else a temporary copy."""
    fs, path = storage.get_fs(url, storage_options)
    if storage.is_local(fs):
        yield path
        return
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix="clip-curate-", suffix=suffix)
    try:
        with (
            os.fdopen(fd, "wb") as dst,
            storage.named_store(url, storage_options),
            fs.open(path, "rb") as src,
        ):
            shutil.copyfileobj(src, dst, SPOOL_CHUNK)
        yield tmp
    finally:
        os.remove(tmp)
