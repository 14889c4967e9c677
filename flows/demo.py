"""`curate demo` / `make demo`: a small pool, videos and a tiny model, then the pool flow.

Everything the README's quick start and synopsis name is made here, without network: the
pool and videos in a folder per date (inputs use `{date}`, as a nightly pool does), labels
for the videos, MetaCLIP metadata with a captions table, and a config with both flows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from schemas.config import load_config

logger = logging.getLogger(__name__)

PARTITION = "2026-01-01"


def write_demo_config(workdir: Path, arch: Path, ckpt: Path, pool: Path, videos: Path) -> Path:
    cfg = {
        "dataset": "demo",
        "output": str(workdir / "curated"),
        "model": {
            "name": str(arch),
            "pretrained": str(ckpt),
            "precision": "fp32",
            "batch_size": 32,
        },
        "pool": {
            "input": str(pool / "{date}" / "*.tar"),
            "clip_filter": {"threshold": 0.3},
            "shard": {"max_samples": 25},
        },
        "video": {"input": str(videos / "{date}" / "*.mp4"), "sample_fps": 4, "chunk_frames": 8},
        "runner": {"kind": "threads"},
    }
    path = workdir / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_demo(workdir: str = "demo", train_steps: int = 200) -> int:
    from flows.pool import run_pool
    from infra.demo_data import make_balance_inputs, make_pool, make_tiny_model
    from infra.demo_video import make_videos

    root = Path(workdir).resolve()
    pool = make_pool(root, PARTITION)
    videos, _ = make_videos(root, PARTITION)
    make_balance_inputs(root)
    logger.info("training the tiny demo model for %d steps on drawn shapes", train_steps)
    arch, ckpt = make_tiny_model(root, train_steps=train_steps)
    config_path = write_demo_config(root, arch, ckpt, pool, videos)
    result = run_pool(load_config(config_path), partition=PARTITION, force=True)
    uri = result["uri"]
    print(f"demo config:     {config_path}")
    print(f"curated output:  {uri}")
    print(f"report:          {result['report']}")
    print(f"counts:          {result.get('counts')}")
    print(f"next (README 'First hour'): curate ls {Path(uri).parent.parent}")
    return 0
