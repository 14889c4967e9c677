"""The dashcam near-miss flow: probe + embed each video, detect events, publish clips."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import polars as pl
from prefect import flow, get_run_logger, task

from flows.common import (
    IO_RETRIES,
    cache_root,
    execution,
    model_runs_here,
    publish_artifacts,
    summary_markdown,
)
from flows.plan import read_planned
from flows.progress import Progress
from flows.recover import recover_lost
from flows.run import (
    RunPlan,
    already_published,
    call_flow,
    finish,
    gather,
    plan_run,
    report_url,
    resolved_model,
    run_partition,
    skipped,
    total_time,
    versioned,
)
from schemas.config import ConfigError, CurateConfig, ModelConfig, VideoConfig, parse_config
from schemas.tables import EVENTS, FRAMES, SCORED_VIDEO, VIDEOS, conform
from tasks import cancel
from tasks.publish.commit import Version
from tasks.publish.writer import WrittenFile, write_sizes, write_table
from tasks.stats import Counts
from tasks.video.duplicates import duplicate_row, duplicate_videos
from tasks.video.headfile import KEY, RunHead, parse_run_head, prompts_differ
from tasks.video.publish import (
    Clocks,
    assign_event_shards,
    frame_scores,
    mark_clip_failures,
    video_events,
    write_event_shard,
)
from tasks.video.report import write_video_report
from tasks.video.score import VideoScores, load_video_scores, prompt_embeddings, score_video
from tasks.video.sidecar import read_sidecar
from tasks.video.telemetry.cue import per_frame
from tasks.video.telemetry.night import night_telemetry
from tasks.video.zero_shot import prompt_set_hash

Prompts = tuple[np.ndarray, np.ndarray, float]
logger = logging.getLogger(__name__)


@task(name="score-video", task_run_name="score {url}", **IO_RETRIES)
def score_video_task(
    url: str,
    video: VideoConfig,
    model: ModelConfig,
    cache: str,
    so: dict[str, Any],
    force: bool,
    run: str,
    references: list[str] | None = None,
) -> VideoScores:
    return score_video(url, video, model, cache, so, force, run, references)


@task(name="embed-prompts", **IO_RETRIES)
def embed_prompts_task(
    model: ModelConfig, prompts: dict[str, list[str]], cache: str, so: dict[str, Any]
) -> Prompts:
    return prompt_embeddings(model, prompts, cache, so)


@task(name="write-clips", task_run_name="write {name}", **IO_RETRIES)
def write_clips_task(
    name: str,
    events: pl.DataFrame,
    base: str,
    lineage: dict,
    so: dict[str, Any],
    clocks: Clocks,
    timeout_s: float,
) -> tuple[list[WrittenFile], dict[str, tuple[str, str]]]:
    return write_event_shard(name, events, base, lineage, so, clocks, timeout_s)


def load_head_file(cfg: CurateConfig, files: dict[str, str], identity: dict[str, Any]) -> RunHead:
    """The head's planned bytes (`read_planned`), checked against a model identity."""
    data = read_planned(cfg, files, KEY, cfg.video.head)
    return parse_run_head(data, cfg.video.head, files[KEY], identity)


def check_head(cfg: CurateConfig, files: dict[str, str]) -> None:
    """Fail fast on a head made for another model, before any video is decoded, where the
    model's identity resolves on this machine (else `run_head` checks after scoring)."""
    from tasks.model.clip import model_identity

    if not cfg.video.head or not model_runs_here(cfg):
        return
    load_head_file(cfg, files, model_identity(cfg.model))


def run_head(
    cfg: CurateConfig, files: dict[str, str], results: list[VideoScores]
) -> RunHead | None:
    """The configured head, checked against the model the score stage recorded."""
    if not cfg.video.head or not results:
        return None
    head = load_head_file(cfg, files, results[0].model)
    if head is not None and prompts_differ(head, cfg.video.prompts.model_dump()):
        logger.warning(
            "video.head %s was fitted with other prompts: its alpha was chosen for those",
            cfg.video.head,
        )
    return head


def score_stage(
    cfg: CurateConfig,
    urls: list[str],
    force: bool,
    run: str,
    progress: Progress | None = None,
    inputs: list[str] | None = None,
) -> tuple[list[VideoScores], Prompts]:
    """One `score-video` task per video (cached: decoded and embedded once per model), and
    the prompt sets' embeddings (cached per model and prompts). Moov-less videos are scored
    again with reference candidates once every video is probed (`flows.recover`).

    The prompts are embedded in this process when the model can run here, so that every
    runner (threads, processes, Dask, Ray) gets bit-identical prompt embeddings (a text
    tower run with another thread count can differ in the last bits), while the videos
    score (a failed video is noticed once that short pass ends); on a driver without the
    configured GPU a worker embeds them, submitted ahead of the videos.
    """
    so, cache, prompts = cfg.storage_options, cache_root(cfg), cfg.video.prompts.model_dump()
    here = model_runs_here(cfg)
    remote = None if here else embed_prompts_task.submit(cfg.model, prompts, cache, so)
    futures = [
        score_video_task.submit(u, cfg.video, cfg.model, cache, so, force, run) for u in urls
    ]
    embedded = None
    if here:
        try:
            embedded = prompt_embeddings(cfg.model, prompts, cache, so)
        except BaseException:
            cancel.cancel(run)  # the videos in flight stop too
            raise
    results = gather(futures, run, progress, video_seconds)

    def again(url: str, refs: list[str]) -> Any:
        return score_video_task.submit(url, cfg.video, cfg.model, cache, so, force, run, refs)

    results = recover_lost(cfg, results, inputs or urls, again, run)
    if remote is not None:
        embedded = gather([remote], run)[0]
    return results, embedded


def video_seconds(scores: VideoScores) -> float:
    """What a scored video adds to the progress bar."""
    return float(scores.probe.get("duration_s") or 0.0)


def detect(
    cfg: CurateConfig,
    results: list[VideoScores],
    prompts: Prompts,
    head: RunHead | None = None,
    copies: list[dict[str, Any]] | None = None,
    inputs: list[str] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Frame scores and events of every video (cheap: cached embeddings in, tables out).

    `copies` are the videos.parquet rows of byte-identical copies that were not processed;
    `inputs` the partition's videos, among which sidecars are told apart (default: these)."""
    video, so = cfg.video, cfg.storage_options
    near, normal, scale = prompts
    urls = inputs or [r.url for r in results] + [c["video"] for c in copies or []]
    videos: list[dict[str, Any]] = [
        {**read_sidecar(c["video"], so, urls), **c, "sampled_frames": 0, "events": 0}
        for c in copies or []
    ]
    sidecars = {vs.url: read_sidecar(vs.url, so, urls) for vs in results}
    scored = [vs.url for vs in results if vs.probe["status"] in SCORED_VIDEO]
    tracks = night_telemetry(scored, sidecars, so, urls)
    frames, events = [], []
    for vs in results:
        f = pl.DataFrame()
        n_events = 0
        if vs.probe["status"] in SCORED_VIDEO:
            table, emb = load_video_scores(vs, so)
            tel = None
            if vs.url in tracks:
                rate = min(video.sample_fps, vs.probe["fps"])
                tel = per_frame(*tracks[vs.url], table["t_s"].to_numpy(), rate)
            f = frame_scores(vs.url, table, emb, near, normal, scale, video, head, tel)
            ev = video_events(vs.url, f, vs.probe["duration_s"], vs.probe["fps"], video)
            frames.append(f)
            events.append(ev)
            n_events = ev.height
        row = {**vs.probe, **sidecars[vs.url], "video": vs.url}
        videos.append({**row, "sampled_frames": f.height, "events": n_events})
    videos = sorted(videos, key=lambda r: r["video"])  # input order, copies among the rest
    for row in videos:
        row.setdefault("duplicate_of", None)
    videos_df = conform(pl.DataFrame(videos, infer_schema_length=None), VIDEOS)
    frames_df = pl.concat(frames) if frames else pl.DataFrame(schema=FRAMES)
    events_df = pl.concat(events) if events else pl.DataFrame(schema=EVENTS)
    return videos_df, frames_df, assign_event_shards(events_df, video.shard.max_samples)


def video_stats(
    cfg: CurateConfig,
    partition: str,
    tables: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame],
    results: list[VideoScores],
    timings: dict[str, float],
) -> dict[str, Any]:
    videos, frames, events = tables
    ok = videos.filter(pl.col("status").cast(pl.String).is_in(SCORED_VIDEO))
    hours = float(ok["duration_s"].sum() or 0.0) / 3600.0
    reasons = videos["error"].drop_nulls().value_counts(sort=True)
    clips = Counts(events=events.height).add_codes("error", events["error"].to_list())
    ood = frames["ood_cue"].drop_nulls().value_counts(sort=True)
    cut = int((events["status"] == "ok").sum())  # published: an event without a clip is not
    return {
        "flow": "video",
        "dataset": cfg.dataset,
        "partition": partition,
        "counts": {
            "input": videos.height,
            "ok": int((videos["status"] == "ok").sum()),
            "recovered": int((videos["status"] == "recovered").sum()),
            "quarantined": int((videos["status"] == "quarantined").sum()),
            "duplicate": int((videos["status"] == "duplicate").sum()),
        },
        "reasons": {str(r): int(n) for r, n in reasons.iter_rows()},
        "frames": frames.height,
        "ood_frames": int(frames["ood_flag"].sum() or 0),
        "ood_cues": {str(c): int(n) for c, n in ood.iter_rows()},
        "events": events.height,
        "clips": cut,
        "clip_errors": int((events["status"] == "clip_error").sum()),
        "video_hours": round(hours, 6),
        # what the gate watches: published events, so clips that stop cutting are seen too
        "events_per_hour": round(cut / hours, 6) if hours else 0.0,
        "videos_scored": sum(not r.cached for r in results),
        "videos_cached": sum(r.cached for r in results),
        "stages": {"clips": clips.sorted()},
        "model": resolved_model(r.model for r in results),
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }


def publish(
    cfg: CurateConfig,
    plan: RunPlan,
    tables: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame],
    results: list[VideoScores],
    timings: dict[str, float],
    run: str,
    head: RunHead | None = None,
) -> dict[str, Any]:
    """Cut event clips into shards of a new version, write tables, stats, report; commit."""
    videos, frames, events = tables
    so, video = cfg.storage_options, cfg.video
    lineage = {
        "model": plan.model,
        "prompt_set_hash": prompt_set_hash(video.prompts.model_dump()),
        "thresholds": video.events.model_dump(),
        "sample_fps": video.sample_fps,
        "head_sha256": head.sha256 if head else None,
    }
    with versioned(plan, so) as version:
        t0 = time.perf_counter()
        clocks = {
            r.url: (r.timeline, r.probe.get("rotation") or 0, r.media)
            for r in results
            if r.timeline
        }
        futures = [
            write_clips_task.submit(
                str(name), rows, version.root, lineage, so, clocks, video.decode_timeout_s
            )
            for (name,), rows in events.group_by("shard", maintain_order=True)
        ]
        outputs: list[WrittenFile] = []
        failed: dict[str, tuple[str, str]] = {}
        for files, bad in gather(futures, run):
            outputs += files
            failed |= bad
        events = mark_clip_failures(events, failed)
        outputs.append(write_sizes(outputs, version.root, so))
        for name, df in (("videos", videos), ("frames", frames), ("events", events)):
            outputs.append(write_table(df, version.url(f"{name}.parquet"), f"{name}.parquet", so))
        timings["publish_s"] = time.perf_counter() - t0
        tables = (videos, frames, events)
        stats = video_stats(cfg, plan.partition, tables, results, total_time(timings))
        thresholds = {"start": video.events.start, "stop": video.events.stop}
        thresholds["ood"] = video.ood.threshold

        def report(version: Version) -> list[str]:
            return write_video_report(videos, frames, events, stats, thresholds, version.root, so)

        extra = {
            "prompt_set_hash": lineage["prompt_set_hash"],
            "head": head.lineage() if head else None,
        }
        finish(cfg, plan, version, outputs, stats, report, extra)
    return stats


@flow(name="curate-video", log_prints=False)
def video_flow(config: dict[str, Any], partition: str | None = None, force: bool = False) -> dict:
    """Find near-miss moments in driving-recorder video and publish them as clips."""
    cfg = parse_config(config)
    if cfg.video is None:
        raise ConfigError("config: the video flow needs a 'video' section")
    return run_partition(cfg, "video", partition, force, _video_run, get_run_logger())


def _video_run(cfg: CurateConfig, plan: RunPlan, force: bool, run: str) -> dict:
    """embed -> detect -> publish for one partition (the caller holds its lock)."""
    log = get_run_logger()
    check_head(cfg, plan.files)
    t0 = time.perf_counter()
    copies = duplicate_videos(plan.inputs, cfg.storage_options)  # processed once each
    urls = [u for u in plan.urls if u not in copies]
    progress = Progress("video", cfg.dataset, plan.partition, len(urls), "video-s")
    results, prompts = score_stage(cfg, urls, force, run, progress, plan.urls)
    timings = {"score_s": time.perf_counter() - t0}
    t1 = time.perf_counter()
    head = run_head(cfg, plan.files, results)
    fps = {fp["url"]: fp for fp in plan.inputs}
    rows = [duplicate_row(u, first, fps[u]) for u, first in copies.items()]
    tables = detect(cfg, results, prompts, head, rows, plan.urls)
    timings["detect_s"] = time.perf_counter() - t1
    stats = publish(cfg, plan, tables, results, timings, run, head)
    publish_artifacts("video", stats, summary_markdown(stats, plan.final))
    log.info("published %s: %s, %d events", plan.final, stats["counts"], stats["events"])
    return {
        "status": "published",
        "partition": plan.partition,
        "uri": plan.final,
        "report": report_url(plan.final, cfg.storage_options),
        "counts": stats["counts"],
        "events": stats["events"],
    }


def run_video(cfg: CurateConfig, partition: str | None = None, force: bool = False) -> dict:
    """Run the video flow with the config's task runner (inputs and model checked first;
    a partition already published with the same inputs and config is skipped at once)."""
    if cfg.video is None:
        raise ConfigError("config: the video flow needs a 'video' section")
    plan = plan_run(cfg, "video", partition)
    if not force and already_published(plan, cfg.storage_options):
        return skipped(plan, cfg.storage_options)
    check_head(cfg, plan.files)  # before a runner, a cluster or a Prefect server starts
    with execution(cfg) as runner:
        return call_flow(
            video_flow.with_options(task_runner=runner),
            plan.final,
            config=cfg.model_dump(mode="json"),
            partition=plan.partition,
            force=force,
        )
