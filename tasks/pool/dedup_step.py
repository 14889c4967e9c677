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

With `scope: dataset` the earlier published rows that candidates copy (`Matches`, found by
querying the dataset's dedup index, `tasks.dedup_index`) come first and always survive: what
was published on Monday is never taken back by Tuesday's run, and Tuesday's copy of it is the
duplicate. Within the night the groups are as before; across nights each candidate is linked
to the earlier rows the index finds (exact and perceptual: all of them; semantic: those the
ANN index proposes, confirmed by the cosine).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from schemas.config import DedupConfig
from schemas.tables import DEDUP_EMB_FILE, DEDUP_INDEX_FILE
from tasks.dedup_index.query import Matches
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


def _with_history(within: np.ndarray, n_prior: int, cross: tuple[np.ndarray, ...]) -> np.ndarray:
    """Groups over earlier rows + candidates: the candidates' own groups (`within`, ids into
    the candidates), joined by the links (candidate, earlier row) found in the index."""
    n_cand = len(within)
    uf = UnionFind(n_prior + n_cand)
    rows = np.arange(n_cand, dtype=np.int64)
    moved = within != rows
    if moved.any():
        uf.union(rows[moved] + n_prior, within[moved] + n_prior)
    ci, ri = cross[0], cross[1]
    if len(ci):
        uf.union(ri, ci + n_prior)
    return uf.roots()


def deduplicate(
    cand: pl.DataFrame,
    emb: np.ndarray | None,
    cfg: DedupConfig,
    prior: Matches | None = None,
    seed: int = 0,
) -> DedupResult:
    """Decide duplicates among `cand` (uid, sha256, phash, clip_score; input order).

    `emb` holds the candidates' image embeddings (row i = cand row i) when semantic dedup is
    on. `prior` (dataset scope) holds the earlier published rows the candidates copy, as the
    index found them (`tasks.dedup_index`): they join the grouping ahead of the candidates
    and win every group they are in.
    """
    prior = prior or Matches.empty()
    n_prior, n_cand = prior.rows.height, cand.height
    if n_cand == 0:  # nothing to decide (every row was decided before dedup)
        none = pl.Series([], dtype=pl.String)
        groups = _groups_table([], [], [], [], [])
        return DedupResult(none.alias("duplicate_of"), none.alias("error"), none, groups)
    n = n_prior + n_cand
    uids = prior.rows["uid"].to_list() + cand["uid"].to_list()
    sha = prior.rows["sha256"].to_list() + cand["sha256"].to_list()
    ph_series = pl.concat([prior.rows["phash"], cand["phash"].cast(pl.UInt64)])
    ph = ph_series.fill_null(0).to_numpy().astype(np.uint64)  # no float detour: exact bits
    labels: list[np.ndarray] = []
    if cfg.exact:
        labels.append(_with_history(exact_groups(cand["sha256"].to_list()), n_prior,
                                    prior.links["exact"]))  # fmt: skip
    perceptual = np.arange(n)
    if cfg.perceptual is not None:
        own = np.arange(n_cand)
        cph = cand["phash"].cast(pl.UInt64)
        rows = np.flatnonzero(cph.is_not_null().to_numpy())
        if len(rows):
            vals = cph.fill_null(0).to_numpy()[rows]
            own[rows] = rows[perceptual_groups(vals, cfg.perceptual.max_distance)]
        perceptual = _with_history(own, n_prior, prior.links["perceptual"])
        labels.append(perceptual)
    all_emb = None
    if cfg.semantic is not None:
        if emb is None:
            raise ValueError("semantic dedup needs the candidates' embeddings")
        if len(emb) != n_cand:
            raise ValueError(f"{len(emb)} embeddings for {n_cand} rows")
        own = semantic_groups(emb, cfg.semantic.threshold, seed=seed)
        labels.append(_with_history(own, n_prior, prior.links["semantic"]))
        prior_emb = prior.emb
        if n_prior and (prior_emb is None or prior_emb.shape != (n_prior, emb.shape[1])):
            prior_emb = np.zeros((n_prior, emb.shape[1]), np.float16)  # match nothing
        all_emb = np.concatenate([prior_emb, emb]) if n_prior else emb
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


EMBEDDING_CACHE_BYTES = 2 << 30  # shard embedding files a run keeps read (least recent go)


def embedding_reader(
    files: dict[str, str],
    storage_options: dict[str, Any] | None,
    cache_bytes: int = EMBEDDING_CACHE_BYTES,
) -> Callable[[pl.DataFrame], np.ndarray]:
    """`rows -> (len(rows), d) fp16`: the cached image embeddings of score rows.

    One reader serves a whole run (semantic dedup, heads, the dedup index written at
    publish): each shard's file is read once and kept while the kept files stay under
    `cache_bytes` (the least recently used go first), so a run reads each file once instead
    of once per use; beyond that, memory is the rows asked for plus the kept files.
    """
    kept: dict[str, np.ndarray] = {}

    def shard(source: str) -> np.ndarray:
        if source in kept:
            kept[source] = kept.pop(source)  # most recently used last
            return kept[source]
        arr = storage.read_npy(files[source], storage_options)
        kept[source] = arr
        while len(kept) > 1 and sum(a.nbytes for a in kept.values()) > cache_bytes:
            kept.pop(next(iter(kept)))
        return arr

    def take(rows: pl.DataFrame) -> np.ndarray:
        out: np.ndarray | None = None
        indexed = rows.select("source", "emb_row").with_row_index("_i")
        for (source,), part in indexed.group_by("source", maintain_order=True):
            if part["emb_row"].null_count():
                raise ValueError(f"{source}: rows without an embedding cannot be compared")
            arr = shard(str(source))
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
