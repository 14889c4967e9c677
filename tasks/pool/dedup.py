"""Deduplication core: group rows that are copies, then keep one survivor per group.

Pure numpy, no Prefect: the select stage calls these over one partition's candidate rows in
input order. Every grouping is a transitive closure (a~b and b~c put a, b, c in one group even
when a!~c) and names a group by its smallest input row index, so the group *structure* does
not depend on row order or thread count; only the ids do, by definition.

* exact: identical sha256 keys;
* perceptual: pHash Hamming distance <= d, found by multi-index hashing, exact (no missed
  pair) and sub-quadratic;
* semantic: SemDeDup: spherical k-means, then cosine >= threshold *within* each cluster.
  Pairs split across clusters are never compared (as in SemDeDup); `kmeans_labels` is public
  so callers (and the tests) can see the clusters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Literal

import numpy as np

from tasks.pool.phash import near_pairs

__all__ = [
    "UnionFind",
    "exact_groups",
    "kmeans_labels",
    "perceptual_groups",
    "semantic_groups",
    "survivors",
]

_EDGE_FLUSH = (1 << 10, 1 << 16)  # union pending edges at n / 64 of them, within (bounds memory)
_ROOT_CHUNK = (1 << 12, 1 << 16)  # rows `UnionFind.roots` compresses at a time: n / 64, within


class UnionFind:
    """Disjoint sets over 0..n-1, unioned in vectorised batches.

    Invariant parent[x] <= x: every hook points a root to a smaller root and path compression
    only shortcuts to the root, so each set's root is its smallest member.

    `out` (optional, an int64 array of n) is where `roots` writes its answer; the int32
    parents live in its first 4n bytes meanwhile, so parents plus result cost 8 bytes per
    element, not 12, and its last 4n bytes are free for the caller's scratch (`spare`).
    """

    def __init__(self, n: int, out: np.ndarray | None = None) -> None:
        self.dtype = np.int32 if n < 2**31 else np.int64  # half the memory for most inputs
        self._out = out
        if out is None:
            self.parent = np.arange(n, dtype=self.dtype)
            return
        if out.dtype != np.int64 or out.shape != (n,) or not out.flags.c_contiguous:
            raise ValueError(f"out must be a contiguous int64 array of {n}")
        self.parent = out.view(self.dtype)[:n]
        step = _root_chunk(n)
        for i in range(0, n, step):  # no n-long temporary
            self.parent[i : i + step] = np.arange(i, min(n, i + step), dtype=self.dtype)

    def spare(self) -> np.ndarray | None:
        """The int32 half of `out` that the parents leave free (n elements), until `roots`."""
        if self._out is None or self.dtype != np.int32:
            return None
        return self._out.view(np.int32)[len(self.parent) :]

    def find(self, x: np.ndarray) -> np.ndarray:
        """Roots of x (pointer chasing on x only, then x's paths are compressed)."""
        x = np.asarray(x, dtype=self.dtype)
        r = self.parent[x]
        while True:
            rr = self.parent[r]
            if np.array_equal(rr, r):
                break
            r = rr
        self.parent[x] = r
        return r

    def union(self, u: np.ndarray, v: np.ndarray) -> None:
        """Merge the sets of u[i] and v[i] for every i."""
        u, v = np.asarray(u, dtype=self.dtype), np.asarray(v, dtype=self.dtype)
        while u.size:
            ru, rv = self.find(u), self.find(v)
            lo, hi = np.minimum(ru, rv), np.maximum(ru, rv)
            keep = lo != hi
            u, v = lo[keep], hi[keep]
            # several edges may hook one root: the smallest wins, the others retry next round
            np.minimum.at(self.parent, v, u)

    def union_edges(self, edges: list[np.ndarray]) -> None:
        """Union a list of (2, e) edge arrays."""
        if edges:
            e = np.concatenate(edges, axis=1)
            self.union(e[0], e[1])

    def roots(self) -> np.ndarray:
        """Root (= smallest member) of every element as int64; compresses all paths.

        In place, in ascending chunks: as parent[x] <= x, the chunks before are already
        roots, so the only scratch is one chunk (plus the int64 result). With `out`, the
        result is `out` itself, widened in place from the int32 parents (descending chunks:
        element i's 8 bytes overwrite int32 slots 2i and 2i + 1, never a slot below i, which
        is all that is still unread), and it stays this union-find's parent array.
        """
        p = self.parent
        step = _root_chunk(len(p))
        for i in range(0, len(p), step):
            r = p[p[i : i + step]]
            while True:
                rr = p[r]
                if np.array_equal(rr, r):
                    break
                r = rr
            p[i : i + step] = r
        if self._out is None:
            return p.astype(np.int64)
        out = self._out
        if p.dtype != np.int64:
            for i in range(((len(p) - 1) // step) * step, -1, -step):
                out[i : i + step] = p[i : i + step].astype(np.int64)  # read, then write
            self.dtype, self.parent = np.int64, out
        return out


def _root_chunk(n: int) -> int:
    return min(max(n >> 6, _ROOT_CHUNK[0]), _ROOT_CHUNK[1])


def exact_groups(keys: Sequence[str | None] | np.ndarray) -> np.ndarray:
    """Group id per row: the first row with the same key. None never matches (own group)."""
    first: dict[str, int] = {}
    out = np.empty(len(keys), dtype=np.int64)
    for i, k in enumerate(keys):
        out[i] = i if k is None else first.setdefault(k, i)
    return out


def perceptual_groups(hashes: np.ndarray | Sequence[int], max_distance: int) -> np.ndarray:
    """Group id per row: transitive closure of pHash Hamming distance <= max_distance.

    Exact (equals the all-pairs answer) and sub-quadratic: `phash.near_pairs` links each
    identical hash to its first row, then finds the pairs of distinct values by multi-index
    hashing, and the edges go into a union-find over rows as they come (about n / 64 pending
    at most), whose roots are each group's smallest row. Memory above the input: the int64
    result, which holds the int32 parents and the passes' int32 row permutation until the
    end, a bit per row, and bounded scratch (~3 MB at most): at 1M hashes, 1.22x a uint64
    input at the peak by tracemalloc, ~1.5x by RSS (bench/bench_dedup.py measures both).
    """
    if not 0 <= max_distance <= 32:
        raise ValueError(f"max_distance must be in 0..32, got {max_distance}")
    a = np.asarray(hashes)
    h = a.view(np.uint64) if a.dtype == np.int64 else a.astype(np.uint64, copy=False)
    n = len(h)
    uf = UnionFind(n, out=np.empty(n, dtype=np.int64))
    flush = min(max(n >> 6, _EDGE_FLUSH[0]), _EDGE_FLUSH[1])
    pending: list[np.ndarray] = []
    n_pending = 0
    for e in near_pairs(h, max_distance, scratch=uf.spare()):
        pending.append(e)
        n_pending += e.shape[1]
        if n_pending >= flush:
            uf.union_edges(pending)
            pending, n_pending = [], 0
    uf.union_edges(pending)
    del pending
    return uf.roots()


# --- semantic (SemDeDup) --------------------------------------------------------------------
_CHUNK_ROWS = 4096  # rows converted to float32/uint64 at a time (8-16 MB at d=512)
_SIM_BLOCK = 1 << 22  # float32 elements in one similarity block (16 MB)
_MARGIN = 1e-4  # float32 cosine error bound at d~1k is ~3e-5: closer pairs are redone in f64
_EPS64 = 1e-12  # float64 round-off allowance, so threshold=1.0 still links identical rows
_POINTS_PER_CENTROID = 256  # k-means trains on k x 256 rows, as faiss does by default,
_MAX_TRAIN_ROWS = 1 << 18  # but at most this many (512 MB float32 at d=512) when k is large
_KMEANS_ITERS = 20


def default_n_clusters(n: int) -> int:
    """k-means costs ~n*k, within-cluster pairs ~n*n/k: k ~ sqrt(n/10) balances them (1M -> 316)."""
    return max(1, round((n / 10) ** 0.5))


def _unit(x: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Rows L2-normalised in a new `dtype` array; zero or non-finite rows become 0."""
    x = np.asarray(x).astype(dtype)
    x[~np.isfinite(x).all(axis=1)] = 0
    norm = np.sqrt(np.einsum("ij,ij->i", x, x))
    norm[norm == 0] = 1
    x /= norm[:, None]
    return x


def _row_hash(emb: np.ndarray, seed: int) -> np.ndarray:
    """A seeded uint64 hash of each row's bits: picks k-means rows by content, not position.

    Integer products summed mod 2**64 are exact in any order, so the hash (and the rows it
    picks) is the same for any row order, chunking or thread count.
    """
    n, d = emb.shape
    bits = {2: np.uint16, 4: np.uint32, 8: np.uint64}[emb.dtype.itemsize]
    mult = np.random.default_rng(seed).integers(1, 2**63, size=d, dtype=np.uint64) | np.uint64(1)
    out = np.empty(n, dtype=np.uint64)
    for i in range(0, n, _CHUNK_ROWS):
        chunk = np.ascontiguousarray(emb[i : i + _CHUNK_ROWS]).view(bits).astype(np.uint64)
        out[i : i + _CHUNK_ROWS] = (chunk * mult).sum(axis=1, dtype=np.uint64)
    for shift, mul in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):  # splitmix64
        out ^= out >> np.uint64(shift)
        out *= np.uint64(mul)
    return out ^ (out >> np.uint64(31))


def _assign(emb: np.ndarray, centroids: np.ndarray, normalised: bool = False) -> np.ndarray:
    """Nearest centroid (largest cosine, ties to the lower id) per row, in row chunks."""
    out = np.empty(len(emb), dtype=np.int64)
    for i in range(0, len(emb), _CHUNK_ROWS):
        x = emb[i : i + _CHUNK_ROWS]
        out[i : i + _CHUNK_ROWS] = np.argmax((x if normalised else _unit(x)) @ centroids.T, 1)
    return out


def kmeans_labels(
    emb: np.ndarray, n_clusters: int | None = None, seed: int = 0, iters: int = _KMEANS_ITERS
) -> np.ndarray:
    """Spherical k-means cluster id per row (deterministic from `seed` and the content only).

    Trains on the k x 256 rows (at most 2**18) with the smallest seeded content hash (a
    random sample that ignores row order), in that hash order; the init is the first k
    distinct sampled rows. Lloyd steps until assignments stop changing or `iters`; centroid
    sums in float64 over fixed chunks; an emptied cluster keeps its centroid. Then one pass
    labels every row (float32 argmax: a row within ~1e-7 of a tie between two centroids
    could, in theory, flip with its position in a BLAS block).
    """
    n = len(emb)
    k = min(n, max(1, default_n_clusters(n) if n_clusters is None else n_clusters))
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    h = _row_hash(emb, seed)
    m = min(k * _POINTS_PER_CENTROID, max(_MAX_TRAIN_ROWS, 4 * k))
    sample = np.argsort(h, kind="stable")[:m]
    hs = h[sample]
    del h
    x = _unit(emb[sample])
    cent = x[np.flatnonzero(np.r_[True, hs[1:] != hs[:-1]])[:k]].copy()
    k = len(cent)
    prev = None
    for _ in range(iters):
        a = _assign(x, cent, normalised=True)
        if prev is not None and np.array_equal(a, prev):
            break
        prev = a
        sums = np.zeros((k, x.shape[1]), dtype=np.float64)
        for i in range(0, len(x), _CHUNK_ROWS):
            ai, o = a[i : i + _CHUNK_ROWS], np.argsort(a[i : i + _CHUNK_ROWS], kind="stable")
            ids, starts = np.unique(ai[o], return_index=True)
            sums[ids] += np.add.reduceat(x[i : i + _CHUNK_ROWS][o].astype(np.float64), starts)
        norm = np.linalg.norm(sums, axis=1)
        live = norm > 0
        cent[live] = (sums[live] / norm[live, None]).astype(np.float32)
    return _assign(emb, cent)


def link_within_clusters(
    emb: np.ndarray, labels: np.ndarray, threshold: float, union: Callable[..., None]
) -> None:
    """Call union(a, b) for every pair in one cluster with cosine >= threshold (chunked)."""
    order = np.argsort(labels, kind="stable")  # each cluster's rows ascending
    bounds = np.concatenate(([0], np.cumsum(np.bincount(labels))))
    for c0, c1 in pairwise(bounds):
        if c1 - c0 < 2:
            continue
        rows = order[c0:c1]
        x = _unit(emb[rows])
        step = max(1, _SIM_BLOCK // len(rows))
        for i in range(0, len(rows), step):
            sim = x[i : i + step] @ x[i:].T
            r, c = np.nonzero(sim >= threshold - _MARGIN)
            upper = c > r  # column i + c vs row i + r: each pair once, no self-pairs
            r, c = r[upper], c[upper]
            if not r.size:
                continue
            ok = sim[r, c] >= threshold + _MARGIN
            a, b = rows[i + r], rows[i + c]
            unsure = np.flatnonzero(~ok)
            if unsure.size:  # the exact answer near the threshold: float64 cosine
                ua, ub = _unit(emb[a[unsure]], np.float64), _unit(emb[b[unsure]], np.float64)
                ok[unsure] = (ua * ub).sum(axis=1) >= threshold - _EPS64
            union(a[ok], b[ok])


def semantic_groups(
    emb: np.ndarray,
    threshold: float,
    n_clusters: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Group id per row: SemDeDup near-duplicates (cosine >= threshold within a cluster).

    Rows are L2-normalised; k-means (see `kmeans_labels`, n_clusters=None: ~sqrt(n/10)
    clusters) splits them, and only pairs inside a cluster are compared: n_clusters=1 is the
    exact all-pairs answer. A pair counts when its float64 cosine is >= threshold (float32
    finds candidates; those within 1e-4 of the threshold are re-checked in float64, so the
    answer does not depend on BLAS blocking or thread count). Rows with a zero or non-finite
    vector have cosine 0 with everything. Scratch memory: one cluster's float32 rows plus a
    chunk x cluster-size similarity block, never n x n.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be 2-D, got shape {emb.shape}")
    n = len(emb)
    uf = UnionFind(n)
    if n < 2:
        return uf.roots()
    labels = kmeans_labels(emb, n_clusters, seed=seed)
    link_within_clusters(emb, labels, threshold, uf.union)
    return uf.roots()


def survivors(
    group_ids: np.ndarray | Sequence[int],
    scores: np.ndarray | Sequence[float | None] | None = None,
    keep: Literal["best_score", "first"] = "best_score",
) -> tuple[np.ndarray, np.ndarray]:
    """(is_duplicate, duplicate_of) per row: exactly one survivor per group.

    keep="first": the smallest input index survives; "best_score": the highest score, ties
    to the smallest index, null/NaN scores last. duplicate_of is the survivor's row index,
    -1 for survivors. Group ids may be any integers (e.g. combined exact + perceptual ids).
    """
    g = np.asarray(group_ids, dtype=np.int64)
    n = len(g)
    idx = np.arange(n, dtype=np.int64)
    if keep == "first":
        order = np.lexsort((idx, g))
    elif keep == "best_score":
        if scores is None:
            raise ValueError('keep="best_score" needs scores')
        s = np.asarray(scores, dtype=np.float64)
        if s.shape != g.shape:
            raise ValueError(f"scores shape {s.shape} != group_ids shape {g.shape}")
        nan = np.isnan(s)
        order = np.lexsort((idx, np.where(nan, 0.0, -s), nan, g))  # NaN after even -inf
    else:
        raise ValueError(f'keep must be "best_score" or "first", got {keep!r}')
    gs = g[order]
    head = np.ones(n, dtype=bool)
    head[1:] = gs[1:] != gs[:-1]
    run = np.cumsum(head) - 1
    keeper = np.empty(n, dtype=np.int64)
    keeper[order] = order[head][run]
    is_dup = keeper != idx
    return is_dup, np.where(is_dup, keeper, -1)
