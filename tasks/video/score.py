"""Video score stage: one video in, cached probe + per-frame CLIP embeddings out.

Only what is expensive is cached (decode + image encoder), keyed by (video fingerprint,
model identity, sample fps). Zero-shot probabilities, the motion cue, fusion and event
detection are cheap matrix work on the cached embeddings, so changing prompts, fusion
weights or thresholds never decodes a video again.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch
from PIL import Image

from schemas.config import ModelConfig, VideoConfig, config_hash
from tasks.io import storage
from tasks.io.prefetch import prefetch
from tasks.io.storage import fingerprint_key
from tasks.model.clip import ClipModel, load_model, model_identity
from tasks.pool.score import read_embeddings
from tasks.video.decode import iter_frame_chunks, local_video
from tasks.video.probe import probe_video, read_sidecar
from tasks.video.zero_shot import prompt_set_embedding, prompt_set_hash

logger = logging.getLogger(__name__)

VIDEO_SCORE_VERSION = 1
FRAME_SCHEMA = {"frame_index": pl.Int64, "t_s": pl.Float64, "emb_row": pl.Int64}


@dataclass
class VideoScores:
    url: str
    key: str
    probe: dict[str, Any]  # a VIDEOS row without the flow-level columns
    frames: str  # parquet URL (frame_index, t_s, emb_row)
    embeddings: str
    cached: bool


def video_settings(video: VideoConfig, model_cfg: ModelConfig) -> dict[str, Any]:
    return {
        "version": VIDEO_SCORE_VERSION,
        "model": model_identity(model_cfg),
        "sample_fps": video.sample_fps,
        "max_duration_s": video.max_duration_s,
    }


def _paths(cache_root: str, key: str) -> tuple[str, str, str]:
    base = storage.join(cache_root, "video", "scores", key)
    return f"{base}.frames.parquet", f"{base}.emb.npy", f"{base}.probe.json"


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


def _chunks(url: str, so: dict | None, video: VideoConfig, model: ClipModel) -> Iterator[tuple]:
    size = model.image_size
    for idx, times, frames in iter_frame_chunks(
        url, so, video.sample_fps, size, video.chunk_frames
    ):
        yield idx, times, pixels(model, frames)


def embed_frames(
    url: str, so: dict | None, video: VideoConfig, model: ClipModel
) -> tuple[pl.DataFrame, np.ndarray]:
    """Decode sampled frames in bounded chunks (prefetched) and embed them."""
    tables, embs, n = [], [], 0
    for idx, times, pixels in prefetch(_chunks(url, so, video, model), 2, name="video-decode"):
        emb = model.encode_images(pixels).astype(np.float16)
        rows = np.arange(n, n + len(idx), dtype=np.int64)
        tables.append(pl.DataFrame({"frame_index": idx, "t_s": times, "emb_row": rows}))
        embs.append(emb)
        n += len(idx)
    table = pl.concat(tables) if tables else pl.DataFrame(schema=FRAME_SCHEMA)
    emb = np.concatenate(embs) if embs else np.zeros((0, 0), np.float16)
    return table.cast(FRAME_SCHEMA), emb


def _probe_and_embed(
    path: str, video: VideoConfig, model_cfg: ModelConfig
) -> tuple[dict[str, Any], pl.DataFrame, np.ndarray]:
    """Probe a local video and, when usable, embed its sampled frames; bad files never raise."""
    probe = probe_video(path, None, video.max_duration_s)
    table, emb = pl.DataFrame(schema=FRAME_SCHEMA), np.zeros((0, 0), np.float16)
    if probe["status"] != "ok":
        return probe, table, emb
    try:
        table, emb = embed_frames(path, None, video, load_model(model_cfg))
    except (RuntimeError, OSError, ValueError) as err:  # decord raises its own error types
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        probe.update(status="quarantined", error=f"decode_error: {reason}")
        return probe, pl.DataFrame(schema=FRAME_SCHEMA), np.zeros((0, 0), np.float16)
    if table.height == 0:
        probe.update(status="quarantined", error="no_frames")
    return probe, table, emb


def score_video(
    url: str,
    video: VideoConfig,
    model_cfg: ModelConfig,
    cache_root: str,
    storage_options: dict[str, Any] | None = None,
    force: bool = False,
) -> VideoScores:
    """Probe, decode and embed one video unless cached (the probe file is written last)."""
    fp = storage.fingerprint(url, storage_options)
    key = config_hash({"input": fp, "settings": video_settings(video, model_cfg)})
    frames_url, emb_url, probe_url = _paths(cache_root, key)
    if not force and storage.exists(probe_url, storage_options):
        probe = storage.read_json(probe_url, storage_options)
        return VideoScores(url, key, probe, frames_url, emb_url, cached=True)
    start = time.perf_counter()
    with local_video(url, storage_options) as path:  # remote videos are fetched once
        probe, table, emb = _probe_and_embed(path, video, model_cfg)
    probe.update(read_sidecar(url, storage_options), video=url, fingerprint=fingerprint_key(fp))
    buf = io.BytesIO()
    np.save(buf, emb, allow_pickle=False)
    storage.write_bytes(emb_url, buf.getvalue(), storage_options)
    storage.write_parquet(table, frames_url, storage_options)
    probe["score_seconds"] = round(time.perf_counter() - start, 3)
    storage.write_json(probe_url, probe, storage_options)
    logger.info("scored %s: %s, %d frames", url, probe["status"], table.height)
    return VideoScores(url, key, probe, frames_url, emb_url, cached=False)


def load_video_scores(vs: VideoScores, so: dict | None) -> tuple[pl.DataFrame, np.ndarray]:
    return storage.read_parquet(vs.frames, so), read_embeddings(vs.embeddings, so)


def prompt_embeddings(
    model_cfg: ModelConfig, prompts: dict[str, list[str]], cache_root: str, so: dict | None
) -> tuple[np.ndarray, np.ndarray, float]:
    """(near_miss set embedding, normal set embedding, logit scale), cached per model+prompts."""
    key = config_hash({"model": model_identity(model_cfg), "prompts": prompt_set_hash(prompts)})
    url = storage.join(cache_root, "video", "prompts", f"{key}.json")
    if storage.exists(url, so):
        data = storage.read_json(url, so)
    else:
        model = load_model(model_cfg)
        data = {
            "near_miss": prompt_set_embedding(model.encode_texts(prompts["near_miss"])).tolist(),
            "normal": prompt_set_embedding(model.encode_texts(prompts["normal"])).tolist(),
            "logit_scale": model.logit_scale,
        }
        storage.write_json(url, data, so)
    return np.asarray(data["near_miss"]), np.asarray(data["normal"]), float(data["logit_scale"])
