"""The dataset-scope dedup index: what a night queries instead of loading its history.

A night with `pool.dedup.scope: dataset` must find, for each of its own candidates, the kept
samples of earlier published partitions that it copies: the same bytes (sha256), a pHash
within the configured Hamming distance, or an image embedding with cosine >= the threshold.
Loading every earlier partition's fingerprints and embeddings costs memory and time that
grow with the history; this package makes a night *query* an index with its own samples.

- **Segments** (`runs.Segment`): every published version keeps `dedup/index.parquet` (uid,
  sha256, phash of its kept samples) and `dedup/emb.npy` (their fp16 embeddings) inside its
  own version folder, so a segment commits, and is replaced, with its partition.
- **Runs** (`runs.Run`): compaction (`compact.py`) copies segments into immutable runs under
  `{dataset}/pool/_dedup/runs/`: keys sorted for exact lookups, pHash blocks sorted for
  multi-index hashing (exact: no pair within the distance is missed), and a FAISS IVF-PQ index
  of the embeddings encoded with one codebook per dataset (`ann.py`). `_dedup/CURRENT.json`
  lists the runs and which partition version each covers; compaction writes new runs, then
  swaps that one pointer (compare-and-swap), so a kill at any point leaves the old pointer.
- **Queries** (`query.py`): a night reads the catalog (which versions are published before it),
  the pointer, and each run that covers one of them (one at a time, so memory stays bounded
  by a run), plus the segments no run covers yet (published since the last compaction, or
  re-published). Rows of a run whose partition was re-published are ignored.

Exact and perceptual lookups are exact. Semantic lookups take each run's k nearest rows by
the PQ codes and confirm them with the float64 cosine of the stored fp16 embeddings; their
recall against brute force is measured in `bench/bench_history.py`.
"""
