"""One run per partition at a time (placeholder: the real lock lands with issue 5)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def partition_lock(final: str, storage_options: dict[str, Any] | None = None) -> Iterator[None]:
    """Hold the partition's lock for the block; a second holder waits or fails clearly."""
    yield
