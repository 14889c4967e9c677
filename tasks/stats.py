"""Counters that merge by addition, one per stage (datatrove's `stat_update`).

Every stage counts what it saw per input shard or video (`samples`, `embedded`,
`error:<code>`, ...); the partition's figures are the plain sum of those, so they do not
depend on how the work was split, and a shard read back from the cache contributes exactly
what it contributed when it was computed. Codes are counted, details never: nobody has to
re-parse a sentence to know how many images were truncated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class Counts(dict[str, int]):
    """A dict of integer counters; `a + b` adds them key by key."""

    def add(self, key: str, n: int = 1) -> Counts:
        self[key] = self.get(key, 0) + int(n)
        return self

    def add_codes(self, prefix: str, codes: Iterable[str | None]) -> Counts:
        """Count each non-null code as `prefix:code`."""
        for code in codes:
            if code is not None:
                self.add(f"{prefix}:{code}")
        return self

    def __add__(self, other: Mapping[str, int]) -> Counts:  # type: ignore[override]
        out = Counts(self)
        for key, n in other.items():
            out.add(key, n)
        return out

    def __radd__(self, other: Any) -> Counts:
        return self + other if other else Counts(self)  # sum() starts from 0

    @classmethod
    def total(cls, items: Iterable[Mapping[str, int]]) -> Counts:
        """The sum of many counters (a stage's partition figures from its per-shard ones)."""
        out = cls()
        for item in items:
            out = out + item
        return out

    def sorted(self) -> dict[str, int]:
        """Keys in order, for stable JSON."""
        return dict(sorted(self.items()))
