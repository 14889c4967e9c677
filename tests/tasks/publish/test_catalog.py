"""The dataset catalog equals the manifests: after commits, concurrent commits, re-publishes,
holds and kills at every step of the commit; and the history it derives (issues 19, 25)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from tasks.io import cas, storage
from tasks.publish import catalog
from tasks.publish.catalog import CATALOG, Catalog, HistoryChanged, read_catalog, rebuild
from tasks.publish.commit import begin, commit, hold
from tasks.publish.manifest import read_published
from tasks.publish.writer import write_file

pytest_plugins = ["tests.s3_fixture"]  # the `s3` and `bucket` fixtures


def publish(folder: str, name: str, so: dict | None = None, offer: bytes = b"idx", **extra):
    """Commit a version of partition `name` holding a dedup index file with `offer` bytes."""
    version = begin(storage.join(folder, name), so)
    outputs = [
        write_file(version.url("stats.json"), "stats.json", b'{"counts": {"input": 3}}', so),
        write_file(version.url("dedup/index.parquet"), "dedup/index.parquet", offer, so),
    ]
    manifest = {"partition": name, "run_key": f"k-{name}", "counts": {"input": 3}, **extra}
    return commit(version, manifest, outputs)


def entries(cat: Catalog) -> dict:
    return {n: e for n, e in cat.entries.items()}


@pytest.fixture(params=["local", "s3"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict | None]:
    if request.param == "local":
        return str(tmp_path / "out" / "ds" / "pool"), None
    s3 = request.getfixturevalue("s3")
    return f"{request.getfixturevalue('bucket')}/out/ds/pool", s3.storage_options


def test_catalog_follows_commits_and_equals_a_rebuild(where):
    folder, so = where
    publish(folder, "2026-01-01", so)
    publish(folder, "2026-01-02", so)
    again = publish(folder, "2026-01-01", so, offer=b"other")  # a re-publish replaces it
    cat = read_catalog(folder, so)
    assert cat.names() == ["2026-01-01", "2026-01-02"]
    assert cat.entries["2026-01-01"]["version"] == again.version
    assert cat.entries["2026-01-02"]["counts"] == {"input": 3}
    assert cat.entries["2026-01-02"]["history_files"] == ["dedup/index.parquet"]
    assert cat.pending == {}
    assert entries(cat) == entries(rebuild(folder, so))


def test_a_missing_or_damaged_catalog_is_rebuilt_from_the_manifests(where):
    folder, so = where
    publish(folder, "2026-01-01", so)
    want = entries(read_catalog(folder, so))
    url = storage.join(folder, CATALOG)
    storage.remove(url, so)
    assert entries(read_catalog(folder, so)) == want
    storage.write_bytes(url, b"{not json", so)
    assert entries(read_catalog(folder, so)) == want
    publish(folder, "2026-01-02", so)  # the next commit writes a good one again
    assert Catalog.parse(storage.read_bytes(url, so)).names() == ["2026-01-01", "2026-01-02"]


@pytest.mark.parametrize("point", ["after_begin", "after_manifest"])
def test_a_commit_killed_mid_way_leaves_readers_seeing_the_manifests(where, monkeypatch, point):
    """A kill between the catalog's pending mark and its final entry: readers resolve the
    mark from the manifest, so they see exactly what is published."""
    folder, so = where
    first = publish(folder, "2026-01-01", so)

    def killed(*a, **k):
        raise KeyboardInterrupt("killed")

    target = "write_pointer" if point == "after_begin" else "mark_success"
    import tasks.publish.commit as commit_module

    monkeypatch.setattr(commit_module, target, killed)
    with pytest.raises(KeyboardInterrupt):
        publish(folder, "2026-01-01", so, offer=b"new")
    monkeypatch.undo()
    cat = read_catalog(folder, so)
    now = read_published(storage.join(folder, "2026-01-01"), so)
    assert cat.entries["2026-01-01"]["version"] == now.version
    if point == "after_begin":
        assert now.version == first.version  # nothing was published
    else:
        assert now.version != first.version
    assert entries(cat) == entries(rebuild(folder, so))
    publish(folder, "2026-01-02", so)  # a later commit writes the resolution back
    stored = Catalog.parse(storage.read_bytes(storage.join(folder, CATALOG), so))
    assert stored.entries["2026-01-01"]["version"] == now.version


def _commit_many(folder: str, name: str, so: dict | None, n: int) -> None:
    for i in range(n):
        publish(folder, name, so, offer=f"{name}-{i}".encode())


def test_concurrent_commits_of_different_partitions_never_lose_an_entry(where):
    """Backfill --max-parallel: commits of several dates at once (separate processes, so no
    Python lock helps) all land in the catalog."""
    folder, so = where
    names = ["2026-02-01", "2026-02-02", "2026-02-03"]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_commit_many, args=(folder, n, so, 4)) for n in names]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    cat = read_catalog(folder, so)
    assert cat.names() == names
    assert cat.pending == {}
    assert entries(cat) == entries(rebuild(folder, so))


def test_cas_update_serialises_writers(where):
    """Each of 3 processes adds 10 lines one update at a time: all 30 are there."""
    folder, so = where
    url = storage.join(folder, "counter.txt")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_lines, args=(url, so, f"w{i}", 10)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    lines = storage.read_bytes(url, so).decode().split()
    assert sorted(lines) == sorted(f"w{i}-{j}" for i in range(3) for j in range(10))


def _append_lines(url: str, so: dict | None, who: str, n: int) -> None:
    for j in range(n):
        cas.update(url, lambda old, j=j: (old or b"") + f"{who}-{j}\n".encode(), so)


# --- history ---------------------------------------------------------------------------------


def hist(cat: Catalog, name: str) -> dict:
    return {"kinds": ["dedup"], "state": cat.state(name, ["dedup"])}


def test_state_and_staleness_follow_what_earlier_partitions_offer(tmp_path):
    folder = str(tmp_path / "ds" / "pool")
    empty = read_catalog(folder)
    publish(folder, "2026-03-02", history=hist(empty, "2026-03-02"))
    cat = read_catalog(folder)
    assert not cat.stale("2026-03-02")
    publish(folder, "2026-03-01", offer=b"a")  # an earlier date published later
    cat = read_catalog(folder)
    assert cat.stale("2026-03-02") and cat.stale_before("2026-03-03") == ["2026-03-02"]
    # 02 re-run against the new history is fresh again
    publish(folder, "2026-03-02", history=hist(cat, "2026-03-02"))
    assert not read_catalog(folder).stale("2026-03-02")
    # re-publishing 01 with the same content offers the same: 02 stays fresh
    publish(folder, "2026-03-01", offer=b"a")
    assert not read_catalog(folder).stale("2026-03-02")
    # ... with other content it does not
    publish(folder, "2026-03-01", offer=b"b")
    assert read_catalog(folder).stale("2026-03-02")
    # later partitions never count: 02's history ignores 03
    before = read_catalog(folder).state("2026-03-02", ["dedup"])
    publish(folder, "2026-03-03", offer=b"c")
    assert read_catalog(folder).state("2026-03-02", ["dedup"]) == before


def test_partitions_published_before_history_was_recorded_become_stale_on_change(tmp_path):
    """A manifest without `history` whose config read earlier partitions (an older release):
    the catalog takes its history as it stood when first listed, so a later change to an
    earlier date makes it stale instead of never being noticed."""
    folder = str(tmp_path / "ds" / "pool")
    legacy = {"flow": "pool", "config": {"pool": {"dedup": {"scope": "dataset"}}}}
    publish(folder, "2026-03-01", offer=b"a")
    publish(folder, "2026-03-02", **legacy)  # no history recorded
    storage.remove(storage.join(folder, CATALOG))  # first listed by a rebuild
    cat = read_catalog(folder)
    assert cat.entries["2026-03-02"]["history"]["kinds"] == ["dedup"]
    assert not cat.stale("2026-03-02")
    publish(folder, "2026-03-01", offer=b"b")  # the history it read changes
    assert read_catalog(folder).stale("2026-03-02")
    # a partition whose config reads no history has none, and is never stale
    publish(folder, "2026-03-03", flow="pool", config={"pool": {"dedup": {"scope": "partition"}}})
    assert read_catalog(folder).entries["2026-03-03"]["history"] is None


def test_a_commit_against_changed_history_is_refused(tmp_path):
    folder = str(tmp_path / "ds" / "pool")
    planned = hist(read_catalog(folder), "2026-03-02")  # planned before 01 existed
    publish(folder, "2026-03-01")
    with pytest.raises(HistoryChanged, match="2026-03-02"):
        publish(folder, "2026-03-02", history=planned)
    assert read_published(storage.join(folder, "2026-03-02")) is None
    assert "2026-03-02" not in read_catalog(folder).entries


def test_held_versions_show_in_the_catalog(tmp_path):
    folder = str(tmp_path / "ds" / "pool")
    publish(folder, "2026-03-01")
    version = begin(storage.join(folder, "2026-03-01"))
    hold(version, {"reason": "test"})
    assert read_catalog(folder).entries["2026-03-01"]["held"] == {"version": version.id}
    publish(folder, "2026-03-01")  # the next commit supersedes the held version
    assert "held" not in read_catalog(folder).entries["2026-03-01"]
    assert catalog.CATALOG == "_catalog.json"


def test_history_states_of_a_long_history_are_one_pass():
    """1,000 partitions: every state and staleness answered from one hash chain (the old
    definition hashed every earlier offer again for each partition: quadratic)."""
    entries = {}
    for i in range(1000):
        name = f"2027-{i // 28 + 1:03d}-{i % 28 + 1:02d}"
        entries[name] = {"version": f"v{i}", "offers": {"dedup": f"d{i}"}}
    cat = Catalog(entries)
    names = cat.names()
    for name in names:  # the history each partition reads now
        entries[name]["history"] = {"kinds": ["dedup"], "state": cat.state(name, ["dedup"])}
    fresh = Catalog(entries)
    assert fresh.stale_before("9999") == []
    assert fresh.state(names[0], ["dedup"]) == "empty"
    assert len({fresh.state(n, ["dedup"]) for n in names}) == 1000  # each prefix its own
    entries[names[500]]["offers"] = {"dedup": "changed"}  # 500 re-published with other content
    changed = Catalog(entries)
    assert changed.stale_before("9999") == names[501:]
