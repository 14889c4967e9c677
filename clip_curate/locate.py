"""What a URI points at in curated output, so commands can do the right thing with it.

`{output}` holds datasets, a dataset holds a folder per flow (`pool/`, `video/`), a flow
holds partition folders (dates), and a partition holds `manifest.json`, `_SUCCESS` and its
version folders (`v-...`). A user who passes the output root, a partition or a version
folder where a dataset was expected (or a typo) gets told which one it was and what to pass.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Literal

from tasks.errors import InputError
from tasks.io import storage
from tasks.publish.manifest import MANIFEST, SUCCESS, VERSION_PREFIX

FLOWS = ("pool", "video")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
Kind = Literal["nothing", "other", "root", "dataset", "flow", "partition", "version"]


class NothingPublished(InputError):
    """Nothing (published) where a command looked: one line saying what was found."""


@dataclass(frozen=True)
class Location:
    """What `uri` is; `dataset` is its `{output}/{dataset}` URI where it lies in one."""

    kind: Kind
    uri: str
    dataset: str | None = None
    flow: str | None = None
    partition: str | None = None
    datasets: tuple[str, ...] = ()  # an output root's datasets

    @property
    def partition_uri(self) -> str | None:
        if self.dataset and self.flow and self.partition:
            return storage.join(self.dataset, self.flow, self.partition)
        return None


def _split(uri: str) -> tuple[str, str]:
    parent, _, name = uri.rpartition("/")
    return parent, name


def _children(uri: str, so: dict[str, Any] | None) -> set[str]:
    return {u.rstrip("/").rsplit("/", 1)[-1] for u in storage.listdir(uri, so)} - {""}


def _is_partition(names: set[str], name: str) -> bool:
    """A partition folder: its pointer files, or (never published yet) a version folder."""
    if {MANIFEST, SUCCESS} & names:
        return True
    return bool(_DATE.fullmatch(name)) and any(n.startswith(VERSION_PREFIX) for n in names)


def _is_flow(uri: str, so: dict[str, Any] | None) -> bool:
    """A flow folder holds partition folders (an input folder of dated tars does not)."""
    dates = sorted((n for n in _children(uri, so) if _DATE.fullmatch(n)), reverse=True)
    return any(_is_partition(_children(storage.join(uri, d), so), d) for d in dates)


def _is_dataset(uri: str, so: dict[str, Any] | None) -> bool:
    flows = _children(uri, so) & set(FLOWS)
    return any(_is_flow(storage.join(uri, f), so) for f in sorted(flows))


def _absolute(uri: str) -> str:
    uri = uri.rstrip("/") or "/"
    return uri if "://" in uri else os.path.abspath(uri)


def locate(uri: str, storage_options: dict[str, Any] | None = None) -> Location:
    """Classify `uri`: an output root, a dataset, a flow, a partition, a version folder,
    something else, or nothing at all (a typo). Local paths come back absolute."""
    so, uri = storage_options, _absolute(uri)
    if not storage.exists(uri, so):
        return Location("nothing", uri)
    parent, name = _split(uri)
    grand, flow = _split(parent)
    if name.startswith(VERSION_PREFIX) and _is_partition(_children(parent, so), flow):
        dataset, flow_name = _split(grand)
        return Location("version", uri, dataset, flow_name, flow)
    if _is_partition(_children(uri, so), name) and flow in FLOWS:
        return Location("partition", uri, grand, flow, name)
    if name in FLOWS and _is_flow(uri, so):
        return Location("flow", uri, parent, name)
    if _is_dataset(uri, so):
        return Location("dataset", uri, uri)
    children = _children(uri, so)
    found = tuple(sorted(c for c in children if _is_dataset(storage.join(uri, c), so)))
    return Location("root", uri, datasets=found) if found else Location("other", uri)
