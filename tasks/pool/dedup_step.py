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
from schemas.tables import DEDUP_EMB_FILE, DEDUP_INDEX_FILE
from tasks.errors import InfraError
from tasks.io import storage
from tasks.pool.dedup import (
    UnionFind,
    exact_groups,
    perceptual_groups,
    semantic_groups,
    survivors,
)
from tasks.pool.phash import hamming
from tasks.publish.catalog import Catalog

INDEX_FILE = DEDUP_INDEX_FILE  # uid, sha256, phash of the partition's kept samples
EMB_FILE = DEDUP_EMB_FILE  # their fp16 image embeddings, same order (semantic scope)
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
    if n_cand == 0:  # nothing to decide (every row was decided before dedup)
        none = pl.Series([], dtype=pl.String)
        groups = _groups_table([], [], [], [], [])
        return DedupResult(none.alias("duplicate_of"), none.alias("error"), none, groups)
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
        prior_emb = prior.emb
        if n_prior and (prior_emb is None or prior_emb.shape != (n_prior, emb.shape[1])):
            # earlier partitions without comparable embeddings: zero vectors match nothing
            prior_emb = np.zeros((n_prior, emb.shape[1]), np.float16)
        all_emb = np.concatenate([prior_emb, emb]) if n_prior else emb
        if len(all_emb) != n:
            raise ValueError(f"{len(all_emb)} embeddings for {n} rows")
        semantic = semantic_groups(all_emb, cfg.semantic.threshold, seed=seed)
        labels.append(semantic)
    group = _combined(labels, n)
    # the same image with the same caption must tie exactly (the earliest in input order
    # wins): scored in another batch (another sharding, worker count or precision) its
    # score differs in the last bits, so every such copy gets the group's lowest score
    shared = cand.select(
        pl.col("clip_score").cast(pl.Float64).min().over(["sha256", "caption"]).fill_null(np.nan)
    )
    score = np.concatenate([np.full(n_prior, np.inf), shared.to_series().to_numpy()])
    # prior rows come first, so "first" keeps them too; "best_score" sees them as +inf
    is_dup, of = survivors(group, score, "first" if cfg.keep == "first" else "best_score")
    # a published row is never taken back, even when two of them fall into one group
    # (published under other settings, or linked only through a new sample)
    is_dup[:n_prior] = False
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
    groups = _groups_table(of, uids, dup_rows, method, distance)
    sl = slice(n_prior, n)
    return DedupResult(
        pl.Series("duplicate_of", dup_of[sl], pl.String),
        pl.Series("error", code[sl], pl.String),
        pl.Series("error_detail", detail[sl], pl.String),
        groups,
    )


def _groups_table(
    of: np.ndarray | list,
    uids: list[str],
    dup_rows: np.ndarray | list,
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


MODEL_KEYS = ("architecture_sha256", "pretrained", "checkpoint_sha256")  # what the weights are


def prior_partitions(cat: Catalog, partition: str) -> dict[str, dict[str, Any]]:
    """The published partitions of the dataset's pool flow that sort before `partition` and
    hold a dedup index: {partition: {"version", "model", "embeddings"}} (from the catalog).

    Planned with the run: a backfill of an earlier date decides the same way whatever was
    published after it, since later dates never count.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in cat.before(partition):
        entry = cat.entries[name]
        files = entry.get("history_files") or []
        if not entry.get("version") or INDEX_FILE not in files:
            continue
        model = entry.get("model") or {}
        out[name] = {
            "version": entry["version"],
            "model": {k: model.get(k) for k in MODEL_KEYS},
            "embeddings": EMB_FILE in files,
        }
    return out


def read_prior(
    output: str,
    dataset: str,
    planned: dict[str, dict[str, Any]],
    semantic: bool,
    storage_options: dict[str, Any] | None,
    model: dict[str, Any] | None = None,
) -> PriorIndex:
    """Fingerprints (and embeddings) of the kept samples of the earlier partitions `planned`
    (`prior_partitions`), read from exactly the versions planned: versions are immutable, and
    one pruned since the plan fails the run (infrastructure) instead of deciding on other data.

    Embeddings of a partition scored with other weights (architecture, tag, checkpoint) than
    `model` are not comparable: zero vectors stand in, which match nothing.
    """
    frames, embs = [], []
    want = {k: (model or {}).get(k) for k in MODEL_KEYS}
    for name, info in sorted(planned.items()):
        base = storage.join(output, dataset, "pool", name, info["version"])
        try:
            rows = storage.read_parquet(storage.join(base, INDEX_FILE), storage_options)
        except FileNotFoundError as err:
            raise InfraError(
                f"{name}: dedup index of version {info['version']} is gone "
                "(re-published since this run was planned): re-run"
            ) from err
        frames.append(
            rows.select([pl.col(c).cast(t) for c, t in INDEX_SCHEMA.items()]).with_columns(
                pl.lit(name).alias("partition")
            )
        )
        emb = None
        if semantic and info.get("embeddings") and (model is None or info["model"] == want):
            emb = storage.read_npy(storage.join(base, EMB_FILE), storage_options)
            if len(emb) != rows.height:
                raise InfraError(f"{name}: {len(emb)} embeddings for {rows.height} indexed rows")
        embs.append(emb)
    versions = {name: info["version"] for name, info in sorted(planned.items())}
    if not frames:
        return PriorIndex.empty(None)
    table = pl.concat(frames)
    emb_all = None
    if semantic:
        dims = {e.shape[1] for e in embs if e is not None and len(e)}  # an empty one has none
        width = dims.pop() if len(dims) == 1 else None
        if width is not None:  # rows without comparable embeddings: zero vectors
            emb_all = np.concatenate(
                [e if e is not None and e.shape[1] == width
                 else np.zeros((f.height, width), np.float16)
                 for e, f in zip(embs, frames, strict=True)]
            )  # fmt: skip
    return PriorIndex(table, emb_all, versions)
