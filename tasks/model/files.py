"""Where a model's files come from: architecture JSONs, checkpoints, and their hashes.

Checkpoints are named by an open_clip pretrained tag (downloaded by open_clip), a local
path, or any fsspec URL. A remote checkpoint is fetched through the one cache
(`tasks.io.cache`) keyed by its URL *and* its current fingerprint (ETag, size), so a
replaced file is fetched again; concurrent processes wait for one download (inter-process
lock) that lands under its final name by an atomic rename. The sha256 of a local file is
cached by (path, size, mtime), so a nightly run does not re-hash gigabytes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

from schemas.config import ModelConfig, config_hash
from tasks.errors import InfraError
from tasks.io import storage
from tasks.io.cache import Attempt, Cache
from tasks.model import hub

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


class ModelLoadError(InfraError):
    """The model could not be built or its weights could not be loaded (one clear line)."""


def cache_dir() -> Path:
    """The local cache of fetched model files (`CURATE_CACHE_DIR`, else ~/.cache)."""
    return Path(os.environ.get("CURATE_CACHE_DIR", Path.home() / ".cache" / "clip-curate"))


def local_cache() -> Cache:
    return Cache(str(cache_dir()))


def is_checkpoint_ref(pretrained: str) -> bool:
    """A path or URL (rather than an open_clip pretrained tag)."""
    return "://" in pretrained or os.sep in pretrained or pretrained.endswith(CHECKPOINT_SUFFIXES)


def file_sha256(path: str) -> str:
    """sha256 of a local file, remembered across processes by (path, size, mtime)."""
    st = os.stat(path)
    parts = {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def compute(_: Attempt) -> dict[str, Any]:
        return {"sha256": storage.sha256_file(path)}

    return local_cache().get_or_compute("file-sha256", parts, compute).meta["sha256"]


def _download(url: str, path: str, attempt: Attempt) -> dict[str, Any]:
    """Copy a remote file into the attempt folder, hashing it on the way."""
    sha, name = hashlib.sha256(), Path(path).name
    with storage.open_write(attempt.url(name)) as dst, storage.open_read(url) as src:
        while chunk := src.read(storage.HASH_CHUNK):
            sha.update(chunk)
            dst.write(chunk)
    logger.info("fetched checkpoint %s", url)
    return {"name": name, "sha256": sha.hexdigest()}


def local_checkpoint(url: str) -> Path:
    """A local file for a checkpoint path or URL; remote ones are fetched once per version."""
    fs, path = storage.get_fs(url)
    if storage.is_local(fs):
        if not os.path.isfile(path):
            raise ModelLoadError(f"model.pretrained: checkpoint {url} not found")
        return Path(path)
    try:
        fp = storage.fingerprint(url)
    except FileNotFoundError:
        raise ModelLoadError(f"model.pretrained: checkpoint {url} not found") from None
    hit = local_cache().get_or_compute(
        "checkpoints",
        {"url": url, "fingerprint": fp},
        lambda attempt: _download(url, path, attempt),
        lock=True,
    )
    return Path(hit.files[hit.meta["name"]])


_ARCH_LOCK = threading.Lock()
_ARCH_NAMES: dict[str, str] = {}


def architecture_name(name: str) -> str:
    """Register an architecture JSON (local or remote) with open_clip once; return its name.

    The JSON is copied into the cache under its content hash, so what open_clip reads is
    exactly what was hashed. Registry names are returned unchanged.
    """
    if not name.endswith(".json"):
        return name
    import open_clip

    with _ARCH_LOCK:
        if name in _ARCH_NAMES:
            return _ARCH_NAMES[name]
        try:
            data = storage.read_bytes(name)
        except OSError as err:
            msg = f"model.name: cannot read architecture JSON {name}: {err}"
            raise ModelLoadError(msg) from None
        digest = hashlib.sha256(data).hexdigest()[:16]
        local = cache_dir() / "architectures" / digest / Path(name).name
        if not local.exists():
            storage.write_bytes(str(local), data)
        open_clip.add_model_config(local)
        _ARCH_NAMES[name] = local.stem
        return local.stem


def architecture_config(name: str) -> tuple[str, dict[str, Any]]:
    """(the name open_clip registers it under, its config), read without importing open_clip.

    A path to a JSON registers under its file stem; a registry name is one of the JSON
    files bundled with open_clip (what `open_clip.get_model_config` returns).
    """
    if name.endswith(".json"):
        try:
            return Path(name).stem, json.loads(storage.read_bytes(name))
        except (OSError, ValueError) as err:
            msg = f"model.name: cannot read architecture JSON {name}: {err}"
            raise ModelLoadError(msg) from None
    spec = importlib.util.find_spec("open_clip")
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0]) / "model_configs" / f"{name}.json" if folders else None
    if path is None or not path.is_file():
        raise ModelLoadError(f"model.name: unknown open_clip architecture '{name}'")
    return name, json.loads(path.read_text())


def planned_identity(cfg: ModelConfig) -> dict[str, Any]:
    """The model's identity from its files, as configured (for run keys and lineage).

    Imports neither torch nor open_clip, so a published partition is recognised in about
    a second. Device and precision are the configured ones (a CPU-only driver may plan a
    `cuda` run); a checkpoint file is named by its sha256 (remembered by path, size and
    mtime), an open_clip pretrained tag by the tag and the open_clip release that maps it
    to weights. The scoring workers resolve the rest (`tasks.model.clip.model_identity`).
    """
    name, arch = architecture_config(cfg.name)
    identity: dict[str, Any] = {
        "name": cfg.name,
        "architecture": name,
        "architecture_sha256": config_hash(arch),
        "pretrained": cfg.pretrained,
        "checkpoint_sha256": None,
        "precision": cfg.precision,
        "device": cfg.device,
    }
    if cfg.pretrained and is_checkpoint_ref(cfg.pretrained):
        identity["checkpoint_sha256"] = file_sha256(str(local_checkpoint(cfg.pretrained)))
    elif cfg.pretrained:
        identity["open_clip"] = metadata.version("open_clip_torch")
    return identity


def checkpoint_file(name: str, pretrained: str | None) -> str | None:
    """The local checkpoint file for a tag or path/URL (tags download through open_clip)."""
    if not pretrained:
        return None
    if is_checkpoint_ref(pretrained):
        return str(local_checkpoint(pretrained))
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise ModelLoadError(
            f"model.pretrained: '{pretrained}' is neither a checkpoint path nor an "
            f"open_clip tag of {name} (tags: {', '.join(tags) or 'none'})"
        )
    tag_cfg = open_clip.pretrained.get_pretrained_cfg(name, pretrained)
    if cached := hub.cached_weights(tag_cfg):  # no network at all once downloaded
        return cached
    if why := hub.why_not_download(tag_cfg):  # offline or unreachable: say so in seconds
        raise ModelLoadError(
            f"model.pretrained: '{pretrained}' is not downloaded yet and {why}; point "
            "model.pretrained at a checkpoint file instead (a path or URL of a "
            ".pt/.bin/.safetensors, e.g. one downloaded where the hub is reachable)"
        )
    try:
        return open_clip.pretrained.download_pretrained(tag_cfg)
    except Exception as err:  # hub/network errors come in many types
        raise ModelLoadError(f"model.pretrained: cannot fetch '{pretrained}': {err}") from None
