"""A dataset's catalog: one small file per dataset and flow that lists its published partitions.

Planning a night, `curate ls`, the consumer API and the history checks of later nights would
otherwise read one manifest per partition, a cost that grows with every night. The catalog,
`{output}/{dataset}/{flow}/_catalog.json`, holds per published partition what those readers
need (version, run key, counts, model identity, what history it read and what it offers later
nights), so each of them reads one file.

The manifests stay the source of truth; the catalog is kept equal to them by the commit:

1. `begin` marks the partition `pending` with the version about to be committed;
2. the commit writes the partition's manifest (the publication itself);
3. `finish` replaces the partition's entry with one made from that manifest and clears the mark.

Both steps are compare-and-swap updates (`tasks.io.cas`), so commits of different partitions
at once never lose an entry. A run killed between 1 and 3 leaves its mark: every reader
resolves a pending partition from its manifest (one read), so what a reader sees always
equals the manifests, and the next commit writes the resolution back. A missing or unreadable
catalog is rebuilt from the manifests (`rebuild`), once.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from schemas.config import history_kinds_of
from schemas.tables import HISTORY_FILES, LATER_READ_FILES
from tasks.io import cas, storage
from tasks.publish.manifest import Published, read_published

logger = logging.getLogger(__name__)

CATALOG = "_catalog.json"
FORMAT = 1
MODEL_KEYS = ("name", "pretrained", "architecture_sha256", "checkpoint_sha256")
EMPTY_STATE = "empty"


class HistoryChanged(RuntimeError):
    """An earlier partition was published while this one was computed against older history."""


def flow_folder(output: str, dataset: str, flow: str) -> str:
    """`{output}/{dataset}/{flow}`: the folder of a flow's partitions and of its catalog."""
    return storage.join(output, dataset, flow)


def split_final(final: str) -> tuple[str, str]:
    """(flow folder, partition name) of a partition folder URL."""
    folder, _, name = final.rstrip("/").rpartition("/")
    return folder, name


@dataclass
class Catalog:
    """Published partitions of one flow of one dataset (pending marks already resolved)."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)  # as stored
    # derived history chains; a catalog is read, then at most changed once and written
    # (`_update`), never asked for states after a change
    _memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def before(self, partition: str) -> list[str]:
        return [n for n in self.names() if n < partition]

    def to_bytes(self) -> bytes:
        doc = {"format": FORMAT, "partitions": self.entries, "pending": self.pending}
        return json.dumps(doc, indent=1, sort_keys=True).encode()

    @staticmethod
    def parse(data: bytes) -> Catalog:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"not a catalog of format {FORMAT}")
        return Catalog(dict(doc.get("partitions") or {}), dict(doc.get("pending") or {}))

    # --- history: what later partitions read from earlier ones -----------------------------
    def _chain(self, kinds: tuple[str, ...]) -> tuple[list[str], list[str]]:
        """(names that offer one of `kinds`, in date order; the state after each): a hash
        chain, h = sha256(previous h, name, offers), so every state is one pass away."""
        key = ("chain", kinds)
        if key not in self._memo:
            names, states, h = [], [], EMPTY_STATE
            for name in self.names():
                offers = self.entries[name].get("offers") or {}
                got = [offers.get(k) for k in kinds]
                if any(got):
                    h = hashlib.sha256(json.dumps([h, name, got]).encode()).hexdigest()[:32]
                    names.append(name)
                    states.append(h)
            self._memo[key] = (names, states)
        return self._memo[key]

    def state(self, partition: str, kinds: list[str] | tuple[str, ...]) -> str:
        """Identity of the history a partition reads: every earlier partition that offers
        one of `kinds`, with the digest of what it offers. Equal states, equal history."""
        names, states = self._chain(tuple(kinds))
        at = bisect.bisect_left(names, partition)  # those before it
        return states[at - 1] if at else EMPTY_STATE

    def stale(self, partition: str) -> bool:
        """Published against a history that has changed since (an earlier date re-published,
        or published after it ran)."""
        read = (self.entries.get(partition) or {}).get("history")
        if not read:
            return False
        return read.get("state") != self.state(partition, read.get("kinds") or [])

    def stale_before(self, partition: str) -> list[str]:
        """Earlier partitions whose published content no longer matches their history."""
        return [n for n in self.before(partition) if self.stale(n)]


def _shas(published: Published) -> dict[str, Any]:
    """{file name within the version: sha256} from the manifest."""
    prefix = f"{published.version}/" if published.version else ""
    return {
        str(o.get("path", "")).removeprefix(prefix): o.get("sha256") for o in published.outputs()
    }


def offers(published: Published) -> dict[str, str | None]:
    """Digest, per kind of history, of the files this version offers later partitions (from
    the sha256s its manifest lists): a re-publish with the same content offers the same."""
    shas = _shas(published)
    out: dict[str, str | None] = {}
    for kind, names in HISTORY_FILES.items():
        found = [[n, shas[n]] for n in names if n in shas]
        out[kind] = hashlib.sha256(json.dumps(found).encode()).hexdigest()[:32] if found else None
    return out


def entry_of(published: Published, so: dict[str, Any] | None = None) -> dict[str, Any]:
    """A partition's catalog entry, from its manifest (older manifests without counts: from
    its stats.json)."""
    m = published.manifest
    counts, events = m.get("counts"), m.get("events")
    if counts is None:
        try:
            stats = storage.read_json(published.url("stats.json"), so)
            counts, events = stats.get("counts"), stats.get("events")
        except (OSError, ValueError):
            counts = {}
    model, shas = m.get("model") or {}, _shas(published)
    history = m.get("history")
    kinds = history_kinds_of(m.get("config"), m.get("flow") or "") if history is None else []
    if kinds:
        # published before history was recorded: it is taken to match the history as it is
        # when the catalog first lists it (`baseline`), so later changes make it stale
        history = {"kinds": kinds, "state": None}
    return {
        "version": published.version,
        "created": m.get("created"),
        "run_key": m.get("run_key"),
        "counts": counts or {},
        "events": events,
        "model": {k: model.get(k) for k in MODEL_KEYS},
        "history": history,
        "offers": offers(published),
        "history_files": sorted(n for n in LATER_READ_FILES if n in shas),
    }


def _resolve(cat: Catalog, folder: str, so: dict[str, Any] | None) -> Catalog:
    """Entries with every pending mark resolved from its partition's manifest; the marks
    whose version is not (yet) what the manifest names stay (a commit in flight, or one that
    was killed before its manifest: the next commit of that partition clears it)."""
    entries, left = dict(cat.entries), {}
    for name, mark in sorted(cat.pending.items()):
        published = read_published(storage.join(folder, name), so)
        if published is None:
            entries.pop(name, None)
        elif (entries.get(name) or {}).get("version") != published.version:
            entries[name] = entry_of(published, so)
        if published is None or published.version != mark.get("version"):
            left[name] = mark
    return Catalog(entries, left)


def _partition_names(folder: str, so: dict[str, Any] | None) -> list[str]:
    names = {u.rstrip("/").rsplit("/", 1)[-1] for u in storage.listdir(folder, so)}
    return sorted(n for n in names if n and n[0] not in "._")


def rebuild(folder: str, so: dict[str, Any] | None = None) -> Catalog:
    """The catalog of the flow folder from the manifests alone (one read per partition)."""
    entries = {}
    for name in _partition_names(folder, so):
        published = read_published(storage.join(folder, name), so)
        if published is not None:
            entries[name] = entry_of(published, so)
    return baseline(Catalog(entries))


def baseline(cat: Catalog) -> Catalog:
    """Entries published before history was recorded get the state their history has now
    (their best guess), written with the catalog: from then on a change makes them stale."""
    for name in cat.names():
        history = cat.entries[name].get("history")
        if history and history.get("state") is None:
            history["state"] = cat.state(name, history.get("kinds") or [])
    return cat


def _load(data: bytes | None, folder: str, so: dict[str, Any] | None) -> Catalog:
    if data is not None:
        try:
            return Catalog.parse(data)
        except (ValueError, TypeError, AttributeError) as err:
            logger.warning("catalog of %s is unreadable (%s): rebuilt", folder, err)
    return rebuild(folder, so)


def read_catalog(folder: str, so: dict[str, Any] | None = None) -> Catalog:
    """The published partitions of a flow folder as their manifests say, in one read (plus
    one per pending mark)."""
    data = cas.read(storage.join(folder, CATALOG), so)
    return _resolve(_load(data, folder, so), folder, so)


def write_rebuilt(folder: str, so: dict[str, Any] | None = None) -> Catalog:
    """Replace the catalog by one rebuilt from the manifests (a stale or damaged catalog)."""
    cat = rebuild(folder, so)
    cas.update(storage.join(folder, CATALOG), lambda _: cat.to_bytes(), so)
    return cat


def _update(final: str, so: dict[str, Any] | None, step: Any) -> None:
    folder, name = split_final(final)

    def change(data: bytes | None) -> bytes:
        cat = baseline(_resolve(_load(data, folder, so), folder, so))
        step(cat, name)
        return cat.to_bytes()

    cas.update(storage.join(folder, CATALOG), change, so)


def begin(
    final: str,
    version: str,
    so: dict[str, Any] | None = None,
    history: dict[str, Any] | None = None,
) -> None:
    """Mark the partition pending with `version` before its manifest is written.

    With `history` ({"kinds", "state"}: what the version was computed against), refuse with
    HistoryChanged when earlier partitions have changed since: the version would be published
    against a history that is no longer there.
    """

    def step(cat: Catalog, name: str) -> None:
        if history and history.get("kinds"):
            now = cat.state(name, history["kinds"])
            if now != history.get("state"):
                raise HistoryChanged(
                    f"{name}: earlier partitions were published while it was computed "
                    f"(history {history.get('state')} -> {now})"
                )
        cat.pending[name] = {"version": version}

    _update(final, so, step)


def finish(final: str, published: Published, so: dict[str, Any] | None = None) -> None:
    """Record the committed version as the partition's entry."""

    def step(cat: Catalog, name: str) -> None:
        cat.entries[name] = entry_of(published, so)
        cat.pending.pop(name, None)

    _update(final, so, step)


def record_held(final: str, held: dict[str, Any] | None, so: dict[str, Any] | None = None) -> None:
    """Note (or clear) a version held by the gate on the partition's entry, for `curate ls`."""

    def step(cat: Catalog, name: str) -> None:
        if name in cat.entries:
            entry = dict(cat.entries[name])
            if held:
                entry["held"] = held
            else:
                entry.pop("held", None)
            cat.entries[name] = entry

    _update(final, so, step)
