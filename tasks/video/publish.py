"""Frame scores, events and clip shards of the video flow (cheap passes over cached embeddings)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import av
import numpy as np
import polars as pl

from schemas.config import VideoConfig
from schemas.tables import EVENTS, FRAMES, conform
from tasks.errors import SampleError, as_sample_error
from tasks.publish.writer import Sample, WrittenFile, write_shard
from tasks.video.clips import clip_bytes, thumbnail_jpeg
from tasks.video.events import clip_window, detect_events, smooth
from tasks.video.zero_shot import fuse, motion_cue, zero_shot_near_miss

logger = logging.getLogger(__name__)


def frame_scores(
    url: str,
    frames: pl.DataFrame,
    emb: np.ndarray,
    near: np.ndarray,
    normal: np.ndarray,
    logit_scale: float,
    video: VideoConfig,
) -> pl.DataFrame:
    """Per-frame zero-shot probability, motion cue, fused and smoothed score (FRAMES)."""
    e = emb.astype(np.float32)
    if frames.height == 0:
        return pl.DataFrame(schema=FRAMES)
    p = zero_shot_near_miss(e, near, normal, logit_scale)
    motion = motion_cue(e)
    score = fuse(p, motion, video.fusion)
    smoothed = smooth(score, video.events.median_window, video.events.ema_alpha)
    df = frames.with_columns(
        pl.lit(url).alias("video"),
        pl.Series("p_near_miss", p),
        pl.Series("motion", motion),
        pl.Series("score", score),
        pl.Series("smoothed", smoothed),
    )
    return conform(df, FRAMES)


def event_key(video_url: str, start_s: float) -> str:
    """A tar-safe member key, stable for the same video and event start."""
    return "ev" + hashlib.sha256(f"{video_url}\0{start_s:.3f}".encode()).hexdigest()[:22]


def video_events(
    url: str, frames: pl.DataFrame, duration_s: float, fps: float, video: VideoConfig
) -> pl.DataFrame:
    """Detected events of one video, with their clip windows (EVENTS, shard unset)."""
    if frames.height == 0:
        return pl.DataFrame(schema=EVENTS)
    rate = min(video.sample_fps, fps)  # a 2 fps video sampled "at 4 fps" has 2 samples/s
    events = detect_events(frames["t_s"].to_numpy(), frames["score"].to_numpy(), video.events, rate)
    rows = []
    for ev in events:
        c0, c1 = clip_window(ev, duration_s, video.events)
        key = event_key(url, ev.start_s)
        rows.append(
            {
                "event_id": key,
                "video": url,
                "start_s": ev.start_s,
                "end_s": ev.end_s,
                "peak_s": ev.peak_s,
                "peak_score": ev.peak_score,
                "clip_start_s": c0,
                "clip_end_s": c1,
                "key": key,
                "shard": None,
                "status": "ok",
                "error": None,
                "error_detail": None,
            }
        )
    return (
        conform(pl.DataFrame(rows, schema=EVENTS), EVENTS) if rows else pl.DataFrame(schema=EVENTS)
    )


def assign_event_shards(events: pl.DataFrame, max_samples: int) -> pl.DataFrame:
    n = pl.int_range(pl.len()) // max_samples
    return events.with_columns(pl.format("{}.tar", n.cast(pl.String).str.zfill(6)).alias("shard"))


def _event_json(row: dict[str, Any], lineage: dict[str, Any]) -> bytes:
    meta = {**{k: row[k] for k in EVENTS if k not in ("status", "error", "error_detail")}}
    return json.dumps({**meta, **lineage}, sort_keys=True, default=str).encode()


# Errors of PyAV and the clip cutter that mean "this clip cannot be cut from this file".
CLIP_ERRORS = (av.FFmpegError, ValueError, IndexError, StopIteration)


def write_event_shard(
    name: str, events: pl.DataFrame, base: str, lineage: dict[str, Any], so: dict[str, Any]
) -> tuple[list[WrittenFile], dict[str, tuple[str, str]]]:
    """One tar of event clips: `{key}.mp4`, `{key}.jpg` (peak frame), `{key}.json`.

    A clip that cannot be cut is left out of the shard and returned as
    `{event_id: (code, detail)}`: one bad clip never fails the run.
    """
    failed: dict[str, tuple[str, str]] = {}

    def members() -> Iterator[Sample]:
        for row in events.iter_rows(named=True):
            try:
                with as_sample_error("clip_error", *CLIP_ERRORS):
                    start, end = row["clip_start_s"], row["clip_end_s"]
                    clip, info = clip_bytes(row["video"], so, start, end)
                    thumb = thumbnail_jpeg(row["video"], so, row["peak_s"])
            except SampleError as err:
                logger.warning("event %s: no clip (%s)", row["event_id"], err)
                failed[row["event_id"]] = (err.code, err.detail)
                continue
            meta = _event_json(row, {**lineage, "clip": info})
            yield row["key"], {"mp4": clip, "jpg": thumb, "json": meta}, row

    written = write_shard(base, name, members(), EVENTS, so)
    return written, failed


def mark_clip_failures(events: pl.DataFrame, failed: dict[str, tuple[str, str]]) -> pl.DataFrame:
    """Events whose clip could not be cut get status clip_error, their reason and no shard."""
    bad = pl.col("event_id").is_in(list(failed))
    codes = {k: v[0] for k, v in failed.items()}
    details = {k: v[1] for k, v in failed.items()}
    return events.with_columns(
        pl.when(bad).then(pl.lit("clip_error")).otherwise(pl.lit("ok")).alias("status"),
        pl.col("event_id").replace_strict(codes, default=None).alias("error"),
        pl.col("event_id").replace_strict(details, default=None).alias("error_detail"),
        pl.when(bad).then(None).otherwise(pl.col("shard")).alias("shard"),
    ).cast({"status": EVENTS["status"]})
