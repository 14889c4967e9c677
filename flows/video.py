"""The dashcam near-miss flow: probe + embed each video, detect events, publish clips."""

from __future__ import annotations

import time
from typing import Any

import polars as pl
from prefect import flow, get_run_logger, task

from flows.common import (
    IO_RETRIES,
    InputError,
    cache_root,
    execution,
    publish_artifacts,
    summary_markdown,
)
from flows.run import RunPlan, already_published, finish, plan_run, skipped, staged, total_time
from schemas.config import CurateConfig, ModelConfig, VideoConfig, parse_config
from schemas.tables import EVENTS, FRAMES, VIDEOS, conform
from tasks.io.lock import partition_lock
from tasks.publish.commit import Staging
from tasks.publish.writer import WrittenFile, write_index, write_sizes
from tasks.video.publish import assign_event_shards, frame_scores, video_events, write_event_shard
from tasks.video.report import write_video_report
from tasks.video.score import VideoScores, load_video_scores, prompt_embeddings, score_video
from tasks.video.zero_shot import prompt_set_hash


@task(name="score-video", task_run_name="score {url}", **IO_RETRIES)
def score_video_task(
    url: str, video: VideoConfig, model: ModelConfig, cache: str, so: dict[str, Any], force: bool
) -> VideoScores:
    return score_video(url, video, model, cache, so, force)


@task(name="write-clips", task_run_name="write {name}", **IO_RETRIES)
def write_clips_task(name: str, events: pl.DataFrame, stage: Staging, lineage: dict) -> WrittenFile:
    return write_event_shard(name, events, stage, lineage)


def detect(
    cfg: CurateConfig, results: list[VideoScores], cache: str
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Frame scores and events of every video (cheap: cached embeddings in, tables out)."""
    video, so = cfg.video, cfg.storage_options
    near, normal, scale = prompt_embeddings(cfg.model, video.prompts.model_dump(), cache, so)
    videos, frames, events = [], [], []
    for vs in results:
        f = pl.DataFrame()
        if vs.probe["status"] == "ok":
            table, emb = load_video_scores(vs, so)
            f = frame_scores(vs.url, table, emb, near, normal, scale, video)
            ev = video_events(vs.url, f, vs.probe["duration_s"], vs.probe["fps"], video)
            frames.append(f)
            events.append(ev)
        n_events = events[-1].height if vs.probe["status"] == "ok" else 0
        videos.append({**vs.probe, "video": vs.url, "sampled_frames": f.height, "events": n_events})
    videos_df = conform(pl.DataFrame(videos, infer_schema_length=None), VIDEOS)
    frames_df = pl.concat(frames) if frames else pl.DataFrame(schema=FRAMES)
    events_df = pl.concat(events) if events else pl.DataFrame(schema=EVENTS)
    return videos_df, frames_df, assign_event_shards(events_df, video.shard.max_samples)


def video_stats(
    cfg: CurateConfig,
    partition: str,
    videos: pl.DataFrame,
    frames: pl.DataFrame,
    events: pl.DataFrame,
    timings: dict[str, float],
) -> dict[str, Any]:
    ok = videos.filter(pl.col("status") == "ok")
    hours = float(ok["duration_s"].sum() or 0.0) / 3600.0
    reasons = (
        videos.filter(pl.col("error").is_not_null())
        .select(pl.col("error").str.split(":").list.first())["error"]
        .value_counts(sort=True)
    )
    return {
        "flow": "video",
        "dataset": cfg.dataset,
        "partition": partition,
        "counts": {
            "input": videos.height,
            "ok": ok.height,
            "quarantined": videos.height - ok.height,
        },
        "reasons": {str(r): int(n) for r, n in reasons.iter_rows()},
        "frames": frames.height,
        "events": events.height,
        "video_hours": round(hours, 6),
        "events_per_hour": round(events.height / hours, 6) if hours else 0.0,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }


def publish(
    cfg: CurateConfig,
    plan: RunPlan,
    tables: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame],
    timings: dict[str, float],
) -> dict[str, Any]:
    """Cut event clips into shards, write tables, stats and report, then commit."""
    videos, frames, events = tables
    so, video = cfg.storage_options, cfg.video
    lineage = {
        "model": plan.model,
        "prompt_set_hash": prompt_set_hash(video.prompts.model_dump()),
        "thresholds": video.events.model_dump(),
        "sample_fps": video.sample_fps,
    }
    with staged(plan, so) as stage:
        t0 = time.perf_counter()
        futures = [
            write_clips_task.submit(str(name), rows, stage, lineage)
            for (name,), rows in events.group_by("shard", maintain_order=True)
        ]
        outputs: list[WrittenFile] = [f.result() for f in futures]
        outputs.append(write_sizes(outputs, stage.staging, so))
        for name, df in (("videos", videos), ("frames", frames), ("events", events)):
            outputs.append(write_index(df, stage.url(f"{name}.parquet"), f"{name}.parquet", so))
        timings["publish_s"] = time.perf_counter() - t0
        stats = video_stats(cfg, plan.partition, videos, frames, events, total_time(timings))
        thresholds = {"start": video.events.start, "stop": video.events.stop}

        def report(stage: Staging) -> list[str]:
            return write_video_report(videos, frames, events, stats, thresholds, stage.staging, so)

        finish(
            cfg,
            plan,
            stage,
            outputs,
            stats,
            report,
            {"prompt_set_hash": lineage["prompt_set_hash"]},
        )
    return stats


@flow(name="curate-video", log_prints=False)
def video_flow(config: dict[str, Any], partition: str | None = None, force: bool = False) -> dict:
    """Find near-miss moments in driving-recorder video and publish them as clips."""
    log = get_run_logger()
    cfg = parse_config(config)
    if cfg.video is None:
        raise InputError("config: the video flow needs a 'video' section")
    plan = plan_run(cfg, "video", partition)
    log.info("partition %s: %d videos", plan.partition, len(plan.urls))
    with partition_lock(plan.final, cfg.storage_options):
        if not force and already_published(plan, cfg.storage_options):
            log.info(
                "partition %s already published with the same inputs and config", plan.partition
            )
            return skipped(plan)
        return _video_run(cfg, plan, force)


def _video_run(cfg: CurateConfig, plan: RunPlan, force: bool) -> dict:
    """embed -> detect -> publish for one partition (the caller holds its lock)."""
    log = get_run_logger()
    so, cache = cfg.storage_options, cache_root(cfg)
    t0 = time.perf_counter()
    futures = [
        score_video_task.submit(u, cfg.video, cfg.model, cache, so, force) for u in plan.urls
    ]
    results = [f.result() for f in futures]
    timings = {"score_s": time.perf_counter() - t0}
    t1 = time.perf_counter()
    tables = detect(cfg, results, cache)
    timings["detect_s"] = time.perf_counter() - t1
    stats = publish(cfg, plan, tables, timings)
    publish_artifacts("video", stats, summary_markdown(stats, plan.final))
    log.info("published %s: %s, %d events", plan.final, stats["counts"], stats["events"])
    return {
        "status": "published",
        "partition": plan.partition,
        "uri": plan.final,
        "counts": stats["counts"],
        "events": stats["events"],
    }


def run_video(cfg: CurateConfig, partition: str | None = None, force: bool = False) -> dict:
    """Run the video flow with the config's task runner (inputs and model checked first)."""
    if cfg.video is None:
        raise InputError("config: the video flow needs a 'video' section")
    plan = plan_run(cfg, "video", partition)
    with execution(cfg) as runner:
        return video_flow.with_options(task_runner=runner)(
            config=cfg.model_dump(mode="json"), partition=plan.partition, force=force
        )
