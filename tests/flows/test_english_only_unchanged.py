"""English-only balancing with a single metadata file publishes exactly what it did before
worldwide mode existed.

`tests/data/english_only_golden.json` was written by `english_only_outputs` running on the
code of main before worldwide balancing (commit 962267f; 8edb943 writes the same):

    PYTHONPATH=<checkout of 962267f> python tests/flows/test_english_only_unchanged.py OUT.json

It holds every column name and type of samples.parquet, the balancing columns of each row
(probabilities as exact float hex), the partition's entry_counts.parquet (rows and key-value
metadata), `curate balance`'s output table, and the config hash that keys the run.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "english_only_golden.json"
WORDS = ["dog", "cat", "red car", "beach", "sunset", "tree", "city", "New York", "bike", "snow"]


FIXED = {
    "dataset": "golden",
    "output": "/data/curated",
    "model": {"name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"},
    "pool": {
        "input": "/data/pool/{date}/*.tar",
        "balance": {"metadata": "/data/metadata.json.gz", "t": 20000, "running_counts": True},
        "dedup": False,  # what main had then (exact dedup became the default later, issue 28)
    },
}


def _hex(v: float | None) -> str | None:
    return None if v is None else float(v).hex()


def _rows(df: Any, cols: list[str]) -> list[list[Any]]:
    out = []
    for row in df.select(cols).iter_rows():
        out.append([_hex(v) if isinstance(v, float) else v for v in row])
    return out


def english_only_outputs(tmp: Path, tiny_model: dict[str, str]) -> dict[str, Any]:
    """Run the pool flow and `curate balance` English-only; return what they published."""
    import random

    import polars as pl
    import pyarrow.parquet as pq

    from flows.plan import output_config
    from flows.pool import run_pool
    from schemas.config import config_hash, parse_config
    from tasks.metaclip.balance import balance_file
    from tasks.publish.manifest import read_published
    from tests.pool_factory import PoolSample, make_image, write_tar

    rng = random.Random(7)
    pool = []
    for i in range(60):
        words = rng.choices(WORDS, weights=[30, 20, 3, 3, 2, 2, 2, 1, 1, 1], k=2)
        caption = f"a photo of {words[0]}, and {words[1]}. today"
        pool.append(
            PoolSample(f"{i:06d}", make_image(seed=i), caption=caption, meta={"uid": f"u{i:05d}"})
        )
    (tmp / "in").mkdir()
    write_tar(tmp / "in" / "00000.tar", pool[:35])
    write_tar(tmp / "in" / "00001.tar", pool[35:])
    meta = tmp / "metadata.json"
    meta.write_text(json.dumps(WORDS))
    raw = {
        "dataset": "golden",
        "output": str(tmp / "out"),
        "model": {**tiny_model, "precision": "fp32", "batch_size": 8},
        "pool": {
            "input": str(tmp / "in" / "*.tar"),
            "balance": {"metadata": str(meta), "t": 5, "seed": 3, "running_counts": True},
            "shard": {"max_samples": 16},
            "dedup": False,  # as FIXED
        },
    }
    cfg = parse_config(raw)
    published = read_published(run_pool(cfg, "2026-03-01")["uri"])
    assert published is not None
    samples = pl.read_parquet(published.url("samples.parquet"))
    counts = pq.read_table(published.url("entry_counts.parquet"))
    captions = pl.DataFrame({"caption": [s.caption for s in pool], "n": list(range(len(pool)))})
    captions.write_parquet(tmp / "captions.parquet")
    stats = balance_file(str(meta), str(tmp / "captions.parquet"), str(tmp / "bal.parquet"), t=4)
    balanced = pl.read_parquet(tmp / "bal.parquet")
    cols = ["uid", "status", "error", "error_detail", "entry_ids", "keep_prob", "shard", "out_key"]
    return {
        "samples_schema": [[k, str(v)] for k, v in samples.schema.items()],
        "samples": _rows(samples, cols),
        "entry_counts": counts.to_pylist(),
        "entry_counts_meta": {
            k.decode(): v.decode() for k, v in (counts.schema.metadata or {}).items()
        },
        "balance_schema": [[k, str(v)] for k, v in balanced.schema.items()],
        "balance": _rows(balanced, balanced.columns),
        "balance_stats": {k: stats[k] for k in ("rows", "matched", "kept", "metadata_sha256")},
        # of a fixed config (the run's own names temporary paths)
        "config_hash": config_hash(output_config(parse_config(FIXED), "pool")),
    }


def test_english_only_balancing_is_unchanged(tmp_path, tiny_model, prefect_harness) -> None:
    golden = json.loads(GOLDEN.read_text())
    got = json.loads(json.dumps(english_only_outputs(tmp_path, tiny_model)))
    for key in golden:
        assert got[key] == golden[key], key


if __name__ == "__main__":  # write the golden file with whatever code is on PYTHONPATH
    from infra.demo_data import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        arch, ckpt = make_tiny_model(Path(tmp) / "model")
        (Path(tmp) / "run").mkdir()
        result = english_only_outputs(
            Path(tmp) / "run", {"name": str(arch), "pretrained": str(ckpt)}
        )
    Path(sys.argv[1]).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
