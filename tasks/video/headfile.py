"""The video flow's head file (`video.head`): pinned by content, checked against the model.

A head changes what a run publishes, so its bytes must be part of the run key: the flow pins
`video.head_sha256` when it plans (`pin_head`), which puts the digest into the run key, the
config hash and the manifest, and `load_run_head` later uses only bytes with that digest. The
head is checked against the model identity the score stage *resolved* (with the checkpoint's
sha256 even for an open_clip tag), never the planned one. Every problem is a `ConfigError`:
one line, exit status 2.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schemas.config import ConfigError, CurateConfig, VideoConfig
from tasks.io import storage
from tasks.model.heads import HeadMismatch
from tasks.video.head import GdaHead, load_head
from tasks.video.zero_shot import prompt_set_hash

KEY = "video.head"


@dataclass(frozen=True)
class RunHead:
    """A loaded GDA head with what lineage needs to name it."""

    head: GdaHead
    alpha: float
    meta: dict[str, str]
    path: str
    sha256: str

    def lineage(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "alpha": self.alpha,
            "shrinkage": self.head.shrinkage,
            "label_counts": {"negative": self.head.counts[0], "positive": self.head.counts[1]},
            "prompt_set_hash": self.meta.get("prompt_set_hash"),
        }


def _read(path: str, so: dict[str, Any] | None) -> tuple[bytes, str]:
    try:
        data = storage.read_bytes(path, so)
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or err
        msg = f"config: invalid value for '{KEY}': cannot read {path}: {reason}"
        raise ConfigError(msg) from None
    return data, hashlib.sha256(data).hexdigest()


def _check_pin(path: str, sha: str, pinned: str | None) -> None:
    if pinned is not None and pinned != sha:
        raise ConfigError(
            f"config: invalid value for '{KEY}': {path} has sha256 {sha[:16]}..., not the "
            f"pinned {pinned[:16]}... (video.head_sha256): the file changed"
        )


def pin_head(cfg: CurateConfig) -> CurateConfig:
    """`cfg` with `video.head_sha256` set to the digest of the file at `video.head` (a pin
    already there must match it); unchanged without a head."""
    video = cfg.video
    if video is None or not video.head:
        return cfg
    _, sha = _read(video.head, cfg.storage_options)
    _check_pin(video.head, sha, video.head_sha256)
    return cfg.model_copy(update={"video": video.model_copy(update={"head_sha256": sha})})


def load_run_head(
    video: VideoConfig, model_identity: Mapping[str, Any], so: dict[str, Any] | None
) -> RunHead | None:
    """The head at `video.head` for the model that embedded the frames, or None without one.

    Refuses bytes other than the pinned ones and a head made for another model.
    """
    if not video.head:
        return None
    data, sha = _read(video.head, so)
    _check_pin(video.head, sha, video.head_sha256)
    return parse_run_head(data, video.head, sha, model_identity)


def parse_run_head(data: bytes, path: str, sha: str, model_identity: Mapping[str, Any]) -> RunHead:
    """`load_head` with its failures as one config line naming the file."""
    try:
        head, alpha, meta = load_head(data, model_identity)
    except HeadMismatch as err:
        raise ConfigError(f"config: invalid value for '{KEY}': {path}: {err}") from None
    return RunHead(head, alpha, meta, path, sha)


def prompts_differ(run_head: RunHead, prompts: Mapping[str, list[str]]) -> bool:
    """True when the head was fitted with other prompts (its alpha was chosen for those)."""
    fitted = run_head.meta.get("prompt_set_hash")
    return bool(fitted) and fitted != prompt_set_hash(prompts)
