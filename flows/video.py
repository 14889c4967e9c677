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
    list_inputs,
    output_config,
    publish_artifacts,
    resolve_partition,
    run_key,
    summary_markdown,
    to_json,
)
from schemas.config import (
    CurateConfig,
    ModelConfig,
    VideoConfig,
    config_hash,
    parse_config,
    redacted,
)
from schemas.tables import EVENTS, VIDEOS, conform
from tasks import storage
from tasks.gate import apply_gate
from tasks.lock import partition_lock
from tasks.model import model_identity
from tasks.publish import Staging, abort, begin, code_version, commit, partition_url, read_manifest
from tasks.shards import WrittenFile, describe_file, write_file, write_index
from tasks.video_publish import assign_event_shards, frame_scores, video_events, write_event_shard
from tasks.video_report import write_video_report
from tasks.video_score import prompt_set_hash
from tasks.video_stage import VideoScores, load_video_scores, prompt_embeddings, score_video


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
    frames_df = pl.concat(frames) if frames else pl.DataFrame(schema=frame_schema())
    events_df = pl.concat(events) if events else pl.DataFrame(schema=EVENTS)
    return videos_df, frames_df, assign_event_shards(events_df, video.shard.max_samples)


def frame_schema() -> dict:
    from schemas.tables import FRAMES

    return FRAMES


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


def publish_video_partition(
    cfg: CurateConfig,
    partition: str,
    tables: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame],
    inputs: list[dict[str, Any]],
    key: str,
    timings: dict[str, float],
    model: dict[str, Any],
) -> dict[str, Any]:
    videos, frames, events = tables
    so = cfg.storage_options
    stage = begin(partition_url(cfg.output, cfg.dataset, "video", partition), so)
    try:
        t0 = time.perf_counter()
        lineage = {
            "model": model,
            "prompt_set_hash": prompt_set_hash(cfg.video.prompts.model_dump()),
            "thresholds": cfg.video.events.model_dump(),
            "sample_fps": cfg.video.sample_fps,
        }
        futures = [
            write_clips_task.submit(str(name), rows, stage, lineage)
            for (name,), rows in events.group_by("shard", maintain_order=True)
        ]
        outputs = [f.result() for f in futures]
        sizes = {o.path.removeprefix("shards/"): o.count for o in outputs}
        outputs.append(
            write_file(
                stage.url("shards/sizes.json"),
                "shards/sizes.json",
                to_json(dict(sorted(sizes.items()))),
                so,
            )
        )
        for name, df in (("videos", videos), ("frames", frames), ("events", events)):
            outputs.append(write_index(df, stage.url(f"{name}.parquet"), f"{name}.parquet", so))
        timings["publish_s"] = time.perf_counter() - t0
        timings["total_s"] = sum(v for k, v in timings.items() if k != "total_s")
        stats = video_stats(cfg, partition, videos, frames, events, timings)
        outputs.append(write_file(stage.url("stats.json"), "stats.json", to_json(stats), so))
        thresholds = {"start": cfg.video.events.start, "stop": cfg.video.events.stop}
        for rel in write_video_report(videos, frames, events, stats, thresholds, stage.staging, so):
            outputs.append(describe_file(stage.url(rel), rel, so))
        manifest = {
            "flow": "video",
            "dataset": cfg.dataset,
            "partition": partition,
            "config": redacted(cfg),
            "config_hash": config_hash(output_config(cfg, "video")),
            "model": model,
            "code_version": code_version(),
            "run_key": key,
            "inputs": inputs,
            "prompt_set_hash": lineage["prompt_set_hash"],
        }
        apply_gate(cfg, "video", stats, stage)
        commit(stage, manifest, outputs)
    except BaseException:
        abort(stage)
        raise
    return stats


@flow(name="curate-video", log_prints=False)
def video_flow(config: dict[str, Any], partition: str | None = None, force: bool = False) -> dict:
    """Find near-miss moments in driving-recorder video and publish them as clips."""
    log = get_run_logger()
    cfg = parse_config(config)
    partition = resolve_partition(partition, cfg.schedule.timezone)
    so = cfg.storage_options
    urls = list_inputs(cfg.video.input, partition, so, "video.input")
    model = model_identity(cfg.model)
    inputs = [storage.fingerprint(u, so) for u in urls]
    key = run_key(inputs, output_config(cfg, "video"), model)
    final = partition_url(cfg.output, cfg.dataset, "video", partition)
    with partition_lock(final, so):
        published = read_manifest(final, so)
        if not force and published and published.get("run_key") == key:
            log.info("partition %s already published with the same inputs and config", partition)
            return {"status": "skipped", "partition": partition, "uri": final}
        log.info("partition %s: %d videos", partition, len(urls))
        return _video_run(cfg, partition, urls, inputs, key, model, force)


def _video_run(
    cfg: CurateConfig,
    partition: str,
    urls: list[str],
    inputs: list[dict],
    key: str,
    model: dict,
    force: bool,
) -> dict:
    """embed -> detect -> publish for one partition (the caller holds its lock)."""
    log = get_run_logger()
    so, cache = cfg.storage_options, cache_root(cfg)
    final = partition_url(cfg.output, cfg.dataset, "video", partition)
    t0 = time.perf_counter()
    futures = [score_video_task.submit(u, cfg.video, cfg.model, cache, so, force) for u in urls]
    results = [f.result() for f in futures]
    timings = {"score_s": time.perf_counter() - t0}
    t1 = time.perf_counter()
    tables = detect(cfg, results, cache)
    timings["detect_s"] = time.perf_counter() - t1
    stats = publish_video_partition(cfg, partition, tables, inputs, key, timings, model)
    publish_artifacts("video", stats, summary_markdown(stats, final))
    log.info("published %s: %s, %d events", final, stats["counts"], stats["events"])
    return {
        "status": "published",
        "partition": partition,
        "uri": final,
        "counts": stats["counts"],
        "events": stats["events"],
    }


def run_video(cfg: CurateConfig, partition: str | None = None, force: bool = False) -> dict:
    """Run the video flow with the config's task runner (inputs and model checked first)."""
    if cfg.video is None:
        raise InputError("config: the video flow needs a 'video' section")
    partition = resolve_partition(partition, cfg.schedule.timezone)
    list_inputs(cfg.video.input, partition, cfg.storage_options, "video.input")
    model_identity(cfg.model)
    with execution(cfg) as runner:
        return video_flow.with_options(task_runner=runner)(
            config=cfg.model_dump(mode="json"), partition=partition, force=force
        )
