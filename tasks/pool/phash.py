"""Per-sample fingerprints for deduplication: sha256 of the bytes and a 64-bit DCT pHash.

`phash64` reproduces `imagehash.phash` (ImageHash 4.3, hash_size=8, highfreq_factor=4) bit
for bit, so hashes stored by either tool compare:

1. ``image.convert("L")`` (ITU-R 601-2 luma), then a LANCZOS resize to 32x32 (PIL's
   ``Resampling.LANCZOS``, imagehash's ``ANTIALIAS``);
2. a 2-D DCT-II, unnormalised like ``scipy.fftpack.dct`` (a constant factor does not move
   the median), computed as ``C @ P @ C.T`` with a precomputed 8x32 cosine matrix: only the
   8x8 low-frequency block is ever needed, so the full 32x32 transform is never built;
3. each of the 64 coefficients is compared with the median of the whole 8x8 block. Note:
   imagehash's ``phash`` *includes* the DC term in the median (only ``phash_simple`` drops
   it, and uses the mean); we follow ``phash``;
4. bit = coefficient > median, row-major over the 8x8 block, packed big-endian: coefficient
   (0, 0) is the most significant bit, (7, 7) the least, i.e. ``int(str(imagehash.phash(im)),
   16)`` equals ``phash64(im)``.

One deliberate difference: coefficients are rounded to 1e-6 before the comparison. On flat
or symmetric images many AC terms are exactly 0 in theory, and imagehash's bits there depend
on FFT round-off; rounding makes them deterministic (0 is not above a median of 0). A bit can
only differ otherwise when a coefficient lies within 1e-6 of the median (coefficients of
0..255 pixels are O(1)..O(1e5)); on 1,500 generated and real photos, and on flat images,
every hash equalled imagehash 4.3.2's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from itertools import combinations
from math import comb

import numpy as np
from PIL import Image

HASH_SIZE = 8
IMG_SIZE = HASH_SIZE * 4  # imagehash's highfreq_factor=4
RESAMPLE = Image.Resampling.LANCZOS
_ROUND_DECIMALS = 6

# DCT-II rows k=0..7 over n=0..31, scaled like scipy.fftpack.dct(norm=None): 2 cos(pi k (2n+1)/2N)
_K = np.arange(HASH_SIZE, dtype=np.float64)[:, None]
_N = np.arange(IMG_SIZE, dtype=np.float64)[None, :]
DCT_ROWS = 2.0 * np.cos(np.pi * _K * (2.0 * _N + 1.0) / (2.0 * IMG_SIZE))
_BIT_WEIGHTS = np.left_shift(np.uint64(1), np.arange(63, -1, -1, dtype=np.uint64))


def sha256_hex(image_bytes: bytes) -> str:
    """Exact-duplicate key: hex sha256 of the encoded bytes as stored."""
    return hashlib.sha256(image_bytes).hexdigest()


def _thumb(image: Image.Image) -> np.ndarray:
    """32x32 grayscale pixels as float64 (imagehash's preprocessing)."""
    gray = image if image.mode == "L" else image.convert("L")
    return np.asarray(gray.resize((IMG_SIZE, IMG_SIZE), RESAMPLE), dtype=np.float64)


def _hash_thumbs(thumbs: np.ndarray) -> np.ndarray:
    """(n, 32, 32) pixels -> (n,) uint64 hashes."""
    low = np.matmul(np.matmul(DCT_ROWS, thumbs), DCT_ROWS.T)  # (n, 8, 8)
    low = np.round(low.reshape(len(thumbs), -1), _ROUND_DECIMALS)
    med = np.median(low, axis=1, keepdims=True)
    bits = (low > med).astype(np.uint64)
    return (bits * _BIT_WEIGHTS).sum(axis=1, dtype=np.uint64)


def phash64(image: Image.Image) -> int:
    """64-bit perceptual hash as an unsigned Python int (see the module doc for the bits)."""
    return int(_hash_thumbs(_thumb(image)[None])[0])


def phash64_batch(images: Iterable[Image.Image]) -> np.ndarray:
    """pHash of many images as a uint64 array: one batched DCT instead of one per image."""
    thumbs = [_thumb(im) for im in images]
    if not thumbs:
        return np.zeros(0, dtype=np.uint64)
    return _hash_thumbs(np.stack(thumbs))


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Bitwise Hamming distance between 64-bit hashes (broadcasts)."""
    x = np.asarray(a, dtype=np.uint64) ^ np.asarray(b, dtype=np.uint64)
    return np.bitwise_count(x)


# --- near-hash search: multi-index hashing in bounded scratch memory -------------------------
#
# Exactness (pigeonhole): split the 64 bits into m blocks. d differing bits touch at most d
# blocks, so two hashes within distance d agree exactly on at least m - d of them, hence on
# every k-subset of those (k = m - d). One pass per k-subset of blocks buckets the rows by the
# subset's bits (the "key"); every pair within distance d shares a bucket in some pass, and
# each candidate pair is verified with a popcount, so nothing is missed and nothing is false.
#
# Memory: a pass never sorts all n rows at once. Rows are counting-sorted (in row chunks) by a
# hash of their key into super-buckets of ~_SUPER_ROWS rows; equal keys hash alike, so every
# bucket lies inside one super-bucket, which is then sorted and searched on its own. Per pass:
# one int32 row permutation plus O(_SUPER_ROWS + _ROW_CHUNK) scratch, never an n-long int64.
# Identical values are collapsed first (each copy linked to its value's first row), so the
# passes see distinct values and a hash repeated 10^5 times costs 10^5 edges, not 10^10 pairs.
_SUPER_ROWS = (1 << 12, 1 << 15)  # rows per super-bucket on average: n / 32, within these
_ROW_CHUNK = (1 << 11, 1 << 14)  # rows whose keys are computed at a time: n / 64, within these
_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads keys over super-buckets


def _scratch_rows(n: int) -> tuple[int, int]:
    """(rows per super-bucket, rows per chunk) for n rows: scratch grows with n, up to a cap."""
    (s_lo, s_hi), (c_lo, c_hi) = _SUPER_ROWS, _ROW_CHUNK
    chunk = max(8, min(max(n >> 6, c_lo), c_hi) // 8 * 8)  # whole bytes of a packed bit mask
    return max(1, min(max(n >> 5, s_lo), s_hi)), chunk


def plan_blocks(n: int, max_distance: int) -> tuple[list[tuple[int, int]], int]:
    """Split 64 bits into m contiguous blocks of which k = m - d must match exactly.

    Pigeonhole: d differing bits touch at most d of m blocks, so any pair within distance d
    agrees on at least m - d blocks, and on every k-subset of those. m = d + 1 (k = 1) is the
    classic multi-index hashing; a larger m lengthens the bucket key (fewer random
    candidates) at the price of C(m, k) passes. The m minimising an estimated cost is used
    (about 80 ns per row per pass for the bucketing, 30 ns per candidate pair). A key is
    k * 64 / m bits (22 at d = 4, n = 1M), held in a uint64 beside a row's position in its
    super-bucket; bits that do not fit are dropped, which only adds candidates.
    """
    d = max_distance
    local_bits = (max(1, min(n, 4 * _scratch_rows(n)[0])) - 1).bit_length()
    best: tuple[float, int] = (float("inf"), d + 1)
    for m in range(d + 1, min(64, 3 * d + 3) + 1):
        k = m - d
        w = 64 // m
        key_bits = min(k * w, 64 - local_bits)  # narrowest k blocks, as they fit
        passes = comb(m, k)
        if passes > 20_000:
            break
        pairs = n * n / 2.0 / 2.0 ** min(key_bits, 63)
        cost = passes * (80.0 * n + 30.0 * pairs)
        if cost < best[0]:
            best = (cost, m)
    m = best[1]
    w, extra = divmod(64, m)
    widths = [w + 1 if i < extra else w for i in range(m)]
    starts = np.cumsum([0, *widths[:-1]]).tolist()
    return list(zip(starts, widths, strict=True)), m - d


def _block_key(v: np.ndarray, blocks: list[tuple[int, int]]) -> np.ndarray:
    """The blocks' bits of each uint64 in v, concatenated (low block first) into a uint64."""
    key = np.zeros(len(v), dtype=np.uint64)
    off = 0
    for start, width in blocks:
        width = min(width, 64 - off)  # only when the blocks exceed 64 bits: never in practice
        if width <= 0:
            break
        part = v >> np.uint64(start)
        part &= np.uint64((1 << width) - 1)
        if off:
            part <<= np.uint64(off)
        key |= part
        off += width
    return key


def _super_buckets(
    vals: np.ndarray,
    key_fn: Callable[[np.ndarray], np.ndarray],
    active: np.ndarray | None,
    scratch: np.ndarray | None,
) -> Iterator[np.ndarray]:
    """Row indices (int32/int64, ascending) of each super-bucket: rows whose key_fn(vals)
    hashes alike. Equal keys always share one; inactive rows (a packed bit mask) are left out.

    A two-sweep counting sort over row chunks: count per super-bucket, then place. Memory: the
    permutation of the active rows (4 bytes each; in `scratch` when given) plus per-chunk
    scratch.
    """
    n = len(vals)
    super_rows, chunk = _scratch_rows(n)
    n_super = 1 << max(0, (n - 1) // super_rows).bit_length()  # a power of two >= n / rows
    shift = np.uint64(64 - n_super.bit_length() + 1)
    sb_t = np.uint8 if n_super < 255 else np.uint16 if n_super < 65535 else np.uint32
    idx_t = np.int32 if n < 2**31 else np.int64

    def labels(c0: int, c1: int) -> np.ndarray:  # super-bucket per row; n_super = inactive
        key = key_fn(vals[c0:c1])
        if n_super > 1:
            key *= _MIX  # wraps mod 2**64; the top bits are the best mixed
            key >>= shift
        else:
            key[:] = 0
        sb = key.astype(sb_t)
        if active is not None:
            sb[~np.unpackbits(active[c0 // 8 : (c1 + 7) // 8], count=c1 - c0).view(bool)] = n_super
        return sb

    counts = np.zeros(n_super + 1, dtype=np.int64)
    for c0 in range(0, n, chunk):
        counts += np.bincount(labels(c0, min(n, c0 + chunk)), minlength=n_super + 1)
    bounds = np.concatenate(([0], np.cumsum(counts[:n_super])))
    size = int(bounds[-1])
    if scratch is not None and scratch.dtype == idx_t and len(scratch) >= size:
        perm = scratch[:size]
    else:
        perm = np.empty(size, dtype=idx_t)
    ptr = bounds[:-1].copy()
    for c0 in range(0, n, chunk):
        sb = labels(c0, min(n, c0 + chunk))
        cnt = np.bincount(sb, minlength=n_super + 1)
        order = np.argsort(sb, kind="stable")[: len(sb) - cnt[n_super]]  # inactive sort last
        ss = sb[order].astype(np.intp)
        rank = np.arange(len(order)) - (np.cumsum(cnt) - cnt)[ss]  # position among equals
        perm[ptr[ss] + rank] = order + c0
        ptr += cnt[:n_super]
        del sb, order, ss, rank
    for s in range(n_super):
        if bounds[s + 1] - bounds[s] >= 2:
            yield perm[bounds[s] : bounds[s + 1]]


def _near_pairs_one_pass(
    vals: np.ndarray,
    blocks: list[tuple[int, int]],
    d: int,
    active: np.ndarray | None,
    scratch: np.ndarray | None,
) -> Iterator[np.ndarray]:
    """Verified (2, e) row pairs sharing the given blocks' bits, one super-bucket at a time."""
    key_bits = sum(w for _, w in blocks)
    for rows in _super_buckets(vals, lambda v: _block_key(v, blocks), active, scratch):
        v = vals[rows]
        # key = (block bits, position in rows) in one uint64, sorted (faster than an argsort)
        lb = max(1, (len(rows) - 1).bit_length())
        key = _block_key(v, blocks)
        if key_bits > 64 - lb:  # drop high key bits: more candidates, none missed
            key &= np.uint64((1 << (64 - lb)) - 1)
        key <<= np.uint64(lb)
        key |= np.arange(len(rows), dtype=np.uint64)
        key.sort()
        bucket = key >> np.uint64(lb)
        same = bucket[1:] == bucket[:-1]  # same[p]: sorted positions p and p + 1 share a bucket
        del bucket
        e = np.flatnonzero(same)
        if not e.size:
            continue
        # members of buckets with >= 2 rows (few, for spread-out hashes), as consecutive runs
        inrun = np.zeros(len(key), dtype=bool)
        inrun[e] = inrun[e + 1] = True
        member = np.flatnonzero(inrun)
        del inrun, e
        is_start = np.ones(len(member), dtype=bool)
        is_start[1:] = ~same[member[1:] - 1]
        run = np.cumsum(is_start) - 1
        run_end = (np.flatnonzero(is_start) + np.bincount(run))[run]  # exclusive, in members
        local = (key[member] & np.uint64((1 << lb) - 1)).astype(np.intp)
        del key, same, member, run, is_start
        offset = 1
        todo = np.flatnonzero(np.arange(len(local)) + 1 < run_end)
        while todo.size:  # pairs (i, i + offset) inside a bucket; the set only shrinks
            a, b = local[todo], local[todo + offset]
            ok = np.bitwise_count(v[a] ^ v[b]) <= d
            if ok.any():
                yield np.stack([rows[a[ok]], rows[b[ok]]])
            offset += 1
            todo = todo[todo + offset < run_end[todo]]


def _copy_edges(
    vals: np.ndarray, active: np.ndarray, scratch: np.ndarray | None
) -> Iterator[np.ndarray]:
    """(first, copy) row pairs for identical values: each copy to the value's first row.

    Clears the copies' bits in `active` (a packed bit mask, np.packbits order), so later
    passes see distinct values only. A super-bucket is read in pieces of ~_SUPER_ROWS rows,
    with a sorted table of the values met so far and their first rows, so one value repeated
    n times costs O(piece) scratch, not O(n).
    """
    piece = _scratch_rows(len(vals))[0]
    for rows in _super_buckets(vals, lambda v: v.copy(), None, scratch):
        seen_v = np.zeros(0, dtype=np.uint64)  # distinct values of the earlier pieces, sorted
        seen_r = np.zeros(0, dtype=rows.dtype)  # and each one's first row
        for p0 in range(0, len(rows), piece):
            r = rows[p0 : p0 + piece]  # ascending: earlier pieces hold the smaller rows
            v = vals[r]
            order = np.argsort(v, kind="stable")
            vs, r = v[order], r[order]
            del v, order
            start = np.ones(len(vs), dtype=bool)
            np.not_equal(vs[1:], vs[:-1], out=start[1:])
            first = r[start][np.cumsum(start) - 1]  # each value's first row in this piece
            if seen_v.size:
                at = np.minimum(np.searchsorted(seen_v, vs), len(seen_v) - 1)
                hit = seen_v[at] == vs
                first[hit] = seen_r[at[hit]]
                start &= ~hit
                del at, hit
            copy = r != first
            if copy.any():
                c = r[copy]
                np.bitwise_and.at(active, c >> 3, ~(np.uint8(0x80) >> (c & 7).astype(np.uint8)))
                yield np.stack([first[copy], c])
            if p0 + piece < len(rows):  # more pieces: remember this piece's new values
                seen_v = np.concatenate([seen_v, vs[start]])
                seen_r = np.concatenate([seen_r, r[start]])
                order = np.argsort(seen_v)
                seen_v, seen_r = seen_v[order], seen_r[order]


def near_pairs(
    vals: np.ndarray, max_distance: int, scratch: np.ndarray | None = None
) -> Iterator[np.ndarray]:
    """Row pairs whose transitive closure is "Hamming distance <= max_distance" on vals (a
    uint64 array), as (2, e) arrays of indices into vals, in batches of at most a
    super-bucket's size (a pair may come more than once).

    Identical values first: each copy is paired with the value's first row (a star, not all
    pairs) and takes no further part. Then every pair of *distinct* remaining values within
    distance max_distance, by multi-index hashing: exact, as no pair is missed (pigeonhole
    over the blocks of `plan_blocks`) and every pair yielded was verified with a popcount.
    Scratch memory: 4 bytes per row (one int32 permutation per pass, in `scratch` when that
    is an int32 array of len(vals) the caller does not touch until the generator is done), a
    bit per row, and about 50-100 bytes per super-bucket row (~3 MB at most).
    """
    n = len(vals)
    if n < 2:
        return
    active = np.full((n + 7) // 8, 0xFF, dtype=np.uint8)  # 1 bit per row: 0 for a copy
    yield from _copy_edges(vals, active, scratch)
    if max_distance <= 0:
        return
    active_or_all = None if (active == 0xFF).all() else active
    blocks, k = plan_blocks(n, max_distance)
    for chosen in combinations(blocks, k):
        yield from _near_pairs_one_pass(vals, list(chosen), max_distance, active_or_all, scratch)
