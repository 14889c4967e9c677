"""`curate export fiftyone`: published partitions as FiftyOne datasets on disk
(`tasks/review/fiftyone.py`), one per flow: `DIR/pool` (every input sample with its image,
caption, scores, status, reason, heads and duplicate group) and `DIR/video` (every input
video, its events as temporal detections and its sampled frames' scores as frame fields).

Pool images are read back from the input shards the manifest lists (samples that were not
kept are not in the published shards); a sample whose bytes cannot be read any more (the
input is gone, or the sample had no image) keeps its row, tagged `image_missing`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import polars as pl

import clip_curate as cc
from tasks.io import storage
from tasks.pool.sources import ShardReadError, iter_selected
from tasks.review import ReviewExportError
from tasks.review import fiftyone as fof

logger = logging.getLogger(__name__)
RENAMED = {"error": "reason", "error_detail": "reason_detail"}
NOT_FIELDS = {"entry_ids", "out_key", "shard", "index", "image_ext", "partition"}
VIDEO_FIELDS = ("fps", "duration_s", "width", "height", "codec", "n_frames", "rotation",
                "display_width", "display_height", "decoder", "vehicle_id", "start_time",
                "sampled_frames", "error", "error_detail", "duplicate_of")  # fmt: skip
FRAME_FIELDS = ("t_s", "p_near_miss", "p_head", "motion", "score", "smoothed", "ood",
                "ood_flag", "ood_cue")  # fmt: skip


def export_fiftyone(
    uri: str, out: str, start: str | None, end: str | None, flow: str | None
) -> dict[str, Any]:
    """Write DIR/pool and/or DIR/video; returns counts per flow."""
    ds = cc.open_dataset(uri)
    done: dict[str, Any] = {"out": out}
    for name, write in (("pool", _pool), ("video", _video)):
        parts = ds.partitions(name, start, end) if flow in (None, name) else []
        if parts:
            done[name] = write(ds, parts, storage.join(out, name))
    if len(done) == 1:
        raise ReviewExportError(f"{uri}: no published partition to export in the range")
    return done


def _write(out: str, media: str, name: str, samples: list, frames: dict[str, dict]) -> None:
    every_frame = [f for doc in frames.values() for f in doc.values()]
    meta = fof.metadata(media, name, samples, every_frame)
    storage.write_bytes(storage.join(out, "metadata.json"), fof.dumps(meta))
    storage.write_bytes(storage.join(out, "samples.json"), fof.dumps({"samples": samples}))
    for rel, doc in frames.items():
        storage.write_bytes(storage.join(out, rel), fof.dumps({"frames": doc}))


def _pool(ds: cc.Dataset, parts: list, out: str) -> dict[str, int]:
    samples, missing = [], 0
    for p in parts:
        table = p.table("samples.parquet").with_row_index("_row")
        groups = _duplicate_groups(table)
        images = _images(table, p.manifest.get("config", {}).get("pool", {}), ds.storage_options)
        for row in table.iter_rows(named=True):
            found = images.get(row["_row"])
            rel = f"data/{p.name}/{row['_row']:08d}.{found[1] if found else 'missing'}"
            if found:
                storage.write_bytes(storage.join(out, rel), found[0])
            missing += found is None
            samples.append(_pool_sample(row, rel, p.name, groups, found is None))
    _write(out, "image", f"{ds.uri.rsplit('/', 1)[-1]}-pool", samples, {})
    return {"samples": len(samples), "images_missing": missing}


def _pool_sample(row: dict, rel: str, partition: str, groups: dict, missing: bool) -> dict:
    status = str(row["status"])
    fields = {RENAMED.get(k, k): fof.plain(v) for k, v in row.items()
              if k not in NOT_FIELDS and not k.startswith("_")}  # fmt: skip
    if row.get("phash") is not None:  # u64: past what the database's integers hold
        fields["phash"] = f"{row['phash']:016x}"
    fields["dup_group"] = groups.get(row["uid"])
    tags = [status, partition] + (["image_missing"] if missing else [])
    return {"filepath": rel, "tags": tags, "metadata": None, "partition": partition, **fields}


def _duplicate_groups(table: pl.DataFrame) -> dict[str, str]:
    """uid -> its duplicate group (the survivor's uid), for survivors and their copies."""
    dups = table.filter(pl.col("duplicate_of").is_not_null())
    groups = dict(zip(dups["uid"], dups["duplicate_of"], strict=True))
    groups.update({s: s for s in dups["duplicate_of"].unique().to_list()})
    return groups


def _images(table: pl.DataFrame, pool_cfg: dict, so: dict) -> dict[int, tuple[bytes, str]]:
    """{row: (image bytes, extension)} read from the input shards, by (source, index)."""
    wanted: dict[str, dict[int, int]] = defaultdict(dict)
    for row, source, index in table.select("_row", "source", "index").iter_rows():
        if source is not None and index is not None:
            wanted[source][int(index)] = row
    columns = {k: pool_cfg[k] for k in ("image_column", "caption_column") if k in pool_cfg}
    found = {}
    for source, rows in wanted.items():
        try:
            for s in iter_selected(source, set(rows), storage_options=so, **columns):
                if s.image is not None and s.index in rows:
                    found[rows[s.index]] = (s.image, s.image_ext or "bin")
        except (ShardReadError, FileNotFoundError) as err:
            logger.warning("fiftyone export: images of %s not readable (%s)", source, err)
    return found


def _video(ds: cc.Dataset, parts: list, out: str) -> dict[str, int]:
    samples: list[dict] = []
    frames: dict[str, dict] = {}
    n_events = 0
    for p in parts:
        videos = p.table("videos.parquet").sort("video")
        table, events = p.table("frames.parquet"), p.table("events.parquet")
        for v in videos.iter_rows(named=True):
            f = table.filter(pl.col("video") == v["video"]).sort("t_s")
            ev = events.filter(pl.col("video") == v["video"]).sort("start_s")
            rel = f"frames/{len(samples):06d}.json"
            sample = _video_sample(v, p.name, f, ev)
            if f.height:
                sample["frames"] = rel
                frames[rel] = _frames(f)
            samples.append(sample)
            n_events += ev.height
    _write(out, "video", f"{ds.uri.rsplit('/', 1)[-1]}-video", samples, frames)
    return {"videos": len(samples), "events": n_events, "frames": sum(map(len, frames.values()))}


def _video_sample(v: dict, partition: str, f: pl.DataFrame, ev: pl.DataFrame) -> dict:
    fields = {RENAMED.get(k, k): fof.plain(v[k]) for k in VIDEO_FIELDS if k in v}
    sample = {"filepath": v["video"], "tags": [str(v["status"]), partition], "metadata": None}
    sample.update(partition=partition, status=str(v["status"]), **fields)
    if f.height:
        t, idx = f["t_s"].to_numpy(), f["frame_index"].to_numpy()
        detections = []
        for e in ev.iter_rows(named=True):
            support = fof.event_support(e["start_s"], e["end_s"], t, idx, v["n_frames"])
            attrs = {k: fof.plain(e[k]) for k in ("event_id", "start_s", "end_s", "peak_s")}
            detections.append({"label": "near_miss", "support": support,
                               "confidence": fof.plain(e["peak_score"]), **attrs,
                               "clip_status": str(e["status"])})  # fmt: skip
        sample["events"] = fof.temporal_detections(detections)
    return sample


def _frames(f: pl.DataFrame) -> dict[str, dict]:
    out = {}
    for row in f.iter_rows(named=True):
        n = int(row["frame_index"]) + 1
        values = {k: fof.plain(row[k]) for k in FRAME_FIELDS}
        out[str(n)] = {"frame_number": n, **values}
    return out
