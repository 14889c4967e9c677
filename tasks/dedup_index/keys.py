"""Exact (sha256) and perceptual (pHash) lookups of a night's candidates among earlier rows.

A `KeyTable` holds the earlier rows of one run (or of segments no run covers yet): every
row, sorted by sha256 and by pHash. A candidate is linked to every row it matches; the
caller keeps the rows of partitions that are part of the night's history (a run may hold a
partition's superseded version, or dates after the night), so a match is never hidden
behind a row that does not count. Kept samples of a dataset-scope history rarely repeat a
value, so this costs little.

- exact: sha256 as five 60-bit words (polars parses 15 hex digits into an int64); a sorted
  first word finds the hits, all five words confirm them;
- perceptual: multi-index hashing with m blocks of the 64 bits: a pair within Hamming
  distance d is within d // m bits on at least one block (pigeonhole), so probing each
  block's sorted values at every value within that radius finds every such pair, and a
  popcount confirms it. Exact, no pair missed. m is chosen per table by its size
  (`mih_plan`): d + 1 blocks probe one value each but hit about rows / 2^13 rows per block
  at d = 4, a cost that grows with the history (610 candidates a query at 1M rows); 3
  blocks of 21-22 bits probe 23 values each and hit almost nothing.

Both are vectorised numpy over chunks of candidates, so memory stays bounded however many
rows share a block value.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import polars as pl

HEX_PER_WORD = 15  # 60 bits: a polars int64 holds it
WORDS = 5  # 4 x 15 + 4 hex digits = 64
CHUNK_PAIRS = 1 << 20  # candidate pairs expanded at a time (~40 MB of scratch)
CHUNK_PROBES = 1 << 22  # block probes (queries x values within the radius) at a time (~170 MB)
DIRECT_BITS = 22  # blocks this narrow may be looked up by address (2^22 + 1 offsets: 16 MB)
# ...when the block has at most this many values per probe: building the table costs ~5 ns
# a value, and each probe it serves saves ~130 ns of sorting and binary search (a 10-row
# table probed by a few queries at d = 2 built 32 MB of tables in 0.15 s)
DIRECT_VALUES_PER_PROBE = 16


def sha_words(sha: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(rows x 5 uint64 words, known mask) of hex sha256 strings; null or malformed: unknown."""
    s = sha.cast(pl.String)
    parts = []
    for w in range(WORDS):
        piece = s.str.slice(w * HEX_PER_WORD, HEX_PER_WORD)
        parts.append(piece.str.to_integer(base=16, strict=False))
    known = s.str.len_chars().eq(64).fill_null(False)
    for p in parts:
        known &= p.is_not_null()
    words = np.stack([p.fill_null(0).cast(pl.UInt64).to_numpy() for p in parts], axis=1)
    return np.ascontiguousarray(words), known.to_numpy()


SEARCH_NS = 200  # two binary searches of a probe in a sorted block (measured order)
PAIR_NS = 40  # expanding and confirming one candidate pair


def mih_plan(max_distance: int, rows: int) -> int:
    """The number of blocks m (1..d+1) with the lowest estimated lookup cost per query over a
    table of `rows` pHashes: probes (values within radius d // m of each block) cost a
    search each, and each probe hits rows / 2^width rows, each a pair to confirm."""
    from math import comb

    best, best_cost = max_distance + 1, float("inf")
    for m in range(max_distance + 1, 0, -1):
        r = max_distance // m
        probes = [sum(comb(w, k) for k in range(r + 1)) for _, w in mih_blocks(max_distance, m)]
        hits = sum(p * rows / 2.0**w for p, (_, w) in zip(probes, mih_blocks(max_distance, m),
                                                           strict=True))  # fmt: skip
        cost = sum(probes) * SEARCH_NS + hits * PAIR_NS
        if cost < best_cost:
            best, best_cost = m, cost
    return best


def mih_blocks(max_distance: int, m: int | None = None) -> list[tuple[int, int]]:
    """(start bit, width) of m (default d + 1) contiguous blocks covering the 64 bits."""
    m = max_distance + 1 if m is None else m
    w, extra = divmod(64, m)
    widths = [w + 1 if i < extra else w for i in range(m)]
    starts = np.cumsum([0, *widths[:-1]]).tolist()
    return list(zip(starts, widths, strict=True))


def _block(values: np.ndarray, start: int, width: int) -> np.ndarray:
    out = values >> np.uint64(start)
    if width < 64:
        out &= np.uint64((1 << width) - 1)
    return out


@dataclass
class KeyTable:
    """Earlier rows: sha256 words and pHashes, each sorted, with the row they came from."""

    sha_words: np.ndarray  # (k, 5) uint64 of the rows with a sha256, sorted
    sha_rows: np.ndarray  # their rows
    ph_values: np.ndarray  # pHashes of the rows with one, sorted
    ph_rows: np.ndarray  # their rows
    # max distance -> (m, per block: sorted block values, their positions)
    blocks: dict[int, tuple[int, list[tuple[np.ndarray, np.ndarray]]]] = field(default_factory=dict)
    # (max distance, block) -> where each block value's rows start (`block_offsets`)
    offsets: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)

    @staticmethod
    def build(sha: pl.Series, phash: pl.Series) -> KeyTable:
        words, known = sha_words(sha)
        rows = np.flatnonzero(known)
        w = words[rows]
        order = np.lexsort(w.T[::-1])  # by word 0, then 1, ... (stable: rows ascending)
        ph = phash.cast(pl.UInt64)
        ph_rows = np.flatnonzero(ph.is_not_null().to_numpy())
        values = ph.fill_null(0).to_numpy()[ph_rows]
        by_value = np.argsort(values, kind="stable")
        return KeyTable(w[order], rows[order], values[by_value], ph_rows[by_value])

    def sorted_blocks(self, max_distance: int) -> tuple[int, list[tuple[np.ndarray, np.ndarray]]]:
        """(m, per MIH block: the pHashes' block values sorted, their positions), m chosen
        for this table's size."""
        if max_distance not in self.blocks:
            m = mih_plan(max_distance, len(self.ph_values))
            out = []
            for start, width in mih_blocks(max_distance, m):
                vals = _block(self.ph_values, start, width)
                order = np.argsort(vals, kind="stable")
                out.append((vals[order], order))
            self.blocks[max_distance] = (m, out)
        return self.blocks[max_distance]

    def block_offsets(self, max_distance: int, i: int, width: int) -> np.ndarray:
        """Block i's values as an address table: the rows holding value v are positions
        offsets[v]:offsets[v + 1] of its sorted values. Two loads per probe instead of two
        binary searches (and the sort of the probes that kept those searches cached): 4-5x
        faster for 100k queries x 69 probes into 1M rows. Built on first use (a bincount)."""
        key = (max_distance, i)
        if key not in self.offsets:
            vals = self.sorted_blocks(max_distance)[1][i][0]
            counts = np.bincount(vals.astype(np.intp), minlength=1 << width)
            dtype = np.int32 if len(vals) < 2**31 else np.int64
            out = np.zeros((1 << width) + 1, dtype)
            np.cumsum(counts, out=out[1:])
            self.offsets[key] = out
        return self.offsets[key]

    def to_bytes(self, max_distance: int | None) -> bytes:
        arrays = {
            "sha_words": self.sha_words,
            "sha_rows": self.sha_rows,
            "ph_values": self.ph_values,
            "ph_rows": self.ph_rows,
        }
        if max_distance is not None:
            m, blocks = self.sorted_blocks(max_distance)
            for i, (vals, order) in enumerate(blocks):
                arrays[f"block{i}_vals"], arrays[f"block{i}_order"] = vals, order
            arrays["max_distance"] = np.array([max_distance])
            arrays["blocks"] = np.array([m])
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> KeyTable:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            table = KeyTable(z["sha_words"], z["sha_rows"], z["ph_values"], z["ph_rows"])
            if "max_distance" in z:
                d = int(z["max_distance"][0])
                m = int(z["blocks"][0]) if "blocks" in z else d + 1  # written before the plan
                blocks = [(z[f"block{i}_vals"], z[f"block{i}_order"]) for i in range(m)]
                table.blocks[d] = (m, blocks)
        return table


def _expand(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query index, position) for every position in [lo[q], hi[q])."""
    counts = hi - lo
    total = int(counts.sum())
    q = np.repeat(np.arange(len(lo)), counts)
    offset = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    return q, np.repeat(lo, counts) + offset


def _chunks(lo: np.ndarray, hi: np.ndarray) -> list[slice]:
    """Query slices whose expanded pairs stay under CHUNK_PAIRS (one query may exceed it)."""
    csum = np.cumsum(hi - lo)
    out, start, base = [], 0, 0
    while start < len(lo):
        end = int(np.searchsorted(csum, base + CHUNK_PAIRS, side="right"))
        end = max(end, start + 1)
        out.append(slice(start, end))
        base = int(csum[end - 1])
        start = end
    return out


def exact_links(table: KeyTable, cand_sha: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(candidate index, table row) for every earlier row with a candidate's sha256."""
    words, known = sha_words(cand_sha)
    lo, hi = _ranges(table.sha_words[:, 0], words[:, 0])
    hi[~known] = lo[~known]
    ci_all, ri_all = [], []
    for part in _chunks(lo, hi):
        q, pos = _expand(lo[part], hi[part])
        q += part.start
        same = (table.sha_words[pos] == words[q]).all(axis=1)
        ci_all.append(q[same])
        ri_all.append(table.sha_rows[pos[same]])
    return _cat(ci_all), _cat(ri_all)


def perceptual_links(
    table: KeyTable, cand_phash: pl.Series, max_distance: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(candidate index, table row, distance) for every earlier row whose pHash is within
    `max_distance` of a candidate's (each pair once)."""
    ph = cand_phash.cast(pl.UInt64)
    values = ph.fill_null(0).to_numpy()
    with_ph = np.flatnonzero(ph.is_not_null().to_numpy())  # the candidates that are probed
    ci_all, pi_all = [], []
    m, blocks = table.sorted_blocks(max_distance)
    radius = max_distance // m
    plan = mih_blocks(max_distance, m)
    for i, ((start, width), (vals, order)) in enumerate(zip(plan, blocks, strict=True)):
        masks = _masks(width, radius)
        probes = len(with_ph) * len(masks)
        by_address = width <= DIRECT_BITS and (1 << width) <= DIRECT_VALUES_PER_PROBE * probes
        direct = table.block_offsets(max_distance, i, width) if by_address else None
        step = max(1, CHUNK_PROBES // len(masks))  # probes (queries x masks) held at a time
        for first in range(0, len(with_ph), step):
            cands = with_ph[first : first + step]
            key = (_block(values[cands], start, width)[:, None] ^ masks[None, :]).ravel()
            if direct is not None:
                at_key = key.astype(np.intp)
                lo, hi = direct[at_key].astype(np.int64), direct[at_key + 1].astype(np.int64)
            else:
                lo, hi = _ranges(vals, key)
            hit = np.flatnonzero(hi > lo)  # most probes find nothing: expand the others
            query, lo, hi = cands[hit // len(masks)], lo[hit], hi[hit]
            for part in _chunks(lo, hi):
                probe, pos = _expand(lo[part], hi[part])
                q = query[probe + part.start]
                p = order[pos]
                dist = np.bitwise_count(values[q] ^ table.ph_values[p])
                ok = dist <= max_distance
                ci_all.append(q[ok])
                pi_all.append(p[ok])
    ci, pi = _cat(ci_all), _cat(pi_all)
    if len(ci):  # a pair agreeing on several blocks was found once per block
        pair = np.unique(np.stack([ci, pi]), axis=1)
        ci, pi = pair[0], pair[1]
    dist = np.bitwise_count(values[ci] ^ table.ph_values[pi]).astype(np.int64)
    return ci, table.ph_rows[pi], dist


def _ranges(sorted_values: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi) of each key's equal values in `sorted_values`. The keys are searched in
    sorted order: each search then starts near the last one (3.8x faster for 2.3M keys
    into 1M values than in arbitrary order)."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    lo, hi = np.empty(len(keys), np.int64), np.empty(len(keys), np.int64)
    lo[order] = np.searchsorted(sorted_values, ordered, side="left")
    hi[order] = np.searchsorted(sorted_values, ordered, side="right")
    return lo, hi


def _masks(width: int, radius: int) -> np.ndarray:
    """Every `width`-bit value with at most `radius` bits set (0 first): a block key XOR each
    is every value within that Hamming radius."""
    from itertools import combinations

    out = [0]
    for k in range(1, radius + 1):
        out += [sum(1 << b for b in bits) for bits in combinations(range(width), k)]
    return np.array(out, dtype=np.uint64)


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
