"""Frame scores, events and clip shards of the video flow (cheap passes over cached embeddings)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import polars as pl

from schemas.config import VideoConfig
from schemas.tables import EVENTS, FRAMES, conform
from tasks.errors import SampleError
from tasks.publish.writer import Sample, WrittenFile, write_shard
from tasks.video.decoding.isolated import media_in_helper
from tasks.video.events import clip_window, detect_events, smooth_valid
from tasks.video.head import ensemble_proba, head_logit, zero_shot_logit
from tasks.video.headfile import RunHead
from tasks.video.ood import ood_cues
from tasks.video.score import OOD_STATS
from tasks.video.zero_shot import fuse, motion_cue, zero_shot_near_miss

logger = logging.getLogger(__name__)


def ood_frames(
    frames: pl.DataFrame, p: np.ndarray, p_head: np.ndarray | None, video: VideoConfig
) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """(ood score, flag, the flagging cue or None) per frame (`tasks.video.ood`)."""
    stats = {k: frames[k].to_numpy().astype(np.float64) for k in OOD_STATS}
    cues = ood_cues(stats, frames["t_s"].to_numpy(), p, p_head, video.ood.uncertainty_weight)
    names, values = list(cues), np.stack(list(cues.values()))
    score = values.max(axis=0)
    threshold = video.ood.threshold
    flag = np.zeros(len(score), bool) if threshold is None else score > threshold
    top = values.argmax(axis=0)
    return score, flag, [names[k] if f else None for k, f in zip(top, flag, strict=True)]


def motion_on_valid(emb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The motion cue over the valid frames only (each against the previous valid one, the
    robust statistics over them), 0 (neutral) on the others."""
    if valid.all():
        return motion_cue(emb)
    z = np.zeros(len(emb), dtype=np.float64)
    z[valid] = motion_cue(emb[valid]) if valid.any() else 0.0
    return z


def frame_scores(
    url: str,
    frames: pl.DataFrame,
    emb: np.ndarray,
    near: np.ndarray,
    normal: np.ndarray,
    logit_scale: float,
    video: VideoConfig,
    head: RunHead | None = None,
    telemetry: Mapping[str, np.ndarray] | None = None,
) -> pl.DataFrame:
    """Per-frame zero-shot and head probabilities, OOD score and flag, motion cue, telemetry,
    fused and smoothed score (FRAMES).

    `p_head` is the head's own ensemble, sigmoid(alpha * GDA logit + (1 - alpha) * zero-shot
    logit) with its fitted alpha; the fused score weighs it with `fusion.head_weight`.
    `telemetry` holds the video's per-frame telemetry (`telemetry.cue.per_frame`: speed,
    accelerations and the cue, NaN where it has none); the cue joins the fusion with
    `fusion.telemetry_weight`. OOD-flagged frames keep their scores but are no part of the
    motion statistics, the smoothing or the events (`tasks.video.events`).
    """
    e = emb.astype(np.float32)
    if frames.height == 0:
        return pl.DataFrame(schema=FRAMES)
    p = zero_shot_near_miss(e, near, normal, logit_scale)
    p_head = None
    if head is not None:
        zs_lg = zero_shot_logit(e, near, normal, logit_scale)
        p_head = ensemble_proba(head_logit(head.head, e), zs_lg, head.alpha)
    ood, flag, cue = ood_frames(frames, p, p_head, video)
    motion = motion_on_valid(e, ~flag)
    tel = telemetry or {}
    score = fuse(p, motion, video.fusion, p_head, tel.get("telemetry"))
    ev = video.events
    smoothed = smooth_valid(score, ~flag if flag.any() else None, ev.median_window, ev.ema_alpha)
    df = frames.with_columns(
        pl.lit(url).alias("video"),
        pl.Series("p_near_miss", p),
        pl.lit(None, pl.Float64).alias("p_head") if p_head is None else pl.Series("p_head", p_head),
        pl.Series("motion", motion),
        pl.Series("score", score),
        pl.Series("smoothed", smoothed),
        pl.Series("ood", ood),
        pl.Series("ood_flag", flag),
        pl.Series("ood_cue", cue, dtype=pl.String),
        *(_nullable(name, tel.get(name)) for name in TELEMETRY_COLUMNS),
    )
    return conform(df, FRAMES)


TELEMETRY_COLUMNS = ("speed", "accel_long", "accel_lat", "telemetry")


def _nullable(name: str, values: np.ndarray | None) -> pl.Series | pl.Expr:
    """A frames column from a float array, NaN as null; all null without one."""
    if values is None:
        return pl.lit(None, pl.Float32).alias(name)
    x = np.asarray(values, np.float64)
    return pl.Series(name, np.where(np.isfinite(x), x, np.nan)).fill_nan(None)


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
    valid = ~frames["ood_flag"].fill_null(False).to_numpy()  # OOD frames take no part
    t, score = frames["t_s"].to_numpy(), frames["score"].to_numpy()
    events = detect_events(t, score, video.events, rate, valid)
    rows = []
    for ev in events:
        ev = replace(ev, end_s=min(ev.end_s, duration_s))  # a sample lasts, the video ends
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


# video URL -> (its cached timeline's URL, rotation, a recovered copy's URL or None)
Clocks = dict[str, tuple[str, int, str | None]]


def write_event_shard(
    name: str,
    events: pl.DataFrame,
    base: str,
    lineage: dict[str, Any],
    so: dict[str, Any],
    clocks: Clocks | None = None,
    timeout_s: float = 300.0,
) -> tuple[list[WrittenFile], dict[str, tuple[str, str]]]:
    """One tar of event clips: `{key}.mp4`, `{key}.jpg` (peak frame), `{key}.json`.

    `clocks` are the score stage's timelines, rotations and recovered copies (a video
    without one is read for them; a recovered one is cut from its copy). Clips are cut in a
    decoding helper process (`tasks.isolation`). A clip that cannot be cut (its decoder
    failed, crashed or hung for `timeout_s`) is left out of the shard and returned as
    `{event_id: (code, detail)}`: one bad clip never fails the run.
    """
    failed: dict[str, tuple[str, str]] = {}

    def members() -> Iterator[Sample]:
        for row in events.iter_rows(named=True):
            timeline, rotation, media = (clocks or {}).get(row["video"], (None, None, None))
            try:
                clip, info, thumb = media_in_helper(
                    timeout_s,
                    url=media or row["video"],
                    so=so,
                    start_s=row["clip_start_s"],
                    end_s=row["clip_end_s"],
                    peak_s=row["peak_s"],
                    timeline=timeline,
                    rotation=rotation,
                )
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
