"""`curate nearmiss fit|eval` and `curate heads convert`: heads made and measured on labels.

Both commands work on the labelled videos among a partition's `video.input`, with exactly
the video flow's machinery: the score stage's cache (a video already embedded for this
model is read back, with no decode and no CLIP), the flow's `score-video` tasks for the
others (same runner, same cache entries, so a later `curate run video` reuses them), and
its `detect` for frame scores and events. Nothing is published.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from prefect import flow

from flows.common import cache_root, execution, model_runs_here
from flows.plan import InputError, config_files, list_inputs, resolve_partition
from flows.progress import Progress
from flows.video import Prompts, check_head, detect, run_head, score_stage
from schemas.config import ConfigError, CurateConfig, parse_config
from schemas.tables import SCORED_VIDEO
from tasks import cancel
from tasks.io import storage
from tasks.video.evaluation import metrics_document, video_evals, write_eval
from tasks.video.fit import FitError, VideoFrames, common_identity, fit_head, labelled_frames
from tasks.video.headfile import RunHead
from tasks.video.labels import LabelError, LabelRow, match_inputs, read_labels
from tasks.video.score import (
    VideoScores,
    cached_video_scores,
    load_video_scores,
    prompt_embeddings,
)
from tasks.video.zero_shot import prompt_set_hash

logger = logging.getLogger(__name__)


@dataclass
class Labelled:
    """The labelled videos of one partition, scored."""

    cfg: CurateConfig
    partition: str
    labels: list[LabelRow]
    results: list[VideoScores]
    prompts: Prompts
    scored: int  # videos the score stage ran for (the others came from the cache)
    unknown: list[str]  # label names no input fits
    inputs: list[str]  # every input of the partition (sidecars are read among them)


def labelled_inputs(
    cfg: CurateConfig, labels: list[LabelRow], partition: str
) -> tuple[list[str], list[str], list[str]]:
    """(the partition's inputs the labels name, in input order; the label names no input
    fits; every input of the partition). A name fitting two inputs is an input error."""
    urls = list_inputs(cfg.video.input, partition, cfg.storage_options, "video.input")
    try:
        chosen, unknown = match_inputs(labels, urls)
    except LabelError as err:
        raise InputError(str(err)) from None
    if not chosen:
        raise InputError(
            f"labels: none of the {len(unknown)} video(s) they name is among video.input of "
            f"partition {partition}"
        )
    if unknown:
        logger.warning("labels name %d video(s) not in the inputs: %s", len(unknown), unknown)
    return chosen, unknown, urls


@flow(name="curate-nearmiss-scores", log_prints=False)
def nearmiss_scores_flow(config: dict[str, Any], urls: list[str]) -> tuple[list, Prompts]:
    """The video flow's score stage for the labelled videos not cached yet, and the prompts."""
    cfg = parse_config(config)
    token = cancel.new_token()
    progress = Progress("nearmiss", cfg.dataset, "labelled", len(urls), "video-s")
    results, prompts = score_stage(cfg, urls, False, token, progress)
    cancel.forget(token)
    return results, prompts


def score_labelled(cfg: CurateConfig, labels_path: str, partition: str | None) -> Labelled:
    """Read the labels, find their videos, take their scores from the cache or score them."""
    if cfg.video is None:
        raise ConfigError("config: nearmiss needs a 'video' section")
    labels = read_labels(labels_path)
    partition = resolve_partition(partition, cfg.schedule.timezone)
    urls, unknown, inputs = labelled_inputs(cfg, labels, partition)
    results, prompts, scored = score_urls(cfg, urls)
    return Labelled(cfg, partition, labels, results, prompts, scored, unknown, inputs)


def score_urls(cfg: CurateConfig, urls: list[str]) -> tuple[list[VideoScores], Prompts, int]:
    """The videos' scores, in `urls` order, from the cache or from the video flow's score
    stage (same tasks, runner and cache entries); the prompts; how many were scored."""
    so, cache = cfg.storage_options, cache_root(cfg)
    # the cache key holds the model identity resolved where the model runs: a driver without
    # the configured GPU cannot look entries up, the flow's tasks do
    here = model_runs_here(cfg)
    found = {
        u: cached_video_scores(u, cfg.video, cfg.model, cache, so) if here else None for u in urls
    }
    missing = [u for u, hit in found.items() if hit is None]
    n_cached = len(urls) - len(missing)
    logger.info("%d video(s): %d cached, %d to score", len(urls), n_cached, len(missing))
    if missing:
        with execution(cfg) as runner:
            scored, prompts = nearmiss_scores_flow.with_options(task_runner=runner)(
                config=cfg.model_dump(mode="json"), urls=missing
            )
        found.update(zip(missing, scored, strict=True))
    else:
        prompts = prompt_embeddings(cfg.model, cfg.video.prompts.model_dump(), cache, so)
    return [found[u] for u in urls], prompts, len(missing)


def with_head(cfg: CurateConfig, head: str | None) -> CurateConfig:
    video = cfg.video.model_copy(update={"head": head, "head_sha256": None})
    return cfg.model_copy(update={"video": video})


def fit(cfg: CurateConfig, labels_path: str, partition: str | None, out: str) -> dict[str, Any]:
    """`curate nearmiss fit`: a GDA head from the labelled videos, written to `out`."""
    data = score_labelled(cfg, labels_path, partition)
    so = cfg.storage_options
    ok = [r for r in data.results if r.probe["status"] in SCORED_VIDEO]
    videos = [VideoFrames(r.url, float(r.probe["fps"]), *load_video_scores(r, so)) for r in ok]
    try:
        frames = labelled_frames(videos, data.labels, data.prompts, cfg.video)
        identity = common_identity(r.model for r in ok)
        prompt_hash = prompt_set_hash(cfg.video.prompts.model_dump())
        blob, summary = fit_head(frames, identity, prompt_hash)
    except FitError as err:
        raise InputError(str(err)) from None
    storage.write_bytes(out, blob, so)
    quarantined = [r.url for r in data.results if r.probe["status"] not in SCORED_VIDEO]
    return {
        **summary,
        "out": out,
        "partition": data.partition,
        "videos_scored": data.scored,
        "videos_cached": len(data.results) - data.scored,
        "quarantined": quarantined,
        "unknown_videos": data.unknown,
    }


def without_telemetry(cfg: CurateConfig) -> CurateConfig:
    fusion = cfg.video.fusion.model_copy(update={"telemetry_weight": 0.0})
    return cfg.model_copy(update={"video": cfg.video.model_copy(update={"fusion": fusion})})


def variant_tables(cfg: CurateConfig, data: Labelled, run: RunHead | None) -> dict[str, Any]:
    """`detect`'s tables per evaluation variant (`tasks.video.evaluation.VARIANTS`): with
    and without the head, with and without the telemetry cue; None where one does not
    apply (no head, or no labelled video with telemetry, or a telemetry weight of 0)."""
    tables: dict[str, Any] = {}
    for name, head, telemetry in (
        ("zero_shot", None, False),
        ("with_head", run, False),
        ("with_telemetry", None, True),
        ("with_head_telemetry", run, True),
    ):
        if name.startswith("with_head") and run is None:
            tables[name] = None
            continue
        variant = with_head(cfg, None) if head is None else cfg
        variant = variant if telemetry else without_telemetry(variant)
        tables[name] = detect(variant, data.results, data.prompts, head, inputs=data.inputs)
    has = tables["zero_shot"][1]["telemetry"].is_not_null().any()
    if not has or cfg.video.fusion.telemetry_weight <= 0:
        tables["with_telemetry"] = tables["with_head_telemetry"] = None
    return tables


def evaluate(
    cfg: CurateConfig,
    labels_path: str,
    partition: str | None,
    head: str | None,
    out: str,
) -> dict[str, Any]:
    """`curate nearmiss eval`: metrics of zero-shot alone and with the head (`--head`, else
    `video.head`), written to `out`; returns metrics.json's content."""
    if head:  # a pin in the config was for the config's own head
        cfg = with_head(cfg, head)
    files = config_files(cfg, "video")  # the head's bytes, as a run would plan them
    check_head(cfg, files)  # a head for another model fails before any video is scored
    data = score_labelled(cfg, labels_path, partition)
    run = run_head(cfg, files, data.results)
    tables = variant_tables(cfg, data, run)
    rate = cfg.video.sample_fps
    evals = {k: video_evals(t, data.labels, rate) if t else None for k, t in tables.items()}
    evaluated = {u for u, _ in evals["zero_shot"]}
    extra = {
        "dataset": cfg.dataset,
        "partition": data.partition,
        "labels": labels_path,
        "model_name": cfg.model.name,
        "model": data.results[0].model if data.results else None,
        "head": run.lineage() if run else None,
        "videos_evaluated": len(evaluated),
        "positive_spans": sum(len(v.spans) for _, v in evals["zero_shot"]),
        "label_spans_clipped": sum(v.spans_clipped for _, v in evals["zero_shot"]),
        "unknown_videos": data.unknown,
        "not_evaluated": sorted({r.url for r in data.results} - evaluated),
        "videos_scored": data.scored,
        "videos_cached": len(data.results) - data.scored,
    }
    doc = metrics_document(evals, extra)
    frames = {k: t[1] for k, t in tables.items() if t}
    write_eval(out, doc, evals, frames, cfg.storage_options)
    return doc


def convert(
    cfg: CurateConfig, state_dict: str, out: str, activation: str, normalize: bool
) -> dict[str, Any]:
    """`curate heads convert`: a plain PyTorch state dict (weights_only=True) as our head
    format, stamped with the model identity as the score stages resolve it."""
    from tasks.model.clip import model_identity
    from tasks.model.heads import convert_state_dict, load_torch_state_dict

    identity = model_identity(cfg.model)
    state = load_torch_state_dict(state_dict)
    blob = convert_state_dict(state, identity, activation, normalize)  # type: ignore[arg-type]
    storage.write_bytes(out, blob, cfg.storage_options)
    keys = ("name", "architecture", "pretrained", "checkpoint_sha256")
    shapes = [list(v.shape) for k, v in state.items() if k.endswith("weight")]
    return {"out": out, "weights": shapes, "model": {k: identity.get(k) for k in keys}}
