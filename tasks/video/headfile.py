"""The video flow's head file (`video.head`): checked against the model that embedded frames.

A head changes what a run publishes, so its bytes are part of the run key like every file the
config names (`flows.plan.config_files`: sha256 by config key, in the manifest's
`config_files`), and the flow reads them through `flows.plan.read_planned`, which refuses bytes
other than the planned ones. Here the bytes are parsed and checked against the model identity
the score stage *resolved* (with the checkpoint's sha256 even for an open_clip tag), never
the planned one. Every problem is a `ConfigError`: one line, exit status 2.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schemas.config import ConfigError
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
