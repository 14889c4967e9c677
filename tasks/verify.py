"""Check a published partition (`curate verify`) and summarise it (`curate report`).

A training job trusts a partition because `_SUCCESS` is there and its manifest names the
published version; verification re-derives that trust from the bytes: every output in the
manifest has its recorded size and sha256, no file in the published version's folder is
unlisted, the tables' counts add up, and every shard's tar members match its index (read as
a tar stream, never extracted). Other version folders (the one the last commit replaced,
an unpublished or held one) are not part of the published partition and are not checked.
Problems are returned as sentences, never raised, so one bad file does not hide the others.
"""

from __future__ import annotations

import logging
import posixpath
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import polars as pl

from schemas.tables import IMAGE_EXTS, STATUSES, VIDEO_STATUSES
from tasks.io import storage
from tasks.io.tars import walk_tar
from tasks.publish.manifest import (
    MANIFEST,
    ROOT_FILES,
    SUCCESS,
    VERSION_PREFIX,
    Published,
    read_published,
)

logger = logging.getLogger(__name__)

HASH_WORKERS = 8
EXAMPLES = 3  # keys quoted per problem
VIDEO_EXTS = ("mp4", "json", "jpg")


def _ex(items: set[str] | list[str]) -> str:
    return ", ".join(sorted(items)[:EXAMPLES])


def _guard(name: str, check: Callable[[], list[str]]) -> list[str]:
    """Run one check; an unreadable file becomes a problem, not an exception."""
    try:
        return check()
    except Exception as err:
        logger.debug("check %s failed", name, exc_info=True)
        return [f"{name}: cannot check ({type(err).__name__}: {err})"]


def _not_published(uri: str, so: dict | None) -> str | None:
    try:
        if storage.exists(storage.join(uri, SUCCESS), so):
            return None
        return f"not published: no {SUCCESS} at {uri}"
    except Exception as err:
        return f"not published: cannot read {uri} ({type(err).__name__}: {err})"


# ---------------------------------------------------------------- files and checksums


def _check_output(uri: str, entry: Any, so: dict | None) -> list[str]:
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        return [f"manifest: malformed output entry {entry!r}"]
    rel = entry["path"]
    if rel.startswith("/") or ".." in rel.split("/"):
        return [f"manifest: output path {rel!r} escapes the partition"]
    fs, path = storage.get_fs(storage.join(uri, rel), so)
    if not fs.exists(path):
        return [f"missing file: {rel} (listed in manifest)"]
    size = int(fs.info(path).get("size") or 0)
    if size != entry.get("bytes"):
        return [f"size mismatch: {rel} has {size} bytes, manifest says {entry.get('bytes')}"]
    digest = storage.sha256_file(storage.join(uri, rel), so)
    if digest != entry.get("sha256"):
        return [f"sha256 mismatch: {rel} is {digest}, manifest says {entry.get('sha256')}"]
    return []


def _present(p: Published, so: dict | None) -> set[str]:
    """Files of the published version, relative to the partition folder.

    A versioned partition's files are those in its version folder; one published before
    versioning has its files at the root, beside other versions' folders and the pointer.
    """
    fs, root = storage.get_fs(p.uri, so)
    root = root.rstrip("/")
    base = storage.get_fs(p.base, so)[1].rstrip("/")
    found = {path[len(root) + 1 :] for path in fs.find(base)}
    if p.version:
        return found
    return {f for f in found if f not in ROOT_FILES and not f.startswith(VERSION_PREFIX)}


def _check_files(p: Published, so: dict | None) -> list[str]:
    outputs = p.manifest.get("outputs")
    if not isinstance(outputs, list):
        return ["manifest: 'outputs' is missing or not a list"]
    with ThreadPoolExecutor(HASH_WORKERS) as pool:
        found = pool.map(lambda e: _guard("outputs", lambda: _check_output(p.uri, e, so)), outputs)
        problems = [f for fs in found for f in fs]
    listed = {e.get("path") for e in outputs if isinstance(e, dict)}
    unlisted = _present(p, so) - listed
    problems += [f"unlisted file: {rel} (not in manifest outputs)" for rel in sorted(unlisted)]
    return problems


# ---------------------------------------------------------------- shards


def tar_keys(url: str, so: dict | None) -> dict[str, list[str]]:
    """{key: [extensions]} of a tar's regular members, split as WebDataset does (first dot)."""
    keys: dict[str, list[str]] = defaultdict(list)
    for key, ext, _ in walk_tar(url, so, read=False):
        keys[key].append(ext)
    return dict(keys)


def _shard_names(uri: str, so: dict | None) -> list[str]:
    names = [posixpath.basename(u) for u in storage.listdir(storage.join(uri, "shards"), so)]
    return sorted(n for n in names if n.endswith(".tar"))


def _check_tar_vs_index(uri: str, tar: str, index: pl.DataFrame, so: dict | None) -> list[str]:
    """Keys in the tar == out_keys of its index; each key has txt, json and its image."""
    keys = tar_keys(storage.join(uri, "shards", tar), so)
    idx_keys = index["out_key"].to_list()
    problems = []
    if len(set(idx_keys)) != len(idx_keys):
        problems.append(f"shards/{tar}: index has duplicate out_keys")
    if missing := set(idx_keys) - set(keys):
        problems.append(f"shards/{tar}: {len(missing)} index keys not in tar (e.g. {_ex(missing)})")
    if extra := set(keys) - set(idx_keys):
        problems.append(f"shards/{tar}: {len(extra)} tar keys not in index (e.g. {_ex(extra)})")
    exts = dict(zip(idx_keys, index["image_ext"].to_list(), strict=True))
    bad = set()
    for key, members in keys.items():
        img = (exts.get(key) or "").lstrip(".")
        if sorted(members) != sorted(["txt", "json", img]) or img not in IMAGE_EXTS:
            bad.add(key)
    if bad:
        problems.append(
            f"shards/{tar}: {len(bad)} keys without exactly .txt, .json and their image "
            f"(e.g. {_ex(bad)})"
        )
    return problems


def _check_pool_shards(uri: str, kept: int, samples: pl.DataFrame, so: dict | None) -> list[str]:
    sizes = storage.read_json(storage.join(uri, "shards", "sizes.json"), so)
    tars = _shard_names(uri, so)
    problems = []
    if set(sizes) != set(tars):
        problems.append(f"shards/sizes.json lists {sorted(sizes)}, shards/ holds {tars}")
    rows, out_keys = 0, set()
    for tar in tars:
        index = storage.read_parquet(storage.join(uri, "shards", tar[:-4] + ".parquet"), so)
        rows += index.height
        out_keys |= set(index["out_key"].to_list())
        if tar in sizes and int(sizes[tar]) != index.height:
            problems.append(f"shards/{tar}: sizes.json says {sizes[tar]}, index has {index.height}")
        problems += _guard(
            f"shards/{tar}", lambda t=tar, i=index: _check_tar_vs_index(uri, t, i, so)
        )
    total = sum(int(v) for v in sizes.values())
    if not kept == total == rows:
        problems.append(f"kept {kept} != sum of sizes.json {total} != index rows {rows}")
    kept_keys = set(samples.filter(pl.col("status").cast(pl.String) == "kept")["out_key"])
    if kept_keys != out_keys:
        diff = kept_keys ^ out_keys
        problems.append(f"kept samples and shard indexes differ on {len(diff)} keys ({_ex(diff)})")
    return problems


# ---------------------------------------------------------------- counts per flow


def _check_status_counts(name: str, df: pl.DataFrame, counts: dict, statuses: Any) -> list[str]:
    problems = []
    total = sum(int(counts.get(s, 0)) for s in statuses)
    if total != int(counts.get("input", -1)):
        problems.append(f"stats.json: statuses sum to {total}, input is {counts.get('input')}")
    if df.height != int(counts.get("input", -1)):
        problems.append(f"{name}: {df.height} rows, stats.json input is {counts.get('input')}")
    got = dict(df.group_by(pl.col("status").cast(pl.String)).len().iter_rows())
    for s in statuses:
        if int(got.get(s, 0)) != int(counts.get(s, 0)):
            problems.append(f"{name}: {got.get(s, 0)} rows {s}, stats.json says {counts.get(s)}")
    return problems


def _check_pool(uri: str, stats: dict, so: dict | None) -> list[str]:
    counts = stats.get("counts") or {}
    samples = storage.read_parquet(storage.join(uri, "samples.parquet"), so)
    problems = _check_status_counts("samples.parquet", samples, counts, STATUSES)
    kept = int(counts.get("kept", 0))
    problems += _guard("dedup", lambda: _check_dedup_index(uri, samples, so))
    return problems + _guard("shards", lambda: _check_pool_shards(uri, kept, samples, so))


def _check_dedup_index(uri: str, samples: pl.DataFrame, so: dict | None) -> list[str]:
    """What later partitions dedup against must be exactly this version's kept samples."""
    index_url = storage.join(uri, "dedup", "index.parquet")
    if not storage.exists(index_url, so):
        return []
    index = storage.read_parquet(index_url, so)
    kept = samples.filter(pl.col("status").cast(pl.String) == "kept")
    problems = []
    if index["uid"].to_list() != kept["uid"].to_list():
        problems.append(f"dedup/index.parquet: {index.height} rows are not the {kept.height} kept")
    elif index["sha256"].to_list() != kept["sha256"].to_list():
        problems.append("dedup/index.parquet: sha256 differs from samples.parquet")
    emb_url = storage.join(uri, "dedup", "emb.npy")
    if storage.exists(emb_url, so) and len(storage.read_npy(emb_url, so)) != index.height:
        problems.append(f"dedup/emb.npy: not one embedding per indexed row ({index.height})")
    return problems


def _check_video(uri: str, stats: dict, so: dict | None) -> list[str]:
    counts = stats.get("counts") or {}
    videos = storage.read_parquet(storage.join(uri, "videos.parquet"), so)
    statuses = tuple(s for s in VIDEO_STATUSES if s in counts or s in ("ok", "quarantined"))
    problems = _check_status_counts("videos.parquet", videos, counts, statuses)
    events = storage.read_parquet(storage.join(uri, "events.parquet"), so)
    if "status" in events.columns:  # events whose clip could not be cut have no members
        events = events.filter(pl.col("status").cast(pl.String) == "ok")
    clips = set()
    for tar in _shard_names(uri, so):
        keys = tar_keys(storage.join(uri, "shards", tar), so)
        clips |= {(tar, k) for k, exts in keys.items() if "mp4" in exts}
        if bad := {k for k, exts in keys.items() if sorted(exts) != sorted(VIDEO_EXTS)}:
            problems.append(f"shards/{tar}: {len(bad)} keys without .mp4, .json, .jpg ({_ex(bad)})")
    if events.height != len(clips):
        problems.append(f"events.parquet: {events.height} rows, shards hold {len(clips)} .mp4")
    pairs = {(posixpath.basename(s or ""), k) for s, k in events.select("shard", "key").iter_rows()}
    if pairs != clips:
        problems.append("events.parquet (shard, key) pairs differ from the .mp4 members")
    sizes_url = storage.join(uri, "shards", "sizes.json")
    if storage.exists(sizes_url, so):
        total = sum(int(v) for v in storage.read_json(sizes_url, so).values())
        if total != events.height:
            problems.append(
                f"shards/sizes.json sums to {total}, events.parquet has {events.height}"
            )
    clips_stat = stats.get("clips", stats.get("events"))  # older partitions: every event
    if clips_stat is not None and int(clips_stat) != events.height:
        problems.append(f"stats.json: {clips_stat} clips, events.parquet {events.height}")
    return problems


def verify_partition(uri: str, storage_options: dict | None = None) -> list[str]:
    """Every problem found in the partition at `uri`; an empty list means it checks out."""
    so = storage_options
    if unpublished := _not_published(uri, so):
        return [unpublished]
    published = read_published(uri, so)
    if published is None:
        return [f"cannot read {MANIFEST} at {uri}"]
    try:
        stats = storage.read_json(published.url("stats.json"), so)
    except Exception as err:
        return [f"cannot read stats.json: {type(err).__name__}: {err}"]
    manifest, base = published.manifest, published.base
    problems = _guard("files", lambda: _check_files(published, so))
    for field in ("flow", "dataset", "partition"):
        if manifest.get(field) != stats.get(field):
            problems.append(
                f"manifest {field} {manifest.get(field)!r} != stats {stats.get(field)!r}"
            )
    flow = manifest.get("flow")
    if flow == "pool":
        problems += _guard("pool", lambda: _check_pool(base, stats, so))
    elif flow == "video":
        problems += _guard("video", lambda: _check_video(base, stats, so))
    else:
        problems.append(f"manifest: unknown flow {flow!r}")
    return problems


def verify_dataset(uri: str, storage_options: dict | None = None) -> list[str]:
    """Problems of a dataset's shared bookkeeping: each flow's catalog must equal what the
    manifests say, and the pool's dedup index must be exactly the segments it covers.
    (Each partition is checked by `verify_partition`.)"""
    from tasks.dedup_index.verify import verify_index
    from tasks.publish.catalog import read_catalog, rebuild

    so, problems = storage_options, []
    for flow in ("pool", "video"):
        folder = storage.join(uri, flow)
        if not storage.exists(folder, so):
            continue
        have, want = read_catalog(folder, so).entries, rebuild(folder, so).entries
        for name in sorted(set(have) | set(want)):
            if have.get(name) != want.get(name):
                problems.append(
                    f"{flow} catalog: {name} is {_catalog_says(have.get(name))}, its manifest "
                    f"says {_catalog_says(want.get(name))} (`curate verify --repair` rebuilds it)"
                )
        if flow == "pool":
            problems += verify_index(folder, so)
    return problems


def _catalog_says(entry: dict | None) -> str:
    return "not published" if entry is None else f"version {entry.get('version')}"


# ---------------------------------------------------------------- summary


def _flow_lines(stats: dict) -> list[str]:
    c = stats.get("counts") or {}
    n_in = int(c.get("input", 0))
    if stats.get("flow") == "video":
        return [
            f"videos: {n_in} input, {c.get('ok')} ok, {c.get('quarantined')} quarantined",
            f"events: {stats.get('events')} in {stats.get('video_hours') or 0:.3g} h "
            f"= {stats.get('events_per_hour') or 0:.3g}/h; frames {stats.get('frames')}",
        ]
    kept = int(c.get("kept", 0))
    frac = f"{100 * kept / n_in:.1f}%" if n_in else "–"
    others = ", ".join(f"{s} {c.get(s, 0)}" for s in STATUSES[1:])
    clip = stats.get("clip_score") or {}
    q = clip.get("quantiles") or {}
    qs = " ".join(f"{k} {v:.3f}" for k, v in q.items() if v is not None) or "–"
    lines = [
        f"samples: {n_in} input -> {kept} kept ({frac}); {others}",
        f"clip score: {qs}; cut {clip.get('mode')} {clip.get('threshold')}",
    ]
    if (bal := stats.get("balance")) and bal.get("mode") == "worldwide":
        langs = bal.get("languages") or {}
        lines.append(
            f"balance: worldwide, tail fraction {bal.get('tail_fraction') or 0:.4f} "
            f"(from {bal.get('tail_fraction_from')}), {len(langs)} languages with captions of "
            f"{len(bal.get('metadata_languages') or [])} with lists; "
            + ", ".join(f"{k} t={v.get('t')}" for k, v in list(langs.items())[:8])
        )
    elif bal:
        lines.append(
            f"balance: t={bal.get('t')} head share {bal.get('head_share_before') or 0:.3f} -> "
            f"{bal.get('head_share_after') or 0:.3f}, "
            f"metadata {str(bal.get('metadata_sha256'))[:12]}"
        )
    return lines


def summarize_partition(uri: str, storage_options: dict | None = None) -> str:
    """A few lines for `curate report URI`: what, how much, which model, when."""
    if unpublished := _not_published(uri, storage_options):
        return unpublished
    published = read_published(uri, storage_options)
    try:
        if published is None:
            raise ValueError(f"{MANIFEST} unreadable")
        manifest = published.manifest
        stats = storage.read_json(published.url("stats.json"), storage_options)
    except Exception as err:
        return f"cannot read {MANIFEST}/stats.json at {uri}: {type(err).__name__}: {err}"
    m = {**(manifest.get("model") or {}), **(stats.get("model") or {})}  # as resolved
    lines = [
        f"{manifest.get('flow')} partition {manifest.get('dataset')}/{manifest.get('partition')}"
        f" at {uri}",
        f"created {manifest.get('created')}, code {manifest.get('code_version')}, "
        f"config {str(manifest.get('config_hash'))[:12]}",
        *_flow_lines(stats),
        f"model: {m.get('name')} / {m.get('pretrained')} ({m.get('precision')}, {m.get('device')})"
        f", checkpoint sha256 {m.get('checkpoint_sha256')}",
    ]
    return "\n".join(lines)
