"""Corrupted copies of real inputs, drawn from a fixed seed (issue 20, part 4).

Each copy is one kind of damage a fleet upload or a web crawl suffers:

- `flip_header`: bits flipped in the file's structure (the first 4 KB, where tar member
  headers and MP4 `ftyp`/`moov` boxes start, and the last 8 KB, where a recorder's moov is);
- `flip_body`: bits flipped anywhere (image and media data);
- `zero_run`: a run of 64 B - 64 KB zeroed (a bad sector, a sparse download);
- `truncate`: cut at a random point (an interrupted transfer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

KINDS = ("flip_header", "flip_body", "zero_run", "truncate")


def corrupt(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """`data` damaged one way (module docstring)."""
    out = bytearray(data)
    n = len(out)
    if kind == "truncate":
        return bytes(out[: int(rng.integers(1, n))])
    if kind == "zero_run":
        length = int(rng.integers(64, min(65536, n // 4) + 1))
        at = int(rng.integers(0, n - length))
        out[at : at + length] = bytes(length)
        return bytes(out)
    if kind == "flip_header":
        regions = [(0, min(4096, n)), (max(0, n - 8192), n)]
    elif kind == "flip_body":
        regions = [(0, n)]
    else:
        raise ValueError(kind)
    for _ in range(int(rng.integers(1, 33))):
        lo, hi = regions[int(rng.integers(0, len(regions)))]
        at = int(rng.integers(lo, hi))
        out[at] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def corrupted_copies(sources: list[Path], n: int, seed: int, out: Path, prefix: str) -> list[Path]:
    """`n` corrupted copies of `sources` (round robin, kinds in turn) written to `out` as
    `{prefix}{k:03d}-{kind}-{source name}`; the same seed gives the same bytes."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for k in range(n):
        src = sources[k % len(sources)]
        kind = KINDS[(k // len(sources)) % len(KINDS)]
        path = out / f"{prefix}{k:03d}-{kind}-{src.name}"
        path.write_bytes(corrupt(src.read_bytes(), kind, rng))
        made.append(path)
    return made
