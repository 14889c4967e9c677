"""Planning a partition, light enough to decide "already published" in about a second.

Everything here avoids Prefect, torch and open_clip (seconds of imports each): the config,
input listing and fingerprints (fsspec), the model's identity from its files
(`tasks.model.files`), and the published manifest. A nightly re-run or a backfill over
published dates ends here, before any task runner, cluster or Prefect server starts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sys
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from schemas.config import ConfigError, CurateConfig, config_hash, history_kinds_of, redacted
from schemas.partition import check_date
from tasks.errors import InputError, short
from tasks.io import storage
from tasks.metaclip.folder import planned_files
from tasks.model.files import planned_identity
from tasks.pool.dedup_step import prior_partitions
from tasks.pool.sources import pool_inputs, shard_fingerprint
from tasks.publish.catalog import Catalog, flow_folder, read_catalog
from tasks.publish.manifest import partition_url, read_manifest, read_published
from tasks.video.sidecar import video_fingerprint

PUBLISH_VERSION = 3  # bump when what a published partition holds changes meaning (3: raw captions)


@dataclass
class RunPlan:
    """One partition of one flow: its inputs and the key of what it would publish."""

    flow: str
    partition: str
    urls: list[str]
    inputs: list[dict[str, Any]]  # fingerprints, in input order
    model: dict[str, Any]
    key: str
    final: str
    files: dict[str, str] = field(default_factory=dict)  # config key -> sha256 of its file
    # dedup with scope: dataset: the earlier published partitions compared against
    prior: dict[str, dict[str, Any]] = field(default_factory=dict)
    # what the partition reads from earlier ones ({"kinds", "state", "through"}), or None
    history: dict[str, Any] | None = None
    # earlier published partitions to bring up to date first, in date order: from the first
    # whose history changed since it ran (each is re-run only where its run key changed)
    stale: list[str] = field(default_factory=list)


def today(tz: str) -> str:
    return dt.datetime.now(ZoneInfo(tz)).date().isoformat()


def resolve_partition(partition: str | None, tz: str) -> str:
    """The partition to run: as given, else the scheduled date of this flow run, else today.

    A scheduled run that starts late (or is retried the next day) still processes the date it
    was scheduled for: the scheduled start time, in the config's timezone, decides. Outside
    Prefect (Prefect not even imported) there is no scheduled run to ask.
    """
    if partition:
        return check_date(partition)
    if "prefect" in sys.modules:
        from prefect.runtime import flow_run

        scheduled = flow_run.scheduled_start_time if flow_run.id else None
        if scheduled is not None:
            return scheduled.astimezone(ZoneInfo(tz)).date().isoformat()
    return today(tz)


def with_date(pattern: str | list[str], partition: str) -> str | list[str]:
    """Substitute `{date}` in input URIs with the partition."""
    if isinstance(pattern, list):
        return [p.replace("{date}", partition) for p in pattern]
    return pattern.replace("{date}", partition)


def list_inputs(
    pattern: str | list[str], partition: str, so: dict[str, Any], key: str = "pool.input"
) -> list[str]:
    """The partition's input files, sorted; an empty or unreadable root is an InputError."""
    pattern = with_date(pattern, partition)
    try:
        urls = storage.expand_inputs(pattern, so)
    except Exception as err:
        raise InputError(f"{key}: cannot list {pattern}: {short(err)}") from None
    if not urls:
        raise InputError(f"{key}: no input files match {pattern}{_glob_hint(pattern, key, so)}")
    return urls


def _glob_hint(pattern: str | list[str], key: str, so: dict[str, Any]) -> str:
    """What to write instead when the pattern names a folder rather than the files in it."""
    folders = [p for p in ([pattern] if isinstance(pattern, str) else pattern) if _is_dir(p, so)]
    if not folders:
        return ""
    folder, files = folders[0].rstrip("/"), "*.mp4" if key.startswith("video") else "*.tar"
    return f" ({folder} is a folder: add a glob for its files, e.g. {folder}/{files})"


def _is_dir(url: str, so: dict[str, Any]) -> bool:
    try:
        fs, path = storage.get_fs(url, so)
        return bool(fs.isdir(path))
    except Exception:  # an unreachable store: the listing's own error says enough
        return False


def output_config(cfg: CurateConfig, flow: str) -> dict[str, Any]:
    """The part of the config that decides a flow's published output (for the run key)."""
    data = redacted(cfg)
    keep = {"dataset", "model", flow}
    out = {k: v for k, v in data.items() if k in keep}
    out["model"] = {k: v for k, v in out["model"].items() if k != "batch_size"}
    balance = (out.get("pool") or {}).get("balance") if flow == "pool" else None
    if isinstance(balance, dict):  # worldwide settings only when set: older keys stay valid
        for key in ("tail_fraction", "languages"):
            if balance.get(key) is None:
                balance.pop(key, None)
    if flow == "video" and isinstance(out.get("video"), dict):
        # the head's bytes count through `config_files` (pinned or not, one key)
        out["video"] = {k: v for k, v in out["video"].items() if k != "head_sha256"}
    return out


def run_key(
    inputs: list[dict[str, Any]],
    cfg_part: dict[str, Any],
    model: dict[str, Any],
    files: dict[str, str] | None = None,
    history: dict[str, Any] | None = None,
) -> str:
    """Identity of a partition's content: same key = same published samples."""
    parts = {"v": PUBLISH_VERSION, "inputs": inputs, "config": cfg_part, "model": model}
    if files:  # only when the config names files, so keys of runs without any stay the same
        parts["files"] = files
    if history:  # what it read from earlier partitions (dedup index, running counts)
        parts["history"] = {"kinds": history["kinds"], "state": history["state"]}
    return config_hash(parts)


HISTORY_SETTINGS = {"dedup": "pool.dedup.scope: dataset", "counts": "pool.balance.running_counts"}


def history_kinds(cfg: CurateConfig, flow: str) -> list[str]:
    """What a partition of `flow` reads from earlier partitions under this config: `dedup`
    (dataset-scope dedup), `counts` (MetaCLIP running counts). Empty: it depends on its own
    inputs only, and dates can run in any order or at once."""
    return history_kinds_of(cfg.model_dump(mode="json"), flow)


def history_of(cat: Catalog, partition: str, kinds: list[str]) -> dict[str, Any]:
    """The history a partition would read now: its kinds, their state, the last partition."""
    before = [n for n in cat.before(partition) if any(cat.entries[n].get("offers", {}).get(k)
                                                         for k in kinds)]  # fmt: skip
    return {"kinds": kinds, "state": cat.state(partition, kinds), "through": (before or [None])[-1]}


def config_files(cfg: CurateConfig, flow: str) -> dict[str, str]:
    """sha256 of every file the config names whose content decides the output (MetaCLIP
    metadata, heads), by config key: a file edited in place under the same path changes the
    run key, so the partition is re-published instead of skipped."""
    paths: dict[str, str] = {}
    out: dict[str, str] = {}
    if flow == "pool" and cfg.pool is not None:
        if cfg.pool.balance is not None:  # one file, or every list of a worldwide folder
            out |= planned_files(cfg.pool.balance, cfg.storage_options)
        for name, head in cfg.pool.heads.items():
            paths[f"pool.heads.{name}.path"] = head.path
    if flow == "video" and cfg.video is not None and cfg.video.head:
        paths["video.head"] = cfg.video.head
    for key, path in sorted(paths.items()):
        try:
            out[key] = storage.sha256_file(path, cfg.storage_options)
        except (OSError, ValueError) as err:
            reason = getattr(err, "strerror", None) or err
            msg = f"config: invalid value for '{key}': cannot read {path}: {reason}"
            raise ConfigError(msg) from None
    pinned = cfg.video.head_sha256 if flow == "video" and cfg.video is not None else None
    if pinned and out.get("video.head") != pinned:  # the user's own pin: refuse other bytes
        raise ConfigError(
            f"config: invalid value for 'video.head': {paths['video.head']} has sha256 "
            f"{out['video.head'][:16]}..., not the pinned {pinned[:16]}... (video.head_sha256)"
        )
    return dict(sorted(out.items()))


def read_planned(cfg: CurateConfig, files: dict[str, str], key: str, path: str) -> bytes:
    """The bytes of a file the config names (`config_files`), refused unless they are the
    bytes planned into the run key: one mechanism for every such file (heads, metadata)."""
    try:
        data = storage.read_bytes(path, cfg.storage_options)
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or err
        msg = f"config: invalid value for '{key}': cannot read {path}: {reason}"
        raise ConfigError(msg) from None
    if hashlib.sha256(data).hexdigest() != files.get(key):
        raise ConfigError(
            f"config: invalid value for '{key}': {path} changed while the run was going "
            "(re-run to publish with the new file)"
        )
    return data


def input_fingerprint(
    flow: str, url: str, so: dict[str, Any], inputs: list[str] | None = None
) -> dict[str, Any]:
    """What an input's published output depends on: its bytes, and the files that come
    with it (a video's sidecar json, chosen among the partition's `inputs`; img2dataset's
    metadata parquet beside a tar)."""
    if flow == "video":
        return video_fingerprint(url, so, inputs or ())
    return shard_fingerprint(url, so)


def plan_run(cfg: CurateConfig, flow: str, partition: str | None) -> RunPlan:
    """Resolve the partition, list and fingerprint its inputs, derive the run key.

    The model identity here is the configured one (`device: cuda` is not checked against
    this machine, which may be a CPU-only driver); workers resolve it where they run.
    """
    section = getattr(cfg, flow)
    if section is None:
        raise ConfigError(f"config: the {flow} flow needs a '{flow}' section")
    partition = resolve_partition(partition, cfg.schedule.timezone)
    so = cfg.storage_options
    urls = list_inputs(section.input, partition, so, f"{flow}.input")
    if flow == "pool":
        urls = pool_inputs(urls)
    model = planned_identity(cfg.model)
    inputs = [input_fingerprint(flow, u, so, urls) for u in urls]
    files = config_files(cfg, flow)
    prior, history, stale = {}, None, []
    kinds = history_kinds(cfg, flow)
    if kinds:  # one read: the catalog says what every earlier partition offers
        cat = read_catalog(flow_folder(cfg.output, cfg.dataset, flow), so)
        history, changed = history_of(cat, partition, kinds), cat.stale_before(partition)
        # from the first one whose history changed on, every earlier partition may change
        stale = [n for n in cat.before(partition) if changed and n >= changed[0]]
        if "dedup" in kinds:
            prior = prior_partitions(cat, partition)
    key = run_key(inputs, output_config(cfg, flow), model, files, history)
    final = partition_url(cfg.output, cfg.dataset, flow, partition)
    return RunPlan(flow, partition, urls, inputs, model, key, final, files, prior, history, stale)


def already_published(plan: RunPlan, so: dict[str, Any]) -> bool:
    """True when the partition is published with the same inputs, config, model and history,
    and every earlier partition it reads is itself up to date."""
    if plan.stale:
        return False
    manifest = read_manifest(plan.final, so)
    return bool(manifest and manifest.get("run_key") == plan.key)


def report_url(final: str, so: dict[str, Any]) -> str | None:
    """Where the published version's report is (readers follow the manifest)."""
    published = read_published(final, so)
    return published.url("report.md") if published else None


def skipped(plan: RunPlan, so: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": "skipped",
        "partition": plan.partition,
        "uri": plan.final,
        "report": report_url(plan.final, so),
    }
