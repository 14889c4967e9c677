"""CLIP model loading and encoding: one cached model per worker process.

Architectures come from open_clip's registry by name or from an architecture JSON file;
weights from an open_clip pretrained tag or a checkpoint path/URL (any fsspec URL). The
checkpoint's sha256 goes into lineage; checkpoints are only ever loaded with
`weights_only=True`, so a hostile file cannot run code.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from schemas.config import ModelConfig
from tasks.model.files import (
    ModelLoadError,
    architecture_name,
    checkpoint_file,
    file_sha256,
    is_checkpoint_ref,
    planned_identity,
)

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_supports_fast_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AMX or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in (" amx_bf16", " avx512_bf16"))


def bf16_slowdown(size: int = 256, repeats: int = 5) -> float:
    """How many times slower a bf16 matmul runs than an fp32 one on this CPU (measured)."""
    import time

    def best(dtype: torch.dtype) -> float:
        a = torch.randn(size, size).to(dtype)
        a @ a  # warm up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ a
            times.append(time.perf_counter() - t0)
        return min(times)

    with torch.inference_mode():
        return best(torch.bfloat16) / max(best(torch.float32), 1e-9)


def warn_slow_precision(precision: str, device: str) -> None:
    """An explicit bf16 on a CPU without native bf16 runs several times slower: say so."""
    if precision == "bf16" and device == "cpu" and not cpu_supports_fast_bf16():
        logger.warning(
            "model.precision bf16 on a CPU without AVX512-BF16/AMX: a bf16 matmul runs %.1fx "
            "slower than fp32 here (measured); use precision: auto (fp32 on this CPU)",
            bf16_slowdown(),
        )


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("model.device is 'cuda' but no CUDA device is available")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """`auto` picks bf16 where the hardware runs it fast, else fp32."""
    if precision != "auto":
        return precision
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_fast_bf16() else "fp32"


@dataclass
class ClipModel:
    """A loaded CLIP model with its preprocessing, tokenizer and lineage."""

    model: Any
    preprocess: Any
    tokenizer: Any
    device: str
    precision: str
    info: dict[str, Any]
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, tuple | list) else size)

    @property
    def logit_scale(self) -> float:
        """exp(logit_scale), taken from the fp32 weights before any cast."""
        return float(self.info["logit_scale"])

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    def stage(self, pixels: list[torch.Tensor]) -> torch.Tensor:
        """Stack a batch for the model; on CUDA into pinned memory so the copy is async.

        Called in the producer thread, off the model's critical path.
        """
        batch = torch.stack(pixels)
        return batch.pin_memory() if self.device == "cuda" else batch

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        """L2-normalised fp32 image embeddings for a preprocessed batch (N, 3, H, W)."""
        pixels = pixels.to(self.device, self.dtype, non_blocking=True)
        with self.lock:
            emb = self.model.encode_image(pixels)
        emb = torch.nn.functional.normalize(emb.float(), dim=-1)
        return emb.cpu().numpy()

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """L2-normalised fp32 text embeddings."""
        return self.encode_tokens(self.tokenize(texts))

    @torch.inference_mode()
    def encode_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        """L2-normalised fp32 text embeddings of already tokenized texts."""
        tokens = tokens.to(self.device, non_blocking=True)
        with self.lock:
            emb = self.model.encode_text(tokens)
        emb = torch.nn.functional.normalize(emb.float(), dim=-1)
        return emb.cpu().numpy()


def model_identity(cfg: ModelConfig) -> dict[str, Any]:
    """What the scores depend on, resolved on the machine that runs the model (cache keys).

    The planned identity (`tasks.model.files.planned_identity`) with `auto` device and
    precision resolved here, and an open_clip tag's checkpoint named by its sha256.
    """
    identity = planned_identity(cfg)
    architecture_name(cfg.name)  # registered with open_clip: the tag lookup needs it
    device = resolve_device(cfg.device)
    identity.update(device=device, precision=resolve_precision(cfg.precision, device))
    if cfg.pretrained and not is_checkpoint_ref(cfg.pretrained):
        ckpt = checkpoint_file(identity["architecture"], cfg.pretrained)
        identity["checkpoint_sha256"] = file_sha256(ckpt) if ckpt else None
    return identity


TAG_PREPROCESS = ("mean", "std", "interpolation", "resize_mode")  # what open_clip tags set


def tag_preprocess(name: str, pretrained: str | None) -> dict[str, Any]:
    """`create_model_and_transforms` arguments for the preprocessing an open_clip tag sets
    (every tag sets exactly these four), as `pretrained=tag` would apply them."""
    if not pretrained or is_checkpoint_ref(pretrained):
        return {}
    from open_clip.pretrained import get_pretrained_cfg

    tag = get_pretrained_cfg(name, pretrained)
    return {f"image_{k}": tag[k] for k in TAG_PREPROCESS if tag.get(k) is not None}


def _build(cfg: ModelConfig) -> ClipModel:
    import open_clip

    info = model_identity(cfg)  # resolves the weights file (a tag's from the hub cache)
    name, pretrained = info["architecture"], cfg.pretrained
    if not pretrained:
        logger.warning("model.pretrained is empty: RANDOM weights (benchmarks only)")
    try:
        # the weights as a file, loaded while the model is built: open_clip then neither asks
        # the hub again nor warns that the model was "initialized randomly" before we load it
        model, _, preprocess = open_clip.create_model_and_transforms(
            name,
            pretrained=checkpoint_file(name, pretrained),
            weights_only=True,
            **tag_preprocess(name, pretrained),
        )
    except Exception as err:  # open_clip raises many kinds; the user needs one line
        raise ModelLoadError(f"model: cannot load {cfg.name} / {pretrained}: {err}") from err
    info["logit_scale"] = float(model.logit_scale.detach().float().exp())
    # Low precision = the weights themselves in bf16/fp16: on CPUs with AVX512-BF16 this runs
    # about twice as fast as autocast, and scores stay within 0.002 of fp32 (tests check 0.01).
    warn_slow_precision(info["precision"], info["device"])
    model = model.to(info["device"], DTYPES[info["precision"]]).eval()
    logger.info(
        "loaded model %s (%s, %s on %s)", name, pretrained, info["precision"], info["device"]
    )
    tokenizer = open_clip.get_tokenizer(name)
    return ClipModel(model, preprocess, tokenizer, info["device"], info["precision"], info)


_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _cached(cfg_json: str) -> ClipModel:
    return _build(ModelConfig.model_validate_json(cfg_json))


def load_model(cfg: ModelConfig) -> ClipModel:
    """The process-wide model for `cfg`: built on first use, then shared by every task."""
    with _LOCK:
        return _cached(cfg.model_copy(update={"batch_size": 1}).model_dump_json())
