"""Video score stage: one video in, cached probe + per-frame CLIP embeddings out.

Only what is expensive is cached (decode + image encoder, through `tasks.io.cache`), keyed
by (video fingerprint, model identity, sample fps). With each frame's embedding the cache
holds the picture statistics of the out-of-distribution score (`tasks.video.ood`), taken
from the decoded pixels (at the model's input size, before the crop) while they are at
hand. Zero-shot probabilities, a head, the motion cue, fusion, OOD flags and event
detection are cheap matrix work on the cached table, so changing prompts, heads, fusion
weights or thresholds never decodes a video again. A video that cannot be decoded is a
quarantined row; a model, device or store failure fails the task and caches nothing
(`tasks.errors`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import torch
from PIL import Image

from schemas.config import ModelConfig, VideoConfig
from tasks import cancel
from tasks.errors import SampleError
from tasks.io import storage
from tasks.io.cache import Attempt, Cache, Hit, per_input
from tasks.io.prefetch import prefetch
from tasks.model.clip import ClipModel, load_model, model_identity
from tasks.parallel import cpu_count, score_sizing
from tasks.video.decode import iter_frame_chunks, local_video
from tasks.video.ood import frame_stats
from tasks.video.probe import probe_local
from tasks.video.zero_shot import prompt_set_embedding, prompt_set_hash

logger = logging.getLogger(__name__)

VIDEO_SCORE_VERSION = 3  # 3: OOD picture statistics per frame, resolved model in the meta
PROMPT_VERSION = 1
NAMESPACE = "video-scores"
# the picture statistics of `tasks.video.ood.frame_stats`, one column each
OOD_STATS = (
    "mean_luma",
    "std_luma",
    "saturated_fraction",
    "frame_diff",
    "laplacian_energy",
    "featureless_fraction",
)
FRAME_SCHEMA = {
    "frame_index": pl.Int64,
    "t_s": pl.Float64,
    "emb_row": pl.Int64,
    **{k: pl.Float64 for k in OOD_STATS},
}


@dataclass
class VideoScores:
    url: str
    key: str
    probe: dict[str, Any]  # a VIDEOS row without the flow-level columns
    frames: str  # parquet URL (FRAME_SCHEMA)
    embeddings: str
    cached: bool
    # the identity of the model that embedded the frames, as resolved where it ran
    model: dict[str, Any] = field(default_factory=dict)


def video_settings(video: VideoConfig, model_cfg: ModelConfig) -> dict[str, Any]:
    return {
        "version": VIDEO_SCORE_VERSION,
        "model": model_identity(model_cfg),
        "sample_fps": video.sample_fps,
        "max_duration_s": video.max_duration_s,
    }


def _normalize_stats(model: ClipModel) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(mean, std) of the model's preprocess, when it ends in a plain Normalize."""
    steps = getattr(model.preprocess, "transforms", [])
    norm = steps[-1] if steps else None
    if type(norm).__name__ != "Normalize":
        return None
    return torch.tensor(norm.mean).view(1, 3, 1, 1), torch.tensor(norm.std).view(1, 3, 1, 1)


def pixels(model: ClipModel, frames: np.ndarray) -> torch.Tensor:
    """Model input for a chunk of RGB frames, vectorised over the chunk.

    decord already resized each frame so that its short side is the model's input size;
    what open_clip's preprocess still does (its resize is then a no-op) is a center crop
    and a normalisation, done here for the whole chunk at once instead of frame by frame
    through PIL. Frames of another size fall back to the preprocess itself.
    """
    size, stats = model.image_size, _normalize_stats(model)
    h, w = frames.shape[1:3]
    if stats is None or min(h, w) != size:
        return model.stage([model.preprocess(Image.fromarray(f)) for f in frames])
    top, left = round((h - size) / 2.0), round((w - size) / 2.0)  # as CenterCrop
    crop = torch.from_numpy(np.ascontiguousarray(frames[:, top : top + size, left : left + size]))
    batch = crop.permute(0, 3, 1, 2).float().div_(255.0).sub_(stats[0]).div_(stats[1])
    return model.stage(list(batch.contiguous())) if model.device == "cuda" else batch.contiguous()


def _chunks(path: str, video: VideoConfig, model: ClipModel) -> Iterator[tuple]:
    """(indices, times, model input, picture statistics) per chunk, in the decode thread.

    The previous chunk's last frame goes along, so a frozen picture is seen across chunks.
    """
    size, prev = model.image_size, None
    _, threads = score_sizing(cpu_count(), model.device)  # the model keeps the other cores
    for idx, times, frames in iter_frame_chunks(
        path, None, video.sample_fps, size, video.chunk_frames, threads
    ):
        stats = frame_stats(frames, prev)
        prev = frames[-1].copy()
        yield idx, times, pixels(model, frames), stats


def embed_frames(
    path: str, video: VideoConfig, model: ClipModel, run: str | None = None
) -> tuple[pl.DataFrame, np.ndarray]:
    """Decode sampled frames of a local video in bounded chunks (prefetched), embed them.

    Raises `SampleError` when the file does not decode; checks for cancellation per chunk.
    """
    tables, embs, n = [], [], 0
    for idx, times, batch, stats in prefetch(_chunks(path, video, model), 2, name="video-decode"):
        cancel.check(run)
        emb = model.encode_images(batch).astype(np.float16)
        rows = np.arange(n, n + len(idx), dtype=np.int64)
        tables.append(pl.DataFrame({"frame_index": idx, "t_s": times, "emb_row": rows, **stats}))
        embs.append(emb)
        n += len(idx)
    table = pl.concat(tables) if tables else pl.DataFrame(schema=FRAME_SCHEMA)
    emb = np.concatenate(embs) if embs else np.zeros((0, 0), np.float16)
    return table.cast(FRAME_SCHEMA), emb


def _probe_and_embed(
    path: str, url: str, video: VideoConfig, model: ClipModel, run: str | None
) -> tuple[dict[str, Any], pl.DataFrame, np.ndarray]:
    """Probe a local video and, when usable, embed its sampled frames."""
    probe = probe_local(path, url, video.max_duration_s)
    table, emb = pl.DataFrame(schema=FRAME_SCHEMA), np.zeros((0, 0), np.float16)
    if probe["status"] != "ok":
        return probe, table, emb
    try:
        table, emb = embed_frames(path, video, model, run)
    except SampleError as err:
        probe.update(status="quarantined", error=err.code, error_detail=err.detail)
        return probe, pl.DataFrame(schema=FRAME_SCHEMA), np.zeros((0, 0), np.float16)
    if table.height == 0:
        probe.update(status="quarantined", error="no_frames")
    return probe, table, emb


def _compute(
    url: str,
    video: VideoConfig,
    model_cfg: ModelConfig,
    so: dict[str, Any] | None,
    run: str | None,
    attempt: Attempt,
) -> dict[str, Any]:
    start = time.perf_counter()
    model = load_model(model_cfg)  # a model that cannot load fails the task: nothing cached
    with local_video(url, so) as path:  # a remote video is fetched once
        probe, table, emb = _probe_and_embed(path, url, video, model, run)
    attempt.write_bytes("emb.npy", storage.npy_bytes(emb))
    attempt.write_parquet("frames.parquet", table)
    seconds = time.perf_counter() - start
    duration = probe.get("duration_s") or 0.0
    logger.info(
        "scored %s: %s, %d frames in %.1fs (%.2f video-s/s)",
        url,
        probe["status"],
        table.height,
        seconds,
        duration / seconds if seconds > 0 else 0.0,
    )
    identity = {k: v for k, v in model.info.items() if k != "logit_scale"}
    return {"probe": probe, "seconds": round(seconds, 3), "model": identity}


def score_video(
    url: str,
    video: VideoConfig,
    model_cfg: ModelConfig,
    cache_root: str,
    storage_options: dict[str, Any] | None = None,
    force: bool = False,
    run: str | None = None,
) -> VideoScores:
    """Probe, decode and embed one video unless the cache holds it for this input and model."""
    hit, fp = per_input(
        cache_root,
        storage_options,
        NAMESPACE,
        url,
        video_settings(video, model_cfg),
        lambda attempt: _compute(url, video, model_cfg, storage_options, run, attempt),
        force,
    )
    return _scores(url, hit, fp)


def _scores(url: str, hit: Hit, fp: dict[str, Any]) -> VideoScores:
    probe = {**hit.meta["probe"], "video": url, "fingerprint": storage.fingerprint_key(fp)}
    files = hit.files
    model = hit.meta["model"]
    return VideoScores(
        url, hit.key, probe, files["frames.parquet"], files["emb.npy"], hit.cached, model
    )


def cached_video_scores(
    url: str,
    video: VideoConfig,
    model_cfg: ModelConfig,
    cache_root: str,
    storage_options: dict[str, Any] | None = None,
) -> VideoScores | None:
    """What `score_video` would read back from the cache (same key), or None: no decode,
    no model (the identity is resolved from the model's files, as for the key)."""
    fp = storage.fingerprint(url, storage_options)
    parts = {"input": fp, "settings": video_settings(video, model_cfg)}
    hit = Cache(cache_root, storage_options).lookup(NAMESPACE, parts)
    return None if hit is None else _scores(url, hit, fp)


def load_video_scores(vs: VideoScores, so: dict | None) -> tuple[pl.DataFrame, np.ndarray]:
    return storage.read_parquet(vs.frames, so), storage.read_npy(vs.embeddings, so)


def prompt_embeddings(
    model_cfg: ModelConfig, prompts: dict[str, list[str]], cache_root: str, so: dict | None
) -> tuple[np.ndarray, np.ndarray, float]:
    """(near_miss set embedding, normal set embedding, logit scale), cached per model+prompts."""

    def compute(_: Attempt) -> dict[str, Any]:
        model = load_model(model_cfg)
        return {
            "near_miss": prompt_set_embedding(model.encode_texts(prompts["near_miss"])).tolist(),
            "normal": prompt_set_embedding(model.encode_texts(prompts["normal"])).tolist(),
            "logit_scale": model.logit_scale,
        }

    parts = {
        "version": PROMPT_VERSION,
        "model": model_identity(model_cfg),
        "prompts": prompt_set_hash(prompts),
    }
    data = Cache(cache_root, so).get_or_compute("video-prompts", parts, compute).meta
    return np.asarray(data["near_miss"]), np.asarray(data["normal"]), float(data["logit_scale"])
