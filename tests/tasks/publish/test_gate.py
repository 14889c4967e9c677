"""The publish gate: compare with the previous published partition, hold or publish."""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml

from flows.cli import main
from schemas.config import GateConfig, parse_config
from tasks.io import storage
from tasks.publish.commit import HELD, begin, commit, write_pointer
from tasks.publish.gate import Check, GateHeld, apply_gate, compare, previous_partition
from tasks.publish.manifest import read_manifest
from tasks.publish.writer import write_file
from tests.pool_factory import make_samples, write_tar

pytest_plugins = ["tests.s3_fixture"]  # the `s3` and `bucket` fixtures
GATE = GateConfig(enabled=True)


def pool_stats(kept: float, p50: float, partition: str = "2026-01-05") -> dict:
    return {
        "flow": "pool",
        "partition": partition,
        "kept_fraction": kept,
        "clip_score": {"quantiles": {"p05": 0.1, "p50": p50}},
    }


def test_compare_pool_figures_by_absolute_change():
    checks = compare("pool", pool_stats(0.65, 0.35), pool_stats(0.5, 0.2), GATE)
    assert checks == [
        Check("kept_fraction", 0.5, 0.65, "±0.2", True),  # 0.15 <= 0.2
        Check("clip_score.p05", 0.1, 0.1, "±0.1", True),
        Check("clip_score.p50", 0.2, 0.35, "±0.1", False),  # 0.15 > 0.1
    ]
    exact = compare("pool", pool_stats(0.7, 0.3), pool_stats(0.5, 0.2), GATE)
    assert [c.ok for c in exact] == [True, True, True]  # exactly at the bounds


@pytest.mark.parametrize(
    ("prev", "cur", "ok"),
    [(10.0, 19.0, True), (10.0, 20.0, True), (10.0, 21.0, False), (10.0, 0.0, True),
     (0.0, 0.0, True), (0.0, 1.0, False), (None, 3.0, True)],
)  # fmt: skip
def test_compare_events_per_hour_relative_to_previous(prev, cur, ok):
    [check] = compare("video", {"events_per_hour": cur}, {"events_per_hour": prev}, GATE)
    assert check == Check("events_per_hour", prev, cur, "±100% of previous", ok)


def publish_fake(root: str, so: dict, partition: str, stats: dict, success: bool = True) -> None:
    """A partition whose published version holds only `stats.json` (through the real commit;
    without `success`, a pointer that was never completed by `_SUCCESS`)."""
    version = begin(f"{root}/t/video/{partition}", so)
    stats_file = write_file(version.url("stats.json"), "stats.json", json.dumps(stats).encode(), so)
    if success:
        commit(version, {"flow": "video"}, [stats_file])
    else:
        write_pointer(version.final, {"version": version.id, "outputs": []}, so)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def out(request, tmp_path) -> tuple[str, dict]:
    if request.param == "local":
        return str(tmp_path / "out"), {}
    s3 = request.getfixturevalue("s3")
    return f"{request.getfixturevalue('bucket')}/out", s3.storage_options


def video_cfg(output: str, so: dict, **gate) -> object:
    return parse_config(
        {
            "dataset": "t",
            "output": output,
            "storage_options": so,
            "video": {"input": "x"},
            "gate": {"enabled": True, **gate},
        }
    )


def test_previous_partition_is_the_latest_published_one_before(out):
    root, so = out
    publish_fake(root, so, "2026-01-01", {"events_per_hour": 1.0})
    publish_fake(root, so, "2026-01-02", {"events_per_hour": 2.0})
    publish_fake(root, so, "2026-01-03", {"events_per_hour": 3.0}, success=False)
    publish_fake(root, so, "2026-01-09", {"events_per_hour": 9.0})  # later: not "previous"
    storage.write_bytes(f"{root}/t/video/.2026-01-04.lock", b"{}", so)
    storage.write_bytes(f"{root}/t/video/_entry_counts/2026-01-03.parquet", b"", so)
    cfg = video_cfg(root, so)
    url, stats = previous_partition(cfg, "video", "2026-01-04")
    assert url == f"{root}/t/video/2026-01-02" and stats == {"events_per_hour": 2.0}
    assert previous_partition(cfg, "video", "2026-01-01") is None


def test_gate_holds_on_the_store_and_override_lets_it_through(out):
    root, so = out
    publish_fake(root, so, "2026-01-01", {"events_per_hour": 10.0})
    final = f"{root}/t/video/2026-01-02"
    stage = begin(final, so)
    storage.write_bytes(stage.url("events.parquet"), b"staged", so)
    stats = {"flow": "video", "partition": "2026-01-02", "events_per_hour": 25.0}
    with pytest.raises(GateHeld) as err:
        apply_gate(video_cfg(root, so), "video", stats, stage)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"partition {final} held by the publish gate")
    assert "events_per_hour 10.0 -> 25.0 (bound ±100% of previous)" in msg
    assert msg.endswith("re-run with --set gate.override=true to publish")
    assert read_manifest(final, so) is None  # the held version is not published...
    held = stage.root  # ...but kept, unpublished, inside the partition folder
    assert f"unpublished version kept in {held};" in msg
    assert storage.read_bytes(f"{held}/events.parquet", so) == b"staged"
    record = storage.read_json(f"{held}/{HELD}", so)
    assert record["previous"] == f"{root}/t/video/2026-01-01"
    assert record["checks"][0]["ok"] is False

    stage = begin(final, so)
    apply_gate(video_cfg(root, so, override=True), "video", stats, stage)  # no raise
    within = {**stats, "events_per_hour": 19.0}
    apply_gate(video_cfg(root, so), "video", within, begin(final, so))  # no raise


def test_gate_disabled_or_first_partition_never_holds(out):
    root, so = out
    stats = {"flow": "video", "partition": "2026-01-02", "events_per_hour": 1e6}
    final = f"{root}/t/video/2026-01-02"
    apply_gate(video_cfg(root, so), "video", stats, begin(final, so))  # nothing to compare with
    publish_fake(root, so, "2026-01-01", {"events_per_hour": 1.0})
    cfg = video_cfg(root, so)
    cfg.gate.enabled = False
    apply_gate(cfg, "video", stats, begin(final, so))


def gate_rows(key: str) -> list[dict]:
    """The latest version of a Prefect table artifact, as rows."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        [art] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    data = json.loads(art.data) if isinstance(art.data, str) else art.data
    return data


def test_pool_flow_gate(tmp_path, tiny_model, prefect_harness, capsys):
    (tmp_path / "in").mkdir()
    for i in range(3):
        write_tar(tmp_path / "in" / f"{i}.tar", make_samples(10, seed=i + 1))
    cfg = {
        "dataset": "gated",
        "output": str(tmp_path / "out"),
        "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 8},
        "pool": {"input": str(tmp_path / "in" / "*.tar"), "clip_filter": {"top_fraction": 0.9}},
        "gate": {"enabled": True},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    parts = tmp_path / "out" / "gated" / "pool"

    def run(partition: str, *sets: str) -> int:
        args = ["run", "pool", "-c", str(path), "--partition", partition]
        return main(args + [a for s in sets for a in ("--set", s)])

    assert run("2026-01-01") == 0  # the first partition: nothing to compare with
    assert run("2026-01-02") == 0  # same inputs, same figures: within bounds
    assert all(r["ok"] for r in gate_rows("gate-pool-gated"))
    capsys.readouterr()

    # keeping 20% instead of 90% of the pool: held, and the run fails with the reason
    assert run("2026-01-03", "pool.clip_filter.top_fraction=0.2") == 4  # held by the gate
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"curate: GateHeld: partition {parts / '2026-01-03'} held by the")
    assert "kept_fraction 0.9 -> 0.2 (bound ±0.2)" in last
    assert read_manifest(str(parts / "2026-01-03")) is None
    [held] = [p.parent for p in (parts / "2026-01-03").glob(f"v-*/{HELD}")]
    assert json.loads((held / HELD).read_text())["previous"] == str(parts / "2026-01-02")
    kept = pl.read_parquet(held / "samples.parquet").filter(pl.col("status") == "kept")
    assert kept.height == 6  # ceil(0.2 * 30): the staged data is there to inspect
    rows = {r["figure"]: r for r in gate_rows("gate-pool-gated")}
    assert rows["kept_fraction"] == {
        "figure": "kept_fraction",
        "previous": 0.9,
        "current": 0.2,
        "bound": "±0.2",
        "ok": False,
    }
    assert all(r["ok"] for name, r in rows.items() if name != "kept_fraction")
    folders = sorted(p.name for p in parts.iterdir() if p.name[0] not in "._")  # not the catalog
    assert folders == ["2026-01-01", "2026-01-02", "2026-01-03"]

    # the override publishes it, and the held copy goes
    assert run("2026-01-03", "pool.clip_filter.top_fraction=0.2", "gate.override=true") == 0
    assert (parts / "2026-01-03" / "_SUCCESS").exists()
    assert read_manifest(str(parts / "2026-01-03"))["partition"] == "2026-01-03"
    assert not held.exists()
