"""Semantic lookups: FAISS IVF-PQ (fast-scan) candidates, confirmed by the exact cosine.

Why FAISS IVF-PQ fast-scan (`IVF{nlist},PQ{d/4}x4fs`, 64 bytes per 512-d embedding): a SIMD
scan of 4-bit codes in the probed lists, a binary format we serialise ourselves (no pickle),
no server. Measured on clustered 512-d data (`/tmp`-free numbers in `bench/bench_history.py`):
IVF-PQ with 8-bit codes and IVF-SQ8 scanned 7x and 14x slower for the same recall, and 8 dims
per sub-quantizer (32 bytes) ranked some planted copies out of the top 8 in 32-d tests.

PQ's inner products are biased (a true 0.97 reads about 0.6 here), so they are never compared
with the threshold itself. Each codebook is *calibrated* when it is trained: near-copies of
its training vectors at known cosines are searched, and for each cosine the lowest estimate a
true pair received (less a margin) is kept. A query takes every row of the probed lists whose
estimate clears the calibrated floor for the configured threshold (all of them, so the
candidates do not depend on how rows are grouped into runs), and the float64 cosine of the
stored fp16 vectors decides, exactly as within a partition.

One codebook (coarse quantizer + PQ tables) per dataset encodes every run, so a query probes
the same lists in every run: a night assigns its queries to lists once per codebook and scans
each run with that assignment. It is trained from the first `TRAIN_MIN` embeddings (before that
every pair is compared exactly), with about 2 sqrt(rows) lists, and trained again, with every
run re-encoded, once the history holds `RETRAIN_FACTOR` times the rows it was trained for, so
lists stay short as the history grows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

FLAT_MAX = 20_000  # a segment this small is searched exactly when it is read directly
TRAIN_MIN = 20_000  # embeddings compacted before a codebook is trained
TRAIN_MAX = 200_000  # embeddings a codebook is trained on (the earliest partitions')
RETRAIN_FACTOR = 16  # train again when the history has this many times the rows
K = 8  # nearest rows per query and run taken as candidates
CALIBRATION_COS = (0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995)
CALIBRATION_PAIRS = 2000  # near-copies searched per cosine
CALIBRATION_SLACK = 0.05  # taken off the lowest estimate a true pair received
MARGIN = 1e-4  # float32 cosine error bound; closer pairs are settled in float64
EPS64 = 1e-12
QUERY_CHUNK = 2048  # exact search: queries x rows similarities at a time
# IVF search: queries at a time. Inner-product lookup tables are per query (8 KB at 512-d),
# so 4,096 add ~32 MB; each call has a fixed cost, and 512 at a time spent 3.6 s of CPU on
# a 1M-row run for 100k queries where 4,096 spend 2.6 s.
SEARCH_CHUNK = 4096


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


def n_lists(rows: int, sample: int) -> int:
    """Coarse lists for a codebook trained when `rows` embeddings exist, on `sample` of them:
    about 2 sqrt(rows), and at least 39 training vectors per list (FAISS's minimum).

    A night pays nlist dot products per query to assign it (once per codebook) and scans
    nprobe * rows / nlist 4-bit codes per query (about 1/30 of a 512-d dot product each):
    4 sqrt(rows) lists spent ~4 of a night's ~20 CPU seconds assigning at 1.1M rows; half as
    many halve that for a scan still under a second."""
    return int(max(16, min(2 * round(math.sqrt(rows)), sample // 39, 16384)))


def codebook_spec(dim: int, nlist: int) -> str:
    """Always an exact (flat) coarse quantizer: an HNSW one assigns about 3% of rows to a
    list that is not their nearest (efSearch 16, measured at 3,452 lists), and their
    near-copies then probe other lists and are never found. A flat assignment of a night's
    queries is one matrix product (100k queries x 3,452 lists: about 4 s on 2 cores)."""
    return f"IVF{nlist},PQ{dim // 4}x4fs"


def train_codebook(sample: np.ndarray, nlist: int, seed: int = 0) -> tuple[bytes, list]:
    """An empty IVF-PQ index trained on `sample` (normalised here), serialised, and its
    calibration: [(cosine, lowest estimate a pair at that cosine may get)]."""
    faiss = _faiss()
    x = unit32(sample)
    dim = x.shape[1]
    if dim % 8:
        raise ValueError(f"embedding width {dim} is not a multiple of 8")
    index = faiss.index_factory(dim, codebook_spec(dim, nlist), faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = seed
    index.train(x)
    data = faiss.serialize_index(index).tobytes()
    return data, calibrate(data, x, seed)


def calibrate(book: bytes, x: np.ndarray, seed: int, nprobe: int = 8) -> list[list[float]]:
    """For each cosine of CALIBRATION_COS, the lowest PQ estimate that a vector's near-copy at
    exactly that cosine received (found among its K nearest), less CALIBRATION_SLACK."""
    rng = np.random.default_rng(seed)
    base = x[rng.choice(len(x), size=min(len(x), 20 * CALIBRATION_PAIRS), replace=False)]
    index = _faiss().deserialize_index(np.frombuffer(encode(book, [(base, np.arange(len(base)))]),
                                                      dtype=np.uint8))  # fmt: skip
    _faiss().extract_index_ivf(index).nprobe = nprobe
    out = []
    for cos in CALIBRATION_COS:
        src = rng.choice(len(base), size=min(len(base), CALIBRATION_PAIRS), replace=False)
        s = base[src]
        r = rng.standard_normal(s.shape).astype(np.float32)
        r -= (r * s).sum(1, keepdims=True) * s
        r /= np.linalg.norm(r, axis=1, keepdims=True)
        q = (cos * s + math.sqrt(1 - cos * cos) * r).astype(np.float32)
        est, found = index.search(q, K)
        hit = found == src[:, None]
        got = est[hit]
        low = float(got.min()) if got.size else -1.0
        out.append([cos, low - CALIBRATION_SLACK])
    return out


def floor_for(calibration: list[list[float]] | None, threshold: float) -> float:
    """The estimate a candidate must reach at `threshold` (interpolated; the lowest
    calibrated floor below the grid, so a lower threshold only ever lets more through)."""
    if not calibration:
        return -math.inf
    cos = [c for c, _ in calibration]
    low = [f for _, f in calibration]
    low = list(np.minimum.accumulate(low[::-1])[::-1])  # monotone in the cosine
    if threshold <= cos[0]:
        return -math.inf
    return float(np.interp(threshold, cos, low))


def encode(codebook: bytes, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> bytes:
    """Each (vectors, ids) of `chunks` added to a copy of the codebook, serialised."""
    faiss = _faiss()
    index = faiss.deserialize_index(np.frombuffer(codebook, dtype=np.uint8))
    for vectors, ids in chunks:
        for i in range(0, len(vectors), 65536):
            x = unit32(vectors[i : i + 65536])
            index.add_with_ids(x, np.asarray(ids[i : i + 65536], dtype=np.int64))
    return faiss.serialize_index(index).tobytes()


Remap = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def merge_encoded(codebook: bytes, sources: list[tuple[bytes, Remap]]) -> bytes:
    """One index holding the codes of `sources` (indexes encoded with `codebook`), without
    encoding anything again: each source's `remap(ids)` says which of its rows to keep and
    their new ids. Within a list the rows are ordered by id, so the result is the index that
    encoding the rows in id order would give, byte for byte (a test checks).

    Why not FAISS's own `merge_from`: for fast-scan lists it appends packed blocks with
    `add_entries`, which (faiss 1.15) copies every block of the grown list, not only the
    new ones, once a list already holds a non-zero multiple of its block size in rows (2,048
    at 512-d): a buffer overrun. Here every list is packed whole, in our own buffer, and
    added to an empty list (the path that copies exactly its blocks)."""
    faiss = _faiss()
    out = faiss.deserialize_index(np.frombuffer(codebook, dtype=np.uint8))
    ivf = faiss.extract_index_ivf(out)
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    packer = lists.packer
    size, per, block = packer.code_size, packer.nvec, packer.block_size
    held = [faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)) for data, _ in sources]
    inputs = [faiss.downcast_InvertedLists(faiss.extract_index_ivf(i).invlists) for i in held]
    total = 0
    for lst in range(ivf.nlist):
        codes, ids = [], []
        for inv, (_, remap) in zip(inputs, sources, strict=True):
            n = inv.list_size(lst)
            if not n:
                continue
            keep, new_ids = remap(faiss.rev_swig_ptr(inv.get_ids(lst), n).astype(np.int64))
            if not keep.any():
                continue
            blocks = -(-n // per)
            packed = faiss.rev_swig_ptr(inv.get_codes(lst), blocks * block)
            flat = np.empty((blocks * per, size), np.uint8)
            for b in range(blocks):
                packer.unpack_all(faiss.swig_ptr(packed[b * block : (b + 1) * block]),
                                  faiss.swig_ptr(flat[b * per : (b + 1) * per]))  # fmt: skip
            codes.append(flat[:n][keep])
            ids.append(new_ids[keep])
        if not codes:
            continue
        row_ids = np.concatenate(ids)
        order = np.argsort(row_ids, kind="stable")
        n = len(order)
        blocks = -(-n // per)
        flat = np.zeros((blocks * per, size), np.uint8)
        flat[:n] = np.concatenate(codes)[order]
        packed = np.zeros(blocks * block, np.uint8)
        for b in range(blocks):
            packer.pack_all(faiss.swig_ptr(flat[b * per : (b + 1) * per]),
                            faiss.swig_ptr(packed[b * block : (b + 1) * block]))  # fmt: skip
        row_ids = np.ascontiguousarray(row_ids[order])
        lists.add_entries(lst, n, faiss.swig_ptr(row_ids), faiss.swig_ptr(packed))
        total += n
    out.ntotal = total
    return faiss.serialize_index(out).tobytes()


class Searcher:
    """The night's queries, normalised once, searched against run after run.

    Which coarse lists a query probes depends on the codebook alone, so it is computed once
    per codebook (`assign`) and every run encoded with it is scanned with that assignment:
    the assignment (queries x lists dot products, ~4 s for 100k queries at 3,452 lists on
    2 cores) was the bulk of a run's scan, and a night paid it once per run.
    """

    def __init__(self, queries: np.ndarray, threshold: float, nprobe: int) -> None:
        self.raw, self.q = queries, unit32(queries)
        self.threshold, self.nprobe = threshold, nprobe
        self._assigned: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def assign(self, book_id: str, book: bytes) -> tuple[np.ndarray, np.ndarray]:
        """(lists, distances) each query probes under codebook `book_id`, computed once."""
        if book_id not in self._assigned:
            index = _faiss().deserialize_index(np.frombuffer(book, dtype=np.uint8))
            ivf = _faiss().extract_index_ivf(index)  # a view: `index` must outlive it
            dis, lists = ivf.quantizer.search(self.q, min(self.nprobe, ivf.nlist))
            self._assigned[book_id] = (lists, dis)
        return self._assigned[book_id]

    def candidates(
        self, run_index: bytes, assigned: tuple[np.ndarray, np.ndarray], floor: float = -math.inf
    ) -> tuple[np.ndarray, ...]:
        """(query, run row) of the rows of an encoded run worth confirming: in the probed
        lists (`assigned`, from `assign` with the run's codebook), with a PQ estimate above
        `floor` (the codebook's calibrated floor for the threshold). Every such row, not a
        top k: which rows are candidates then depends on the codebook alone, not on how rows
        were grouped into runs. (A fast-scan index has no range search over a given
        assignment, so the top K are searched, and a query whose K-th estimate still clears
        the floor is searched again with 4 K, until the floor cuts its list.) Without a
        calibration, each query's K nearest. Queries go in chunks: the scan's tables grow
        with them."""
        index = _faiss().deserialize_index(np.frombuffer(run_index, dtype=np.uint8))
        lists, dis = assigned
        _faiss().extract_index_ivf(index).nprobe = lists.shape[1]
        qs, rs = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        if not index.ntotal:
            return qs[0], rs[0]
        for i in range(0, len(self.q), SEARCH_CHUNK):
            todo = np.arange(i, min(i + SEARCH_CHUNK, len(self.q)))
            k = K
            while len(todo):
                k = min(k, index.ntotal)
                est, found = index.search_preassigned(self.q[todo], k, lists[todo], dis[todo])
                more = np.zeros(len(todo), bool)
                if math.isfinite(floor) and k < index.ntotal:
                    more = (found[:, -1] >= 0) & (est[:, -1] > floor)
                take = (found >= 0) & ~more[:, None]
                if math.isfinite(floor):
                    take &= est > floor
                qi, kk = np.nonzero(take)
                qs.append(todo[qi])
                rs.append(found[qi, kk].astype(np.int64))
                todo, k = todo[more], 4 * k
        q, r = np.concatenate(qs), np.concatenate(rs)
        order = np.lexsort((r, q))  # by query, then row: the same whatever re-searches ran
        return q[order], r[order]

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
        if not len(vectors) or vectors.shape[1] != self.q.shape[1]:  # nothing comparable
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
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
