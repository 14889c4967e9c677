"""Worldwide metadata: a folder of per-language lists, and each list parsed once, cached.

`metadata` naming a folder switches balancing to worldwide mode: one list per metadata
language, `{code}.json` or `{code}.json.gz` (the format of `specs/metaclip.md`). Planning
hashes every file (`planned_files`: the hashes join the run key and the manifest); a run
then reads only the lists of the languages its captions are in. A list is parsed once per
file content: `load_language` keeps it in our cache (`tasks.io.cache`, keyed by the file's
sha256) as a parquet table of strings, whose own sha256 the entry's marker records and every
read checks. Nothing here is pickled, so the cache holds no code to run; the Aho-Corasick
automaton is rebuilt from the list in each process (`tasks.metaclip.matcher.get_matcher`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.config import BalanceConfig, ConfigError
from tasks.io import storage
from tasks.metaclip.metadata import Metadata, MetadataError, parse_metadata

logger = logging.getLogger(__name__)

FILE_NAME = re.compile(r"(?P<code>[A-Za-z0-9][A-Za-z0-9_-]{0,31})\.json(\.gz)?")
KEY = "pool.balance.metadata"  # the config key; per-file hashes are `KEY/<file name>`
NAMESPACE = "metaclip-metadata"
LIST_VERSION = 1  # bump when what the cached table holds changes
ENGLISH = "en"


def is_folder(url: str, so: dict[str, Any] | None = None) -> bool:
    """True when `url` is a folder (worldwide mode), False for a file (English-only)."""
    fs, path = storage.get_fs(url, so)
    return bool(fs.isdir(path))


def list_folder(url: str, so: dict[str, Any] | None = None) -> dict[str, str]:
    """{code: file URL} of the lists in `url`; other files (a README) are ignored."""
    found: dict[str, str] = {}
    for child in storage.listdir(url, so):
        name = child.rstrip("/").rsplit("/", 1)[-1]
        m = FILE_NAME.fullmatch(name)
        if not name.endswith((".json", ".json.gz")):
            continue
        if m is None:
            raise MetadataError(f"metadata: {child}: name a list {{code}}.json or {{code}}.json.gz")
        code = m.group("code")
        if code in found:
            raise MetadataError(f"metadata: {url} has two lists for {code!r}; keep one")
        found[code] = child
    if not found:
        raise MetadataError(f"metadata: {url} holds no {{code}}.json or {{code}}.json.gz list")
    return dict(sorted(found.items()))


def planned_files(bal: BalanceConfig, so: dict[str, Any] | None = None) -> dict[str, str]:
    """sha256 of the files `bal.metadata` names, by config key, checked against the config.

    A single file: `{KEY: sha256}` (English-only, as before). A folder: `KEY/<name>` per
    list plus `KEY` itself, the hash of that listing, so that a list added, removed or
    edited changes the run key. Settings that need a folder, and `t` without an English list,
    fail here with one line, before anything runs.
    """
    try:
        folder = is_folder(bal.metadata, so)
        if not folder:
            if bal.tail_fraction is not None or bal.languages is not None:
                what = "tail_fraction" if bal.tail_fraction is not None else "languages"
                raise ConfigError(
                    f"config: invalid value for 'pool.balance.{what}': it needs "
                    f"pool.balance.metadata to be a folder of per-language lists "
                    f"(worldwide mode); {bal.metadata} is one file"
                )
            return {KEY: storage.sha256_file(bal.metadata, so)}
        files = list_folder(bal.metadata, so)
        out = {f"{KEY}/{_name(u)}": storage.sha256_file(u, so) for u in files.values()}
    except (OSError, MetadataError) as err:
        reason = getattr(err, "strerror", None) or err
        msg = f"config: invalid value for '{KEY}': cannot read {bal.metadata}: {reason}"
        raise ConfigError(msg) from None
    if bal.tail_fraction is None and ENGLISH not in files:
        raise ConfigError(
            f"config: invalid value for 'pool.balance.t': t is English's threshold, but "
            f"{bal.metadata} has no en.json; add it or set pool.balance.tail_fraction"
        )
    out[KEY] = _digest(out)
    return dict(sorted(out.items()))


def _name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _digest(hashes: Mapping[str, str]) -> str:
    blob = json.dumps(dict(sorted(hashes.items())), separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class ListFile:
    """One language's list: where it is and the sha256 of its bytes (the cache key)."""

    code: str
    url: str
    sha256: str


@dataclass(frozen=True)
class MetadataFolder:
    """The per-language lists of a run, with their planned hashes, and the code mapping."""

    url: str
    files: dict[str, ListFile]
    languages: dict[str, str | None] = field(default_factory=dict)

    @property
    def identity(self) -> str:
        """Hash of every list's content and the mapping: what matching depends on."""
        hashes = {code: f.sha256 for code, f in sorted(self.files.items())}
        blob = json.dumps({"files": hashes, "languages": self.languages}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def metadata_code(self, lid: str | None) -> str | None:
        """The metadata language of a caption identified as `lid`, None when it has none."""
        if lid is None:
            return None
        code = self.languages.get(lid, lid)
        return code if code in self.files else None


def metadata_folder(
    bal: BalanceConfig, so: dict[str, Any] | None, planned: Mapping[str, str] | None = None
) -> MetadataFolder:
    """The run's folder, from the hashes planning took (`planned_files`) or hashed now."""
    planned = planned if planned is not None else planned_files(bal, so)
    files = list_folder(bal.metadata, so)
    lists = {}
    for code, url in files.items():
        sha = planned.get(f"{KEY}/{_name(url)}")
        if sha is None:
            raise MetadataError(f"metadata: {url} appeared while the run was going; re-run")
        lists[code] = ListFile(code, url, sha)
    listed = {f"{KEY}/{_name(u)}" for u in files.values()}
    gone = sorted(k for k in planned if k.startswith(f"{KEY}/") and k not in listed)
    if gone:
        name = gone[0][len(KEY) + 1 :]
        raise MetadataError(f"metadata: {name} left {bal.metadata} during the run; re-run")
    return MetadataFolder(bal.metadata, lists, dict(bal.languages or {}))


_loaded: dict[str, Metadata] = {}
_lock = threading.Lock()
_MAX_LOADED = 64


def load_language(
    lst: ListFile, cache_root: str, so: dict[str, Any] | None = None, force: bool = False
) -> Metadata:
    """Language `lst.code`'s list: from this process's memory, else our cache, else parsed
    from the file (which must still have the planned bytes) and cached."""
    with _lock:
        md = _loaded.get(lst.sha256)
    if md is not None and not force:
        return md
    md = _from_cache(lst, cache_root, so, force)
    with _lock:
        _loaded[lst.sha256] = md
        while len(_loaded) > _MAX_LOADED:
            del _loaded[next(iter(_loaded))]
    return md


def _from_cache(lst: ListFile, cache_root: str, so: dict[str, Any] | None, force: bool) -> Metadata:
    import polars as pl

    from tasks.io.cache import Attempt, Cache

    def compute(attempt: Attempt) -> dict[str, Any]:
        raw = storage.read_bytes(lst.url, so)
        if hashlib.sha256(raw).hexdigest() != lst.sha256:
            raise MetadataError(f"metadata: {lst.url} changed while the run was going; re-run")
        md = parse_metadata(raw, lst.url)
        buf = io.BytesIO()
        pl.DataFrame({"entry": list(md.entries)}, schema={"entry": pl.String}).write_parquet(buf)
        attempt.write_bytes("entries.parquet", buf.getvalue())
        table_sha = hashlib.sha256(buf.getvalue()).hexdigest()
        return {"entries": len(md), "list_sha256": md.sha256, "table_sha256": table_sha}

    cache = Cache(cache_root, so)
    parts = {"version": LIST_VERSION, "file_sha256": lst.sha256}
    hit = cache.get_or_compute(NAMESPACE, parts, compute, force=force)
    data = storage.read_bytes(hit.files["entries.parquet"], so)
    if hashlib.sha256(data).hexdigest() != hit.meta.get("table_sha256"):
        if force:
            raise MetadataError(f"metadata: cannot cache the list of {lst.url} intact")
        logger.warning("cached list of %s is damaged; parsing %s again", lst.code, lst.url)
        return _from_cache(lst, cache_root, so, force=True)
    entries = pl.read_parquet(io.BytesIO(data))["entry"].to_list()
    if len(entries) != hit.meta.get("entries"):
        raise MetadataError(f"metadata: cached list of {lst.url} has the wrong length")
    return Metadata(tuple(entries), str(hit.meta["list_sha256"]))
