"""Small generated image-text pools for tests: good ones and every kind of broken one.

Layouts follow img2dataset/DataComp: WebDataset tars with ``key.jpg|png|webp``, ``key.txt``
and an optional ``key.json`` (uid, url), and parquet files with image bytes + caption. The
broken variants are what a nightly run meets on real pools: corrupt or truncated images,
missing or non-UTF-8 captions, decompression bombs, truncated or empty tars, unsafe member
paths, duplicate uids and keys reused across shards.
"""

from __future__ import annotations

import functools
import io
import json
import struct
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

CAPTIONS = (
    "A dog runs on the beach.",
    "Two children playing football in a park",
    "Red vintage car parked on a cobblestone street",
    "日本の桜の写真 です",
    "Une tasse de café sur une table en bois",
    "Sunset over the mountains with orange clouds",
    "A bowl of ramen with egg and green onions",
    "Modern kitchen with white cabinets and marble counters",
)

_PIL_FORMAT = {
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "png": "PNG",
    "webp": "WEBP",
    "gif": "GIF",
    "bmp": "BMP",
    "tiff": "TIFF",
    "ppm": "PPM",
}


@dataclass
class PoolSample:
    """One sample to write. ``caption``/``meta`` as bytes are written verbatim (for breakage);
    None leaves the member out."""

    key: str
    image: bytes | None
    ext: str = "jpg"
    caption: str | bytes | None = None
    meta: dict[str, Any] | bytes | None = field(default=None)


def make_image(fmt: str = "jpg", size: tuple[int, int] = (16, 12), seed: int = 0) -> bytes:
    """A small deterministic noise image encoded as `fmt`."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=_PIL_FORMAT[fmt])
    return buf.getvalue()


def make_samples(
    n: int,
    *,
    prefix: str = "",
    seed: int = 0,
    fmt: str = "jpg",
    with_json: bool = True,
    start: int = 0,
) -> list[PoolSample]:
    """`n` valid samples with img2dataset-style keys (``000000000``...) and DataComp uids."""
    samples = []
    for i in range(start, start + n):
        key = f"{prefix}{i:09d}"
        meta = {"uid": f"{seed:04x}{i:028x}", "url": f"https://example.com/{seed}/{i}.{fmt}"}
        samples.append(
            PoolSample(
                key=key,
                image=make_image(fmt, seed=seed * 100_003 + i),
                ext=fmt,
                caption=CAPTIONS[i % len(CAPTIONS)],
                meta=meta if with_json else None,
            )
        )
    return samples


def _member_bytes(sample: PoolSample) -> list[tuple[str, bytes]]:
    members = []
    if sample.image is not None:
        members.append((f"{sample.key}.{sample.ext}", sample.image))
    if sample.caption is not None:
        cap = sample.caption
        members.append((f"{sample.key}.txt", cap if isinstance(cap, bytes) else cap.encode()))
    if sample.meta is not None:
        meta = sample.meta
        members.append(
            (f"{sample.key}.json", meta if isinstance(meta, bytes) else json.dumps(meta).encode())
        )
    return members


def write_members(path: str | Path, members: list[tuple[str, bytes]], gzip: bool = False) -> Path:
    """A tar with exactly these member names and contents, in order (no name sanitising)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz" if gzip else "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return path


def write_tar(path: str | Path, samples: list[PoolSample], gzip: bool = False) -> Path:
    """A WebDataset shard in the img2dataset layout (image, then txt, then json)."""
    return write_members(path, [m for s in samples for m in _member_bytes(s)], gzip=gzip)


def write_parquet_pool(
    path: str | Path,
    samples: list[PoolSample],
    *,
    image_form: Literal["binary", "struct"] = "binary",
    with_key: bool = True,
    row_group_size: int | None = None,
) -> Path:
    """A parquet pool: ``image`` (binary, or HuggingFace struct {bytes, path}), ``caption``,
    optional ``key``, and ``uid``/``url`` taken from each sample's meta."""
    images: list[Any] = [s.image for s in samples]
    if image_form == "struct":
        images = [
            None if s.image is None else {"bytes": s.image, "path": f"{s.key}.{s.ext}"}
            for s in samples
        ]
    metas = [s.meta if isinstance(s.meta, dict) else {} for s in samples]
    columns: dict[str, Any] = {
        "image": images,
        "caption": [s.caption for s in samples],
        "uid": [m.get("uid") for m in metas],
        "url": [m.get("url") for m in metas],
    }
    if with_key:
        columns = {"key": [s.key for s in samples], **columns}
    table = pa.table(columns)
    path = Path(path)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


# --- broken inputs ------------------------------------------------------------------------


def corrupt_image(seed: int = 0) -> bytes:
    """Random bytes under an image name: no decoder can identify them."""
    rng = np.random.default_rng(seed)
    return b"\x00garbage" + rng.integers(0, 256, 200, dtype=np.uint8).tobytes()


def truncated_image(fmt: str = "jpg", keep: float = 0.5) -> bytes:
    """A valid image cut short: the header parses, the pixel data ends early."""
    data = make_image(fmt, size=(64, 48), seed=7)
    return data[: max(16, int(len(data) * keep))]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@functools.lru_cache(maxsize=4)
def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid, tiny (~50 KB) 1-bit PNG that declares width x height pixels of zeros.

    Decoding it naively allocates width*height pixels (400 M by default, 1.2 GB as RGB).
    """
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed 1-bit pixels
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def truncate_file(path: str | Path, size: int) -> Path:
    """Cut a file to `size` bytes (e.g. a tar in the middle of a member's data)."""
    path = Path(path)
    with path.open("r+b") as f:
        f.truncate(size)
    return path


def member_offsets(path: str | Path) -> dict[str, tuple[int, int]]:
    """{member name: (header offset, data offset)} of an uncompressed tar, to cut it precisely."""
    with tarfile.open(path, "r:") as tar:
        return {m.name: (m.offset, m.offset_data) for m in tar.getmembers()}


def write_empty(path: str | Path) -> Path:
    """A zero-byte file."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def write_empty_tar(path: str | Path) -> Path:
    """A well-formed tar with no members (end-of-archive blocks only)."""
    return write_members(path, [])


def broken_pool(path: str | Path) -> tuple[Path, list[tuple[str, str | None]]]:
    """One shard with every per-sample problem, between good samples.

    Returns (path, [(key, expected reader error or None)] in input order). Corrupt, truncated
    and bomb images read fine here: only the decoder can tell.
    """
    good = make_samples(2, seed=9)
    img = make_image(seed=4)
    cases: list[tuple[PoolSample, str | None]] = [
        (good[0], None),
        (PoolSample("no_image", None, caption="A caption without an image"), "missing_image"),
        (PoolSample("no_caption", make_image(seed=1)), "missing_caption"),
        (PoolSample("latin1", make_image(seed=2), caption=b"caf\xe9 au lait"), "caption_not_utf8"),
        (
            PoolSample("badjson", make_image(seed=3), caption="A fine caption", meta=b"{uid:"),
            "bad_json",
        ),
        (PoolSample("corrupt", corrupt_image(), caption="Corrupt bytes for the decoder"), None),
        (PoolSample("cut", truncated_image(), caption="A cut image for the decoder"), None),
        (PoolSample("bomb", bomb_png(), ext="png", caption="A bomb for the decoder"), None),
    ]
    entries = [(_member_bytes(s), s.key, err) for s, err in cases]
    entries += [
        (
            [("../escape.jpg", img), ("../escape.txt", b"Escaping caption")],
            "../escape",
            "unsafe_member_path",
        ),
        ([("/abs/path.jpg", img)], "/abs/path", "unsafe_member_path"),
        (
            [("dup.jpg", img), ("dup.jpg", img), ("dup.txt", b"Two images")],
            "dup",
            "duplicate_member",
        ),
        (_member_bytes(good[1]), good[1].key, None),
    ]
    members = [m for ms, _, _ in entries for m in ms]
    return write_members(path, members), [(key, err) for _, key, err in entries]
