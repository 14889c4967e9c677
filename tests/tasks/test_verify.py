"""verify_partition / summarize_partition on small, consistent partitions built here.

These partitions use the layout from before versioned commits (files at the partition
root), which `verify` still reads; the versioned layout is checked in
tests/tasks/publish/test_commit.py and on every partition the flow tests publish.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import uuid
from pathlib import Path

import fsspec
import polars as pl
import pytest

from schemas.tables import EVENTS, SAMPLES, SHARD_INDEX, VIDEOS, conform
from tasks.pool.report import write_pool_report
from tasks.verify import summarize_partition, tar_keys, verify_partition

# (status, out_key or None, shard or None, image_ext, clip_score)
ROWS = [
    ("kept", "k0", "000000.tar", "jpg", 0.31),
    ("kept", "k1", "000000.tar", "png", 0.35),
    ("kept", "k2", "000001.tar", "webp", 0.40),
    ("kept", "k3", "000001.tar", "jpg", 0.29),
    ("filtered_text", None, None, "jpg", None),
    ("filtered_text", None, None, "jpg", 0.22),
    ("filtered_clip", None, None, "jpg", 0.12),
    ("filtered_balance", None, None, "jpg", 0.30),
    ("duplicate", None, None, "jpg", 0.31),
    ("quarantined", None, None, "jpg", None),
]
STATS = {
    "flow": "pool",
    "dataset": "demo",
    "partition": "2024-05-01",
    "counts": {
        "input": 10,
        "kept": 4,
        "filtered_text": 2,
        "filtered_clip": 1,
        "filtered_balance": 1,
        "duplicate": 1,
        "quarantined": 1,
    },
    "reasons": {
        "text:too_few_words": 2,
        "clip:below_threshold": 1,
        "balance:dropped": 1,
        "duplicate": 1,
        "truncated_image": 1,
    },
    "shards": {"input": 2, "unreadable": 0, "empty": 0, "output": 2, "scored": 2, "cached": 0},
    "clip_score": {
        "quantiles": {
            "p01": 0.12,
            "p05": 0.13,
            "p25": 0.26,
            "p50": 0.305,
            "p75": 0.32,
            "p95": 0.38,
            "p99": 0.40,
        },
        "mode": "threshold",
        "threshold": 0.28,
    },
    "balance": None,
    "timings": {"score_s": 1.5, "select_s": 0.1, "publish_s": 0.2, "total_s": 1.9},
}
MODEL = {
    "name": "ViT-T-16",
    "architecture": "ViT-T-16",
    "pretrained": "none",
    "checkpoint_sha256": "ab" * 32,
    "precision": "fp32",
    "device": "cpu",
}


def _samples() -> pl.DataFrame:
    rows = [
        {
            "uid": f"u{i}",
            "source": "in/000000.tar",
            "key": f"{i:04d}",
            "index": i,
            "caption": f"caption {i}",
            "url": None,
            "image_ext": ext,
            "width": 8,
            "height": 8,
            "clip_score": score,
            "entry_ids": None,
            "keep_prob": None,
            "status": status,
            "error": None if status == "kept" else status,
            "error_detail": None,
            "shard": shard,
            "out_key": out_key,
            **dict.fromkeys(
                ["sha256", "phash", "lang", "lang_score", "n_tokens", "truncated", "duplicate_of"]
            ),
        }
        for i, (status, out_key, shard, ext, score) in enumerate(ROWS)
    ]
    return conform(pl.DataFrame(rows, infer_schema_length=None), SAMPLES)


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _parquet(df: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(path)


def _write_manifest(root: Path, flow: str, stats: dict) -> None:
    """Manifest with sha256/bytes of every file present, hashed here with hashlib."""
    outputs = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in ("manifest.json", "_SUCCESS"):
            data = p.read_bytes()
            outputs.append(
                {"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            )
    manifest = {
        "flow": flow,
        "dataset": stats["dataset"],
        "partition": stats["partition"],
        "created": "2024-05-02T02:00:00+00:00",
        "config": {},
        "config_hash": "cd" * 32,
        "model": MODEL,
        "code_version": "0.1.0+test",
        "inputs": [{"url": "in/000000.tar", "size": 123, "mtime": "0"}],
        "outputs": outputs,
        "run_key": "rk",
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "_SUCCESS").write_text("")


def _build_pool(root: Path) -> Path:
    samples = _samples()
    _parquet(samples, root / "samples.parquet")
    kept = samples.filter(pl.col("status") == "kept")
    for shard in ("000000.tar", "000001.tar"):
        part = kept.filter(pl.col("shard") == shard)
        members = {}
        for key, ext, cap in part.select("out_key", "image_ext", "caption").iter_rows():
            members |= {f"{key}.{ext}": b"img" + key.encode(), f"{key}.txt": cap.encode()}
            members[f"{key}.json"] = json.dumps({"uid": key}).encode()
        (root / "shards").mkdir(exist_ok=True)
        (root / "shards" / shard).write_bytes(_tar(members))
        _parquet(conform(part, SHARD_INDEX), root / "shards" / shard.replace(".tar", ".parquet"))
    (root / "shards" / "sizes.json").write_text(json.dumps({"000000.tar": 2, "000001.tar": 2}))
    (root / "stats.json").write_text(json.dumps(STATS))
    write_pool_report(samples, STATS, str(root))
    _write_manifest(root, "pool", STATS)
    return root


@pytest.fixture()
def pool(tmp_path: Path) -> Path:
    return _build_pool(tmp_path / "demo" / "pool" / "2024-05-01")


def test_consistent_pool_partition_verifies(pool: Path) -> None:
    assert verify_partition(str(pool)) == []
    assert (pool / "report.md").exists()  # the report's files are part of the outputs


def test_unpublished_or_missing_partition_is_one_problem(pool: Path, tmp_path: Path) -> None:
    (pool / "_SUCCESS").unlink()
    assert verify_partition(str(pool)) == [f"not published: no _SUCCESS at {pool}"]
    assert summarize_partition(str(pool)) == f"not published: no _SUCCESS at {pool}"
    nowhere = str(tmp_path / "nope")
    assert verify_partition(nowhere) == [f"not published: no _SUCCESS at {nowhere}"]


def test_corrupted_tar_byte_is_a_checksum_problem(pool: Path) -> None:
    tar = pool / "shards" / "000000.tar"
    data = bytearray(tar.read_bytes())
    data[512] ^= 0xFF  # first byte of the first member's data: the tar stays readable
    tar.write_bytes(bytes(data))
    problems = verify_partition(str(pool))
    assert len(problems) == 1
    assert problems[0].startswith("sha256 mismatch: shards/000000.tar is ")


def test_deleted_file_is_reported(pool: Path) -> None:
    (pool / "plots" / "status_counts.png").unlink()
    assert verify_partition(str(pool)) == [
        "missing file: plots/status_counts.png (listed in manifest)"
    ]


def test_deleted_shard_breaks_files_and_counts(pool: Path) -> None:
    (pool / "shards" / "000001.tar").unlink()
    problems = verify_partition(str(pool))
    assert "missing file: shards/000001.tar (listed in manifest)" in problems
    assert any(p.startswith("shards/sizes.json lists") for p in problems)


def test_broken_count_sum_is_reported(pool: Path) -> None:
    stats = json.loads((pool / "stats.json").read_text())
    stats["counts"]["kept"] = 5
    (pool / "stats.json").write_text(json.dumps(stats))
    _write_manifest(pool, "pool", stats)  # checksums agree: only the counts are wrong
    problems = verify_partition(str(pool))
    assert problems == [
        "stats.json: statuses sum to 11, input is 10",
        "samples.parquet: 4 rows kept, stats.json says 5",
        "kept 5 != sum of sizes.json 4 != index rows 4",
    ]


def test_tar_members_must_match_index(pool: Path) -> None:
    shard = pool / "shards" / "000001.tar"
    members = {"k2.webp": b"x", "k2.txt": b"c", "k3.jpg": b"y", "k3.json": b"{}", "zz.txt": b"?"}
    shard.write_bytes(_tar(members))  # k2 lacks json, k3 lacks txt, zz is not indexed
    _write_manifest(pool, "pool", STATS)
    problems = verify_partition(str(pool))
    assert problems == [
        "shards/000001.tar: 1 tar keys not in index (e.g. zz)",
        "shards/000001.tar: 3 keys without exactly .txt, .json and their image (e.g. k2, k3, zz)",
    ]
    assert tar_keys(str(shard), None) == {
        "k2": ["webp", "txt"],
        "k3": ["jpg", "json"],
        "zz": ["txt"],
    }


def test_sizes_json_and_unlisted_files(pool: Path) -> None:
    (pool / "shards" / "sizes.json").write_text(json.dumps({"000000.tar": 3, "000001.tar": 2}))
    _write_manifest(pool, "pool", STATS)
    (pool / "shards" / "stray.txt").write_text("left over")
    problems = verify_partition(str(pool))
    assert problems == [
        "unlisted file: shards/stray.txt (not in manifest outputs)",
        "shards/000000.tar: sizes.json says 3, index has 2",
        "kept 4 != sum of sizes.json 5 != index rows 4",
    ]


def test_unreadable_table_is_a_problem_not_an_exception(pool: Path) -> None:
    (pool / "samples.parquet").write_bytes(b"not parquet")
    _write_manifest(pool, "pool", STATS)
    problems = verify_partition(str(pool))
    assert len(problems) == 1 and problems[0].startswith("pool: cannot check (")


def test_summary_names_counts_model_and_scores(pool: Path) -> None:
    text = summarize_partition(str(pool))
    assert text.splitlines()[0] == f"pool partition demo/2024-05-01 at {pool}"
    assert "10 input -> 4 kept (40.0%)" in text
    assert "p50 0.305" in text and "cut threshold 0.28" in text
    assert "ViT-T-16" in text and "ab" * 32 in text and "2024-05-02T02:00:00" in text
    balance = {
        "t": 5,
        "metadata_sha256": "12" * 32,
        "head_share_before": 0.5,
        "head_share_after": 0.25,
    }
    (pool / "stats.json").write_text(json.dumps({**STATS, "balance": balance}))
    line = "balance: t=5 head share 0.500 -> 0.250, metadata 121212121212"
    assert summarize_partition(str(pool)).splitlines()[4] == line


def test_verify_over_fsspec_url(pool: Path) -> None:
    """Same checks through a non-local fsspec URL (in-memory store)."""
    url = f"memory://verify-{uuid.uuid4().hex}/demo/pool/2024-05-01"
    fs = fsspec.filesystem("memory")
    for p in pool.rglob("*"):
        if p.is_file():
            fs.pipe(f"{url}/{p.relative_to(pool).as_posix()}", p.read_bytes())
    assert verify_partition(url) == []
    fs.rm(f"{url}/shards/000000.parquet")
    assert "missing file: shards/000000.parquet (listed in manifest)" in verify_partition(url)


# ---------------------------------------------------------------- video


def _build_video(root: Path) -> tuple[Path, dict]:
    videos = conform(
        pl.DataFrame(
            {
                "video": ["in/a.mp4", "in/b.mp4", "in/c.mp4"],
                "status": ["ok", "ok", "quarantined"],
                "error": [None, None, "decode_error"],
                "duration_s": [60.0, 30.0, None],
            }
        ).with_columns(
            [
                pl.lit(None).alias(c)
                for c in VIDEOS
                if c not in ("video", "status", "error", "duration_s")
            ]
        ),
        VIDEOS,
    )
    events = conform(
        pl.DataFrame(
            {
                "event_id": ["e0", "e1"],
                "video": ["in/a.mp4", "in/a.mp4"],
                "start_s": [1.0, 20.0],
                "end_s": [3.0, 24.0],
                "peak_s": [2.0, 21.0],
                "peak_score": [0.9, 0.8],
                "clip_start_s": [0.0, 19.0],
                "clip_end_s": [4.0, 25.0],
                "key": ["e0", "e1"],
                "shard": ["000000.tar", "000000.tar"],
                "status": ["ok", "ok"],
                "error": [None, None],
                "error_detail": [None, None],
            }
        ),
        EVENTS,
    )
    _parquet(videos, root / "videos.parquet")
    _parquet(events, root / "events.parquet")
    members = {
        f"{k}.{ext}": k.encode() + ext.encode()
        for k in ("e0", "e1")
        for ext in ("mp4", "json", "jpg")
    }
    (root / "shards").mkdir()
    (root / "shards" / "000000.tar").write_bytes(_tar(members))
    (root / "shards" / "sizes.json").write_text(json.dumps({"000000.tar": 2}))
    stats = {
        "flow": "video",
        "dataset": "demo",
        "partition": "2024-05-01",
        "counts": {"input": 3, "ok": 2, "quarantined": 1},
        "reasons": {"decode_error": 1},
        "frames": 180,
        "events": 2,
        "video_hours": 0.025,
        "events_per_hour": 80.0,
        "timings": {"total_s": 3.0},
    }
    (root / "stats.json").write_text(json.dumps(stats))
    _write_manifest(root, "video", stats)
    return root, stats


def test_video_partition_verifies_and_counts_clips(tmp_path: Path) -> None:
    root, stats = _build_video(tmp_path / "demo" / "video" / "2024-05-01")
    assert verify_partition(str(root)) == []
    assert "events: 2 in 0.025 h = 80/h" in summarize_partition(str(root))
    events = pl.read_parquet(root / "events.parquet").head(1)
    _parquet(events, root / "events.parquet")
    _write_manifest(root, "video", stats)
    assert verify_partition(str(root)) == [
        "events.parquet: 1 rows, shards hold 2 .mp4",
        "events.parquet (shard, key) pairs differ from the .mp4 members",
        "shards/sizes.json sums to 2, events.parquet has 1",
        "stats.json: 2 clips, events.parquet 1",
    ]
