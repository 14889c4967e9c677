"""Video score stage: one video in, cached probe + per-frame CLIP embeddings out.

Only what is expensive is cached (decode + image encoder, through `tasks.io.cache`), keyed
by (video fingerprint, model identity, sample fps). With each frame's embedding the cache
holds the picture statistics of the out-of-distribution score (`tasks.video.ood`), taken
from the decoded pixels (at the model's input size, before the crop) while they are at
hand, and the video's timeline (`tasks.video.decoding.timeline`: every frame's
presentation time, which the clip stage cuts by). Zero-shot probabilities, a head, the
motion cue, fusion, OOD flags and event detection are cheap matrix work on the cached
table, so changing prompts, heads, fusion weights or thresholds never decodes a video
again. A video that cannot be decoded is a quarantined row; a model, device or store
failure fails the task and caches nothing (`tasks.errors`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
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
from tasks.video.decoding.decode import Chunk
from tasks.video.decoding.isolated import FrameRequest, Probed, frames_in_helper
from tasks.video.decoding.local import local_video
from tasks.video.decoding.probe import quarantine_row
from tasks.video.decoding.remux import RemuxStore
from tasks.video.decoding.timeline import Timeline
from tasks.video.ood import frame_stats
from tasks.video.recovery.copies import Candidate
from tasks.video.zero_shot import prompt_set_embedding, prompt_set_hash

logger = logging.getLogger(__name__)

# 3: OOD picture statistics per frame, resolved model in the meta; 4: one clock (t_s is the
# picture's presentation time, the picture shown at each target), upright frames in their
# displayed aspect, decoders decord / decord_remux / pyav, the timeline cached; 5: cut files
# recovered (a readable prefix, or rebuilt with `references`), `reference` in the probe
VIDEO_SCORE_VERSION = 5
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
    timeline: str | None = None  # the frames' clock (`Timeline.to_array`), None if quarantined
    media: str | None = None  # a recovered copy's URL: clips are cut from it instead
    # the identity of the model that embedded the frames, as resolved where it ran
    model: dict[str, Any] = field(default_factory=dict)


def video_settings(
    video: VideoConfig, model_cfg: ModelConfig, references: list[Candidate] | None = None
) -> dict[str, Any]:
    settings = {
        "version": VIDEO_SCORE_VERSION,
        "model": model_identity(model_cfg),
        "sample_fps": video.sample_fps,
        "max_duration_s": video.max_duration_s,
    }
    if references:  # a moov-less file rebuilt with these (tried in order)
        settings["references"] = [c.fingerprint for c in references]
    return settings


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


def _prepared(chunks: Iterator[Chunk], model: ClipModel) -> Iterator[tuple]:
    """(indices, times, model input, picture statistics) per chunk, in the decode thread.

    The previous chunk's last frame goes along, so a frozen picture is seen across chunks.
    """
    prev = None
    for idx, times, frames in chunks:
        stats = frame_stats(frames, prev)
        prev = frames[-1].copy()
        yield idx, times, pixels(model, frames), stats


def embed_frames(
    chunks: Iterator[Chunk], model: ClipModel, run: str | None = None
) -> tuple[pl.DataFrame, np.ndarray]:
    """Embed the sampled frames of a probed video, decoded in bounded chunks (prefetched).

    Raises `SampleError` when the file does not decode; checks for cancellation per chunk.
    """
    tables, embs, n = [], [], 0
    for idx, times, batch, stats in prefetch(_prepared(chunks, model), 2, name="video-decode"):
        cancel.check(run)
        emb = model.encode_images(batch).astype(np.float16)
        rows = np.arange(n, n + len(idx), dtype=np.int64)
        tables.append(pl.DataFrame({"frame_index": idx, "t_s": times, "emb_row": rows, **stats}))
        embs.append(emb)
        n += len(idx)
    table = pl.concat(tables) if tables else pl.DataFrame(schema=FRAME_SCHEMA)
    emb = np.concatenate(embs) if embs else np.zeros((0, 0), np.float16)
    return table.cast(FRAME_SCHEMA), emb


Scored = tuple[dict[str, Any], pl.DataFrame, np.ndarray, Probed | None]


def frame_request(
    path: str,
    url: str,
    video: VideoConfig,
    model: ClipModel,
    store: RemuxStore,
    references: list[Candidate] | None = None,
) -> FrameRequest:
    """What the decoding helper needs to probe a local video and decode its samples."""
    _, threads = score_sizing(cpu_count(), model.device)  # the model keeps the other cores
    return FrameRequest(
        path=path,
        url=url,
        max_duration_s=video.max_duration_s,
        sample_fps=video.sample_fps,
        size=model.image_size,
        chunk_frames=video.chunk_frames,
        threads=threads,
        store=asdict(store),
        references=[[c.url, c.fingerprint] for c in references or []],
        storage_options=store.storage_options,
    )


def _probe_and_embed(
    path: str,
    url: str,
    video: VideoConfig,
    model: ClipModel,
    run: str | None,
    store: RemuxStore,
    references: list[Candidate] | None = None,
) -> Scored:
    """Probe a local video and, when usable, embed its sampled frames. The decoding runs in
    a helper process (`tasks.isolation`): a crash or a hang there quarantines this video."""
    empty = pl.DataFrame(schema=FRAME_SCHEMA), np.zeros((0, 0), np.float16)
    req = frame_request(path, url, video, model, store, references)
    try:
        probed, chunks = frames_in_helper(req, video.decode_timeout_s)
    except SampleError as err:  # the helper died or hung while probing
        return quarantine_row(url, err.code, err.detail), *empty, None
    probe = probed.row
    if probed.timeline is None:
        return probe, *empty, None
    try:
        table, emb = embed_frames(chunks, model, run)
    except SampleError as err:
        probe.update(status="quarantined", error=err.code, error_detail=err.detail)
        return probe, *empty, None
    if table.height == 0:
        probe.update(status="quarantined", error="no_frames")
        return probe, *empty, None
    return probe, table, emb, probed


def _compute(
    url: str,
    video: VideoConfig,
    model_cfg: ModelConfig,
    cache_root: str,
    so: dict[str, Any] | None,
    run: str | None,
    attempt: Attempt,
    references: list[Candidate] | None = None,
) -> dict[str, Any]:
    start = time.perf_counter()
    model = load_model(model_cfg)  # a model that cannot load fails the task: nothing cached
    store = RemuxStore(cache_root, dict(so or {}), storage.fingerprint(url, so))
    with local_video(url, so) as path:  # a remote video is fetched once
        probe, table, emb, source = _probe_and_embed(
            path, url, video, model, run, store, references
        )
    attempt.write_bytes("emb.npy", storage.npy_bytes(emb))
    attempt.write_parquet("frames.parquet", table)
    if source is not None:
        attempt.write_bytes("timeline.npy", storage.npy_bytes(source.timeline.to_array()))
    media = source.media if source is not None else None
    seconds = time.perf_counter() - start
    duration = probe.get("duration_s") or 0.0
    logger.info(
        "scored %s: %s (%s), %d frames in %.1fs (%.2f video-s/s)",
        url,
        probe["status"],
        probe.get("decoder"),
        table.height,
        seconds,
        duration / seconds if seconds > 0 else 0.0,
    )
    identity = {k: v for k, v in model.info.items() if k != "logit_scale"}
    return {"probe": probe, "seconds": round(seconds, 3), "model": identity, "media": media}


def score_video(
    url: str,
    video: VideoConfig,
    model_cfg: ModelConfig,
    cache_root: str,
    storage_options: dict[str, Any] | None = None,
    force: bool = False,
    run: str | None = None,
    references: list[str] | None = None,
) -> VideoScores:
    """Probe, decode and embed one video unless the cache holds it for this input and model.

    `references` are healthy recordings to rebuild a moov-less file with (tried in order);
    they are part of the key."""
    so = storage_options
    cands = [Candidate(u, storage.fingerprint(u, so)) for u in references or []]
    hit, fp = per_input(
        cache_root,
        so,
        NAMESPACE,
        url,
        video_settings(video, model_cfg, cands),
        lambda attempt: _compute(url, video, model_cfg, cache_root, so, run, attempt, cands),
        force,
    )
    return _scores(url, hit, fp)


def _scores(url: str, hit: Hit, fp: dict[str, Any]) -> VideoScores:
    probe = {**hit.meta["probe"], "video": url, "fingerprint": storage.fingerprint_key(fp)}
    files = hit.files
    model = hit.meta["model"]
    return VideoScores(
        url,
        hit.key,
        probe,
        files["frames.parquet"],
        files["emb.npy"],
        hit.cached,
        model=model,
        timeline=files.get("timeline.npy"),
        media=hit.meta.get("media"),
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


def load_timeline(url: str | None, so: dict | None) -> Timeline | None:
    """A scored video's clock (`VideoScores.timeline`), None for a quarantined one."""
    return None if url is None else Timeline.from_array(storage.read_npy(url, so))


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
