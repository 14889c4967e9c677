"""The select stage's deduplication step: which candidate is a copy of which survivor.

Candidates are the rows still undecided after quarantine, the uid rule and the caption and
image rules, in input order. Three methods link rows (`tasks.pool.dedup`): identical sha256
(exact), pHash Hamming distance (perceptual), cosine of CLIP image embeddings within k-means
clusters (semantic, SemDeDup). One union-find takes every link, so groups are the transitive
closure across methods; each group keeps one survivor (`keep`), and every other member
becomes `duplicate` with `duplicate_of` = the survivor's uid and the error code of the
strongest method that ties it to the survivor directly (exact > perceptual > semantic; a
member tied only through a chain is `duplicate:semantic` or `:perceptual` after its own
group label).

With `scope: dataset` the rows published by earlier partitions (`PriorIndex`, read from each
partition's committed `dedup/` files) come first and always survive: what was published on
Monday is never taken back by Tuesday's run, and Tuesday's copy of it is the duplicate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from schemas.config import DedupConfig
from tasks.io import storage
from tasks.pool.dedup import (
    UnionFind,
    exact_groups,
    perceptual_groups,
    semantic_groups,
    survivors,
)
from tasks.pool.phash import hamming
from tasks.publish.manifest import partitions, read_published

INDEX_FILE = "dedup/index.parquet"  # uid, sha256, phash of the partition's kept samples
EMB_FILE = "dedup/emb.npy"  # their fp16 image embeddings, same order (semantic scope)
SCORE_DECIMALS = 4  # "best_score" compares clip scores at this precision
INDEX_SCHEMA = {"uid": pl.String, "sha256": pl.String, "phash": pl.UInt64}


@dataclass
class PriorIndex:
    """Kept samples of earlier published partitions: fingerprints, embeddings, and which
    partition version each came from (recorded in the manifest's lineage)."""

    rows: pl.DataFrame  # INDEX_SCHEMA + partition
    emb: np.ndarray | None  # (rows, d) fp16, or None when semantic dedup is off
    versions: dict[str, str]  # partition -> published version read

    @staticmethod
    def empty(dim: int | None = None) -> PriorIndex:
        schema = {**INDEX_SCHEMA, "partition": pl.String}
        emb = None if dim is None else np.zeros((0, dim), np.float16)
        return PriorIndex(pl.DataFrame(schema=schema), emb, {})


@dataclass
class DedupResult:
    """Per candidate row (in the order given): survivor uid and reason, null for survivors."""

    duplicate_of: pl.Series
    code: pl.Series
    detail: pl.Series
    groups: pl.DataFrame  # every multi-member group: group, uid, survivor, method, distance


def _combined(labels: list[np.ndarray], n: int) -> np.ndarray:
    """One group id per row: the transitive closure of every method's groups."""
    uf = UnionFind(n)
    for lab in labels:
        rows = np.arange(n, dtype=np.int64)
        moved = lab != rows
        if moved.any():
            uf.union(rows[moved], lab[moved])
    return uf.roots()


def deduplicate(
    cand: pl.DataFrame,
    emb: np.ndarray | None,
    cfg: DedupConfig,
    prior: PriorIndex | None = None,
    seed: int = 0,
) -> DedupResult:
    """Decide duplicates among `cand` (uid, sha256, phash, clip_score; input order).

    `emb` holds the candidates' image embeddings (row i = cand row i) when semantic dedup is
    on. Prior rows (earlier partitions) join the grouping ahead of the candidates and win
    every group they are in.
    """
    prior = prior or PriorIndex.empty()
    n_prior, n_cand = prior.rows.height, cand.height
    n = n_prior + n_cand
    uids = prior.rows["uid"].to_list() + cand["uid"].to_list()
    sha = prior.rows["sha256"].to_list() + cand["sha256"].to_list()
    ph_series = pl.concat([prior.rows["phash"], cand["phash"].cast(pl.UInt64)])
    known = ph_series.is_not_null().to_numpy()
    ph = ph_series.fill_null(0).to_numpy().astype(np.uint64)  # no float detour: exact bits
    labels: list[np.ndarray] = []
    if cfg.exact:
        labels.append(exact_groups(sha))
    perceptual = np.arange(n)
    if cfg.perceptual is not None:
        rows = np.flatnonzero(known)
        if len(rows):
            perceptual[rows] = rows[perceptual_groups(ph[rows], cfg.perceptual.max_distance)]
        labels.append(perceptual)
    semantic = np.arange(n)
    all_emb = None
    if cfg.semantic is not None:
        if emb is None:
            raise ValueError("semantic dedup needs the candidates' embeddings")
        parts = [prior.emb] if prior.emb is not None and n_prior else []
        all_emb = np.concatenate([*parts, emb]) if parts else emb
        if len(all_emb) != n:
            raise ValueError(f"{len(all_emb)} embeddings for {n} rows")
        semantic = semantic_groups(all_emb, cfg.semantic.threshold, seed=seed)
        labels.append(semantic)
    group = _combined(labels, n)
    # scores rounded to SCORE_DECIMALS: the same image scored in another batch (another
    # sharding or worker count) differs in the last float bits, and must still tie (the
    # earliest copy in input order wins), or the survivor would depend on the batching
    clip = cand["clip_score"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    score = np.concatenate([np.full(n_prior, np.inf), np.round(clip, SCORE_DECIMALS)])
    # prior rows come first, so "first" keeps them too; "best_score" sees them as +inf
    is_dup, of = survivors(group, score, "first" if cfg.keep == "first" else "best_score")
    dup_rows = np.flatnonzero(is_dup)
    method, distance = [], []
    for i in dup_rows:
        j = int(of[i])
        if cfg.exact and sha[i] is not None and sha[i] == sha[j]:
            method.append("exact")
            distance.append(0.0)
        elif cfg.perceptual is not None and perceptual[i] == perceptual[j]:
            method.append("perceptual")
            distance.append(float(hamming(ph[i], ph[j])))
        else:  # semantic, directly or through a chain that needed it (exact implies perceptual)
            method.append("semantic")
            a = all_emb[i].astype(np.float64) if all_emb is not None else np.zeros(1)
            b = all_emb[j].astype(np.float64) if all_emb is not None else np.zeros(1)
            norm = float(np.linalg.norm(a) * np.linalg.norm(b))
            distance.append(float(a @ b) / norm if norm > 0 else float("nan"))
    dup_of: list[str | None] = [None] * n
    code: list[str | None] = [None] * n
    detail: list[str | None] = [None] * n
    for i, m, d in zip(dup_rows, method, distance, strict=True):
        j = int(of[i])
        where = f" (published in {prior.rows['partition'][j]})" if j < n_prior else ""
        dup_of[i] = uids[j]
        code[i] = f"duplicate:{m}"
        measure = {"exact": "same image bytes", "perceptual": f"pHash distance {d:g}"}.get(
            m, f"cosine {d:.4f}"
        )
        detail[i] = f"{measure} to {uids[j]}{where}"
    groups = _groups_table(group, is_dup, of, uids, dup_rows, method, distance)
    if n_prior and bool(is_dup[:n_prior].any()):
        raise AssertionError("a prior (published) sample was marked duplicate")  # by design never
    sl = slice(n_prior, n)
    return DedupResult(
        pl.Series("duplicate_of", dup_of[sl], pl.String),
        pl.Series("error", code[sl], pl.String),
        pl.Series("error_detail", detail[sl], pl.String),
        groups,
    )


def _groups_table(
    group: np.ndarray,
    is_dup: np.ndarray,
    of: np.ndarray,
    uids: list[str],
    dup_rows: np.ndarray,
    method: list[str],
    distance: list[float],
) -> pl.DataFrame:
    """Members of every group with a duplicate, survivor first: what the report pictures."""
    schema = {
        "group": pl.String,
        "uid": pl.String,
        "survivor": pl.Boolean,
        "method": pl.String,
        "distance": pl.Float64,
    }
    if not len(dup_rows):
        return pl.DataFrame(schema=schema)
    rows: list[dict[str, Any]] = []
    for i, m, d in zip(dup_rows, method, distance, strict=True):
        rows.append(
            {
                "group": uids[int(of[i])],
                "uid": uids[i],
                "survivor": False,
                "method": m,
                "distance": d,
            }
        )
    for j in sorted({int(of[i]) for i in dup_rows}):
        rows.append(
            {"group": uids[j], "uid": uids[j], "survivor": True, "method": None, "distance": None}
        )
    del group, is_dup
    return pl.DataFrame(rows, schema=schema).sort(
        ["group", "survivor", "uid"], descending=[False, True, False]
    )


def index_table(kept: pl.DataFrame) -> pl.DataFrame:
    """What a published partition contributes to later partitions' dataset-scope dedup."""
    return kept.select([pl.col(c).cast(t) for c, t in INDEX_SCHEMA.items()])


def embedding_reader(
    files: dict[str, str], storage_options: dict[str, Any] | None
) -> Callable[[pl.DataFrame], np.ndarray]:
    """`rows -> (len(rows), d) fp16`: the cached image embeddings of score rows, reading each
    shard's file once (memory: the rows asked for, plus one shard's file at a time)."""

    def take(rows: pl.DataFrame) -> np.ndarray:
        out: np.ndarray | None = None
        indexed = rows.select("source", "emb_row").with_row_index("_i")
        for (source,), part in indexed.group_by("source", maintain_order=True):
            if part["emb_row"].null_count():
                raise ValueError(f"{source}: rows without an embedding cannot be compared")
            arr = storage.read_npy(files[str(source)], storage_options)
            if out is None:
                out = np.zeros((rows.height, arr.shape[1]), np.float16)
            out[part["_i"].to_numpy()] = arr[part["emb_row"].to_numpy()]
        return out if out is not None else np.zeros((0, 0), np.float16)

    return take


def read_prior(
    output: str,
    dataset: str,
    partition: str,
    semantic: bool,
    storage_options: dict[str, Any] | None,
    model: Any = None,
) -> PriorIndex:
    """Fingerprints (and embeddings) of the kept samples of every published partition of the
    dataset's pool flow that sorts before `partition`, as their published versions hold them.

    A partition published without a dedup index (dedup was off then) contributes nothing:
    its samples were never fingerprinted. Later partitions never count, so a backfill of an
    earlier date decides the same way whatever was published after it. Embeddings of a
    partition scored by another model than `model` are not comparable: zero vectors stand in.
    """
    frames, embs, versions = [], [], {}
    dim: int | None = None
    for name in partitions(output, dataset, "pool", storage_options):
        if name >= partition:
            continue
        published = read_published(storage.join(output, dataset, "pool", name), storage_options)
        if published is None or not published.has(INDEX_FILE):
            continue
        rows = storage.read_parquet(published.url(INDEX_FILE), storage_options)
        frames.append(
            rows.select([pl.col(c).cast(t) for c, t in INDEX_SCHEMA.items()]).with_columns(
                pl.lit(name).alias("partition")
            )
        )
        versions[name] = str(published.manifest.get("version"))
        if semantic:
            emb = None
            same_model = model is None or published.manifest.get("model") == model
            if same_model and published.has(EMB_FILE):
                emb = storage.read_npy(published.url(EMB_FILE), storage_options)
            embs.append(emb if emb is not None and len(emb) == rows.height else None)
            if embs[-1] is not None:
                dim = embs[-1].shape[1]
    if not frames:
        return PriorIndex.empty(dim if semantic else None)
    table = pl.concat(frames)
    emb_all = None
    if semantic:
        # a partition without embeddings gets zero vectors: cosine 0, never a semantic match
        width = dim or 1
        emb_all = np.concatenate(
            [e if e is not None else np.zeros((f.height, width), np.float16)
             for e, f in zip(embs, frames, strict=True)]
        )  # fmt: skip
    return PriorIndex(table, emb_all, versions)
