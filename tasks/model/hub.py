"""Weights of open_clip pretrained tags: from the local Hugging Face cache, or not at all.

open_clip downloads a tag's weights through `huggingface_hub`, which retries every request
with backoff: on a machine without network (or with the hub blocked) a run spent a minute
in retries before failing, and a machine with the weights already downloaded still asked
the hub first. Here a tag whose files are in the cache is used without any request, and one
that is not fails at once when `HF_HUB_OFFLINE` is set or the hub (or the proxy in front of
it) does not accept a connection within a few seconds.
"""

from __future__ import annotations

import os
import socket
from typing import Any
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 5.0
WEIGHTS = "open_clip_pytorch_model.bin"  # open_clip's default file name in a hub repo
SAFE_WEIGHTS = "open_clip_model.safetensors"
_TRUE = {"1", "on", "yes", "true"}


def offline() -> bool:
    """`HF_HUB_OFFLINE` as huggingface_hub reads it (set now, or when the hub was imported)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE


def hub_files(tag_cfg: dict[str, Any]) -> tuple[str, list[str]] | None:
    """(repo, file names in the order open_clip tries them) of a tag served by the hub."""
    if not tag_cfg.get("hf_hub"):
        return None
    repo, filename = os.path.split(tag_cfg["hf_hub"])
    filename = filename or WEIGHTS
    names = [filename]
    if filename == WEIGHTS:  # open_clip prefers a safetensors twin when the repo has one
        names.insert(0, SAFE_WEIGHTS)
    elif filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    return repo, names


def cached_weights(tag_cfg: dict[str, Any]) -> str | None:
    """The tag's weights file in the local hub cache, when an earlier run downloaded it."""
    from huggingface_hub import try_to_load_from_cache

    found = hub_files(tag_cfg)
    if found is None:
        return None
    repo, names = found
    for name in names:
        path = try_to_load_from_cache(repo, name)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def _proxy(url: str) -> str | None:
    scheme = urlparse(url).scheme or "https"
    for var in (f"{scheme}_proxy", "all_proxy"):
        value = os.environ.get(var) or os.environ.get(var.upper())
        if value:
            return value
    return None


def unreachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why a TCP connection to `url`'s host (or its proxy) fails, or None when it opens."""
    target = _proxy(url) or url
    parsed = urlparse(target if "://" in target else f"http://{target}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname or "", port), timeout=timeout).close()
    except OSError as err:
        return f"{parsed.hostname}:{port} does not answer ({err.strerror or err})"
    return None


def why_not_download(tag_cfg: dict[str, Any]) -> str | None:
    """Why the tag's weights cannot be downloaded now (offline, host unreachable), or None."""
    from huggingface_hub import constants

    if tag_cfg.get("hf_hub"):
        if offline():
            return "HF_HUB_OFFLINE is set"
        url = constants.ENDPOINT
    else:
        url = tag_cfg.get("url") or ""
    if not url:
        return None
    why = unreachable(url)
    return f"the hub {url} is unreachable: {why}" if why else None
