"""Dedup core against independent brute force: all-pairs distances, a plain-Python union-find.

Inputs are generated here (hashes with planted near pairs and chains, clustered embeddings
with planted copies, "natural-ish" images: gradients + shapes + noise); real photos from
../shared are used when present.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tracemalloc
from itertools import pairwise

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tasks.pool import dedup, phash
from tasks.pool.dedup import (
    UnionFind,
    exact_groups,
    kmeans_labels,
    perceptual_groups,
    semantic_groups,
    survivors,
)
from tasks.pool.phash import (
    hamming,
    near_pairs,
    phash64,
    phash64_batch,
    plan_blocks,
    sha256_hex,
)
from tests.helpers import ROOT, shared_path

# --- independent references ------------------------------------------------------------------


def components(n: int, pairs) -> np.ndarray:
    """Plain-Python union-find: label = smallest member of each component."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def canonical(labels: np.ndarray) -> np.ndarray:
    """Any labelling -> smallest row index of each label (compares partitions)."""
    first: dict[int, int] = {}
    return np.array([first.setdefault(int(g), i) for i, g in enumerate(labels)])


def brute_perceptual(h: np.ndarray, d: int) -> np.ndarray:
    pairs = []
    for i in range(0, len(h), 512):  # row blocks keep the distance matrix small
        dist = np.bitwise_count(h[i : i + 512, None] ^ h[None, :])
        r, c = np.nonzero(dist <= d)
        pairs += [(i + a, b) for a, b in zip(r, c, strict=True) if i + a < b]
    return components(len(h), pairs)


def brute_cosine_pairs(emb: np.ndarray, rows: np.ndarray, threshold: float) -> list:
    x = emb[rows].astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pairs = []
    for i in range(0, len(x), 1024):  # row blocks: never the full n x n matrix
        r, c = np.nonzero(x[i : i + 1024] @ x.T >= threshold)
        pairs += [(rows[i + a], rows[b]) for a, b in zip(r, c, strict=True) if i + a < b]
    return pairs


def permuted_structure_equal(fn, data: np.ndarray, seed: int) -> None:
    """Group structure is the same when rows are shuffled (ids mapped back)."""
    p = np.random.default_rng(seed).permutation(len(data))
    back = np.empty(len(data), dtype=np.int64)
    back[p] = fn(data[p])
    np.testing.assert_array_equal(canonical(back), canonical(fn(data)))


# --- union-find, exact groups, survivors -------------------------------------------------------


def test_union_find_matches_python_reference():
    rng = np.random.default_rng(1)
    n = 3000
    edges = rng.integers(0, n, size=(2, 2500))
    chain = np.arange(100, 400)  # a long chain, unioned in reverse order
    edges = np.concatenate([edges, np.stack([chain[1:], chain[:-1]])[:, ::-1]], axis=1)
    uf = UnionFind(n)
    for part in np.array_split(edges, 7, axis=1):  # several batches, like the callers
        uf.union(part[0], part[1])
    np.testing.assert_array_equal(uf.roots(), components(n, edges.T))


def test_union_find_in_out_buffer(monkeypatch):
    """Parents inside the int64 result (`out`), widened in place by roots(); still usable."""
    monkeypatch.setattr(dedup, "_ROOT_CHUNK", (64, 64))  # many chunks, a partial last one
    rng = np.random.default_rng(4)
    n = 1001
    edges = rng.integers(0, n, size=(2, 700))
    out = np.full(n, -7, dtype=np.int64)
    uf = UnionFind(n, out=out)
    spare = uf.spare()
    assert spare is not None and spare.dtype == np.int32 and len(spare) == n
    spare[:] = -1  # the caller's scratch must not disturb the parents
    for part in np.array_split(edges[:, :500], 3, axis=1):
        uf.union(part[0], part[1])
    got = uf.roots()
    assert got is out and got.dtype == np.int64
    np.testing.assert_array_equal(got, components(n, edges[:, :500].T))
    uf.union(edges[0, 500:], edges[1, 500:])  # unions after roots() go on from the result
    np.testing.assert_array_equal(uf.roots(), components(n, edges.T))
    with pytest.raises(ValueError):
        UnionFind(n, out=np.empty(n, dtype=np.int32))


def test_exact_groups_first_occurrence():
    rng = np.random.default_rng(2)
    keys = [sha256_hex(bytes([int(v)])) for v in rng.integers(0, 50, 400)] + [None, None]
    want = [keys.index(k) if k is not None else i for i, k in enumerate(keys)]
    np.testing.assert_array_equal(exact_groups(keys), want)
    assert sha256_hex(b"abc") == hashlib.sha256(b"abc").hexdigest()


@pytest.mark.parametrize("keep", ["first", "best_score"])
def test_survivors_rule(keep):
    rng = np.random.default_rng(3)
    groups = rng.integers(0, 60, 500) * 7 - 100  # arbitrary integer ids
    scores = rng.integers(0, 5, 500).astype(float)  # many ties
    scores[rng.random(500) < 0.15] = np.nan
    scores[rng.random(500) < 0.03] = -np.inf
    is_dup, dup_of = survivors(groups, scores if keep == "best_score" else None, keep=keep)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g).tolist()
        if keep == "first":
            best = rows[0]
        else:  # highest score, NaN last, ties to the smallest index
            nan = np.isnan(scores)
            best = min(rows, key=lambda i: (nan[i], 0.0 if nan[i] else -scores[i], i))
        assert not is_dup[best] and dup_of[best] == -1
        for i in rows:
            if i != best:
                assert is_dup[i] and dup_of[i] == best
    nulls = [None, 2.0, None, np.nan, -np.inf]
    assert survivors([0, 0, 0, 1, 1], nulls)[1].tolist() == [1, -1, 1, 4, -1]
    with pytest.raises(ValueError):
        survivors([0, 0], None, keep="best_score")


# --- perceptual groups ------------------------------------------------------------------------


def flip(h: np.ndarray, rng: np.random.Generator, n_bits: int) -> np.ndarray:
    """h with n_bits distinct random bits flipped (each row its own bits)."""
    out = h.copy()
    for i in range(len(h)):
        for b in rng.choice(64, n_bits, replace=False):
            out[i] ^= np.uint64(1) << np.uint64(b)
    return out


def planted_hashes(n: int, d: int, seed: int) -> np.ndarray:
    """Random hashes plus copies, near copies at distance 0..d+1, chains and a dense clump."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**64, n, dtype=np.uint64)
    src = rng.choice(n, n // 10, replace=False)
    near = np.concatenate([flip(base[src[i :: d + 2]], rng, i) for i in range(d + 2)])
    a = base[rng.choice(n, 20)]
    b = flip(a, rng, max(d, 1))
    chains = np.concatenate([a, b, flip(b, rng, max(d, 1))])  # a~b, b~c, a!~c (usually)
    # a clump differing only in 12 low bits: big buckets of distinct values at every distance
    clump = (base[0] & ~np.uint64(0xFFF)) | rng.integers(0, 0x1000, 150, dtype=np.uint64)
    h = np.concatenate([base, near, chains, clump, base[:30]])
    return h[rng.permutation(len(h))]


@pytest.mark.parametrize("d", range(7))
def test_perceptual_groups_equal_brute_force(d):
    h = planted_hashes(1200, d, seed=10 + d)
    got = perceptual_groups(h, d)
    np.testing.assert_array_equal(got, brute_perceptual(h, d))
    assert len(np.unique(got)) < len(h)  # the planted pairs did group
    if d >= 1:
        permuted_structure_equal(lambda x: perceptual_groups(x, d), h, seed=d)


def test_perceptual_transitive_chain():
    a = np.uint64(0x0123456789ABCDEF)
    b, c = a ^ np.uint64(0b1111), a ^ np.uint64(0b11111111)  # d(a,b)=4, d(b,c)=4, d(a,c)=8
    far = ~a
    got = perceptual_groups(np.array([c, far, a, b], dtype=np.uint64), 4)
    assert got.tolist() == [0, 1, 0, 0]
    assert perceptual_groups(np.array([c, far, a, b], dtype=np.uint64), 3).tolist() == [0, 1, 2, 3]


def test_perceptual_groups_5000_and_int64_input():
    h = planted_hashes(5000, 4, seed=99)
    got = perceptual_groups(h.view(np.int64), 4)  # signed storage (parquet int64) works too
    np.testing.assert_array_equal(got, brute_perceptual(h, 4))


@pytest.mark.parametrize("d", [0, 1, 3, 4, 6])
def test_perceptual_groups_many_super_buckets(monkeypatch, d):
    """Tiny super-buckets and row chunks (n not a multiple of 8): the counting sort, the
    packed active mask and the chunked root compression all take their multi-chunk paths."""
    monkeypatch.setattr(phash, "_SUPER_ROWS", (16, 16))
    monkeypatch.setattr(phash, "_ROW_CHUNK", (24, 24))
    monkeypatch.setattr(dedup, "_ROOT_CHUNK", (40, 40))
    monkeypatch.setattr(dedup, "_EDGE_FLUSH", (7, 7))
    rng = np.random.default_rng(40 + d)
    h = planted_hashes(900, d, seed=20 + d)
    h = np.concatenate([h, np.repeat(h[:3], 40), h[5:9] ^ np.uint64(1)])  # many copies
    h = h[rng.permutation(len(h))]
    assert len(h) % 8
    np.testing.assert_array_equal(perceptual_groups(h, d), brute_perceptual(h, d))


def test_near_pairs_edges_are_verified_and_span_copies():
    rng = np.random.default_rng(41)
    h = np.concatenate([rng.integers(0, 2**64, 3000, dtype=np.uint64), np.zeros(500, np.uint64)])
    h = h[rng.permutation(len(h))]
    edges = np.concatenate(list(near_pairs(h, 5)), axis=1)
    assert (hamming(h[edges[0]], h[edges[1]]) <= 5).all()
    assert (edges[0] != edges[1]).all()
    zeros = np.flatnonzero(h == 0)
    copy_edges = edges[:, (h[edges[0]] == 0) & (h[edges[1]] == 0)]
    assert copy_edges.shape[1] < 2 * len(zeros)  # a star per value, not all 124,750 pairs
    assert set(copy_edges[0].tolist()) == {zeros[0]}
    assert not list(near_pairs(h[:1], 4))


def test_perceptual_groups_peak_memory_under_2x_input():
    """Issue 10: the call allocates < 2x the uint64 input at its peak (result included)."""
    rng = np.random.default_rng(42)
    n = 1 << 18
    h = rng.integers(0, 2**64, n, dtype=np.uint64)
    dst = rng.choice(n, n // 10, replace=False)
    h[dst] = flip(h[rng.choice(n, n // 10)], rng, 3)
    h[dst[:1000]] = h[0]  # a hash repeated 1,001 times
    tracemalloc.start()
    try:
        got = perceptual_groups(h, 4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got.dtype == np.int64 and (got[dst[:1000]] == 0).all()
    assert peak < 2 * h.nbytes, f"peak {peak / h.nbytes:.2f}x the input"


def test_plan_blocks_cover_64_bits():
    for d in range(9):
        for n in (10, 10**4, 10**6):
            blocks, k = plan_blocks(n, d)
            assert sum(w for _, w in blocks) == 64 and k == len(blocks) - d >= 1
            assert all(s1 == s0 + w0 for (s0, w0), (s1, _) in pairwise(blocks))


# --- semantic groups --------------------------------------------------------------------------


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def at_cosine(x: np.ndarray, cos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors at exactly `cos` from each unit row of x (before the fp16 cast)."""
    z = rng.standard_normal(x.shape)
    z = unit(z - (z * x).sum(1, keepdims=True) * x)
    return cos[:, None] * x + np.sqrt(1 - cos[:, None] ** 2) * z


def planted_embeddings(n: int, dim: int, threshold: float, seed: int) -> np.ndarray:
    """Clustered fp16 embeddings with copies (cos ~0.98), chains and pairs near threshold."""
    rng = np.random.default_rng(seed)
    topics = unit(rng.standard_normal((40, dim)))
    x = unit(topics[rng.integers(0, 40, n)] + 1.2 * unit(rng.standard_normal((n, dim))))
    m = n // 20
    src, dst = rng.choice(n, (2, m), replace=False)  # dst rows become near copies of src
    cos = np.concatenate([
        rng.uniform(0.97, 0.995, m // 2),
        threshold + rng.uniform(-2e-4, 2e-4, m - m // 2),  # inside the float32 margin
    ])  # fmt: skip
    x[dst] = at_cosine(x[src], cos, rng)
    # chains a -> b -> c at 0.965 each: cos(a, c) ~ 0.93 < threshold, one group by transitivity
    a, b, c = rng.choice(np.setdiff1d(np.arange(n), np.r_[src, dst]), (3, m // 10), replace=False)
    x[b] = at_cosine(x[a], np.full(len(a), 0.965), rng)
    x[c] = at_cosine(x[b], np.full(len(a), 0.965), rng)
    return x.astype(np.float16)


def test_semantic_groups_equal_brute_force_within_clusters():
    thr = 0.95
    emb = planted_embeddings(20_000, 512, thr, seed=5)
    labels = kmeans_labels(emb)  # what semantic_groups uses with n_clusters=None
    pairs = []
    for c in np.unique(labels):
        pairs += brute_cosine_pairs(emb, np.flatnonzero(labels == c), thr)
    got = semantic_groups(emb, thr)
    np.testing.assert_array_equal(got, components(len(emb), pairs))
    # SemDeDup's clusters keep near-duplicates together: most planted pairs are found
    all_pairs = {(int(a), int(b)) for a, b in brute_cosine_pairs(emb, np.arange(20_000), thr)}
    found = sum(got[a] == got[b] for a, b in all_pairs)
    assert found >= 0.95 * len(all_pairs) and len(all_pairs) > 500


def test_semantic_one_cluster_equals_full_brute_force():
    thr = 0.95
    emb = planted_embeddings(2000, 512, thr, seed=6)
    want = components(len(emb), brute_cosine_pairs(emb, np.arange(len(emb)), thr))
    np.testing.assert_array_equal(semantic_groups(emb, thr, n_clusters=1), want)
    assert len(np.unique(want)) < len(emb) - 50
    # float32 input, and zero / non-finite rows never link
    f32 = emb.astype(np.float32)
    f32[:3] = 0
    f32[3, 0] = np.nan
    got = semantic_groups(f32, thr, n_clusters=1)
    assert all((got == i).sum() == 1 and got[i] == i for i in range(4))


def test_semantic_permutation_and_seed_determinism():
    emb = planted_embeddings(5000, 256, 0.95, seed=7)
    fn = lambda x: semantic_groups(x, 0.95, n_clusters=20, seed=3)  # noqa: E731
    permuted_structure_equal(fn, emb, seed=1)
    p = np.random.default_rng(2).permutation(len(emb))
    back = np.empty(len(emb), dtype=np.int64)
    back[p] = kmeans_labels(emb[p], 20, seed=3)
    np.testing.assert_array_equal(back, kmeans_labels(emb, 20, seed=3))  # same clusters
    np.testing.assert_array_equal(fn(emb), fn(emb.copy()))


def test_semantic_independent_of_thread_count(tmp_path):
    emb = planted_embeddings(6000, 512, 0.95, seed=8)
    np.save(tmp_path / "emb.npy", emb)
    code = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[1]);"
        "from tasks.pool.dedup import semantic_groups;"
        "e = np.load(sys.argv[2]); np.save(sys.argv[3], semantic_groups(e, 0.95))"
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "one_thread.npy"
    args = [sys.executable, "-c", code, str(ROOT), str(tmp_path / "emb.npy"), str(out)]
    subprocess.run(args, env=env, check=True, timeout=120)
    np.testing.assert_array_equal(np.load(out), semantic_groups(emb, 0.95))


# --- pHash ------------------------------------------------------------------------------------


def natural_image(rng: np.random.Generator, size: int = 256) -> Image.Image:
    """Smooth colour gradients, a few filled shapes and mild noise (not pure noise)."""
    y, x = np.mgrid[0:size, 0:size] / size
    planes = [a * x + b * y + c for a, b, c in rng.uniform(-1, 1, (3, 3))]
    img = Image.fromarray((np.clip(np.stack(planes, -1) * 0.5 + 0.5, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 8)):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(20, size // 2, 2)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=fill)
    noisy = np.asarray(img, dtype=np.int16) + rng.normal(0, 8, (size, size, 3)).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def jpeg50(im: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=50)
    return Image.open(io.BytesIO(buf.getvalue()))


def shrink(im: Image.Image) -> Image.Image:
    return im.resize((round(im.width * 0.6), round(im.height * 0.6)), Image.Resampling.BILINEAR)


def reference_phash(im: Image.Image) -> int:
    """The textbook pHash from its formula (explicit cosine sums), bits row-major, MSB first."""
    px = np.asarray(im.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=float)
    n = np.arange(32)
    dct = np.array(
        [
            [(px * np.outer(np.cos(np.pi * u * (2 * n + 1) / 64), np.cos(np.pi * v * (2 * n + 1) / 64))).sum()  # noqa: E501
             for v in range(8)]
            for u in range(8)
        ]
    )  # fmt: skip
    bits = (dct > np.median(dct)).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def check_robust(hashes: np.ndarray, variants: list[np.ndarray], pair_ok: np.ndarray) -> None:
    """Recall >= 0.9 under each transform; < 0.5% of the other pairs within distance 4."""
    for v in variants:
        assert (hamming(hashes, v) <= 4).mean() >= 0.9
    dist = hamming(hashes[:, None], hashes[None, :])
    iu = np.triu_indices(len(hashes), 1)
    far = pair_ok[iu]
    assert (dist[iu][far] <= 4).mean() < 0.005


def test_phash_matches_formula_and_batch():
    rng = np.random.default_rng(11)
    ims = [natural_image(rng) for _ in range(12)] + [Image.new("RGB", (40, 30), (9, 9, 9))]
    got = phash64_batch(ims)
    assert got.dtype == np.uint64
    for im, h in zip(ims, got, strict=True):
        assert phash64(im) == int(h) == phash64(im.copy())
        if im.getextrema()[0][0] != im.getextrema()[0][1]:  # flat images: see module doc
            assert int(h) == reference_phash(im)
    assert phash64_batch([]).shape == (0,)


def test_phash_matches_imagehash():
    imagehash = pytest.importorskip("imagehash")
    rng = np.random.default_rng(12)
    for im in [natural_image(rng) for _ in range(20)]:
        assert phash64(im) == int(str(imagehash.phash(im)), 16)


def test_phash_robust_on_generated_images():
    rng = np.random.default_rng(13)
    ims = [natural_image(rng) for _ in range(150)]
    h = phash64_batch(ims)
    variants = [phash64_batch([f(im) for im in ims]) for f in (jpeg50, shrink)]
    check_robust(h, variants, np.ones((len(h), len(h)), dtype=bool))


def read_photos(path) -> tuple[list[str], list[Image.Image]]:
    """(keys, images) of a WebDataset tar's .jpg members, read in memory."""
    keys, ims = [], []
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            if m.name.endswith(".jpg"):
                keys.append(m.name.rsplit(".", 1)[0])
                ims.append(Image.open(io.BytesIO(tar.extractfile(m).read())))
    return keys, ims


@pytest.mark.shared
def test_phash_robust_on_real_photos():
    shared_path("data", "images", "flickr8k-small-000000.tar")
    keys, ims = [], []
    for name in ("small-000000", "small-000001", "orig-000000", "orig-000001"):
        k, i = read_photos(shared_path("data", "images", f"flickr8k-{name}.tar"))
        keys += k
        ims += i
    h = phash64_batch(ims)
    orig = np.arange(len(ims) - 200, len(ims))  # the 200 full-size photos
    sub = [ims[i] for i in orig]
    variants = [phash64_batch([f(im) for im in sub]) for f in (jpeg50, shrink)]
    for v in variants:
        assert (hamming(h[orig], v) <= 4).mean() >= 0.9
    k = np.array(keys)
    check_robust(h, [], k[:, None] != k[None, :])  # small/orig of one photo are true copies
