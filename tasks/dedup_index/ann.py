"""Semantic lookups: FAISS IVF-PQ (fast-scan) candidates, confirmed by the exact cosine.

Why FAISS IVF-PQ fast-scan (`IVF{nlist},PQ{d/8}x4fs`): 32 bytes per 512-d embedding, a SIMD
scan of the probed lists, a binary format we write and read ourselves (no pickle), and no
server; measured against IVF-PQ with 8-bit codes and IVF-SQ8 on this machine class it found
every planted copy (cosine >= 0.96) at nprobe 2 while scanning 7x and 14x faster
(`bench/bench_history.py` measures recall and cost in the dedup setting). PQ's inner products
are far too coarse to threshold (a true 0.97 can read 0.4 on isotropic data), so the index
only *ranks*: each run's k nearest rows per query are candidates, and the float64 cosine of
the stored fp16 vectors decides, exactly as within a partition.

One codebook (coarse quantizer + PQ tables) per dataset, trained once from the first
embeddings compacted (`train_codebook`), encodes every run: the query's probed lists are then
the same in every run. Runs smaller than `FLAT_MAX` rows, and every run before a codebook
exists, are searched exactly (all pairs), so small histories and tests get exact answers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

FLAT_MAX = 20_000  # rows searched exactly (brute force), no codebook needed
TRAIN_MIN = 50_000  # embeddings compacted before a codebook is trained
TRAIN_MAX = 200_000  # embeddings a codebook is trained on (a deterministic sample)
K = 8  # nearest rows per query and run taken as candidates
MARGIN = 1e-4  # float32 cosine error bound; closer pairs are settled in float64
EPS64 = 1e-12
QUERY_CHUNK = 2048


def _faiss():  # imported when first needed: seconds of start-up a planning step never pays
    import faiss

    return faiss


def unit32(x: np.ndarray) -> np.ndarray:
    """Rows L2-normalised as float32 (zero or non-finite rows stay 0: they match nothing)."""
    x = np.asarray(x, dtype=np.float32).copy()
    x[~np.isfinite(x).all(axis=1)] = 0
    norm = np.linalg.norm(x, axis=1)
    norm[norm == 0] = 1
    x /= norm[:, None]
    return x


def n_lists(rows: int) -> int:
    """Coarse lists for a codebook trained when `rows` embeddings exist: about 4 sqrt(rows),
    so lists stay short as the history grows several times past it."""
    return int(min(16384, max(16, 4 * round(math.sqrt(rows)))))


def codebook_spec(dim: int, nlist: int) -> str:
    quantizer = f"IVF{nlist}_HNSW32" if nlist > 1024 else f"IVF{nlist}"
    return f"{quantizer},PQ{dim // 4}x4fs"


def train_codebook(sample: np.ndarray, nlist: int, seed: int = 0) -> bytes:
    """An empty IVF-PQ index trained on `sample` (normalised here), serialised."""
    faiss = _faiss()
    x = unit32(sample)
    dim = x.shape[1]
    if dim % 8:
        raise ValueError(f"embedding width {dim} is not a multiple of 8")
    index = faiss.index_factory(dim, codebook_spec(dim, nlist), faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = seed
    index.train(x)
    return faiss.serialize_index(index).tobytes()


def encode(codebook: bytes, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> bytes:
    """Each (vectors, ids) of `chunks` added to a copy of the codebook, serialised."""
    faiss = _faiss()
    index = faiss.deserialize_index(np.frombuffer(codebook, dtype=np.uint8))
    for vectors, ids in chunks:
        for i in range(0, len(vectors), 65536):
            x = unit32(vectors[i : i + 65536])
            index.add_with_ids(x, np.asarray(ids[i : i + 65536], dtype=np.int64))
    return faiss.serialize_index(index).tobytes()


class Searcher:
    """The night's queries, normalised once, searched against run after run."""

    def __init__(self, queries: np.ndarray, threshold: float, nprobe: int) -> None:
        self.raw, self.q = queries, unit32(queries)
        self.threshold, self.nprobe = threshold, nprobe

    def candidates(self, run_index: bytes) -> tuple[np.ndarray, np.ndarray]:
        """(query, run row) of each query's K nearest rows of an encoded run."""
        faiss = _faiss()
        index = faiss.deserialize_index(np.frombuffer(run_index, dtype=np.uint8))
        faiss.extract_index_ivf(index).nprobe = self.nprobe
        k = min(K, index.ntotal)
        if k == 0 or not len(self.q):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        _, found = index.search(self.q, k)
        qi = np.repeat(np.arange(len(self.q)), k)
        ri = found.reshape(-1)
        keep = ri >= 0
        return qi[keep], ri[keep].astype(np.int64)

    def confirm(self, qi: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Of the pairs (query qi[j], earlier vector rows[j]), those with cosine >= threshold,
        and their cosine (float64 near the threshold, as within a partition)."""
        if not len(qi):
            return np.zeros(0, bool), np.zeros(0)
        other = unit32(rows)
        cos = np.einsum("ij,ij->i", self.q[qi], other).astype(np.float64)
        ok = cos >= self.threshold + MARGIN
        unsure = np.flatnonzero(np.abs(cos - self.threshold) < MARGIN)
        if unsure.size:
            a = np.asarray(self.raw[qi[unsure]], np.float64)
            b = np.asarray(rows[unsure], np.float64)
            exact = (a * b).sum(1) / np.maximum(
                np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300
            )
            cos[unsure] = exact
            ok[unsure] = exact >= self.threshold - EPS64
        return ok, cos

    def exact(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query, row, cosine) of every pair with cosine >= threshold: all pairs compared."""
        x = unit32(vectors)
        qs, rs, cs = [], [], []
        for i in range(0, len(self.q), QUERY_CHUNK):
            sim = self.q[i : i + QUERY_CHUNK] @ x.T
            q, r = np.nonzero(sim >= self.threshold - MARGIN)
            if not len(q):
                continue
            ok, cos = self.confirm(q + i, vectors[r])
            qs.append(q[ok] + i)
            rs.append(r[ok])
            cs.append(cos[ok])
        if not qs:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate(qs), np.concatenate(rs), np.concatenate(cs)
