"""`curate demo` / `make demo`: generate a small pool and a tiny model, then run the pool flow."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from schemas.config import load_config

logger = logging.getLogger(__name__)


def write_demo_config(workdir: Path, arch: Path, ckpt: Path, pool: Path) -> Path:
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
            "input": str(pool / "*.tar"),
            "clip_filter": {"threshold": 0.3},
            "shard": {"max_samples": 25},
        },
        "runner": {"kind": "threads"},
    }
    path = workdir / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_demo(workdir: str = "demo", train_steps: int = 200) -> int:
    from flows.pool import run_pool
    from infra.demo_data import make_pool, make_tiny_model

    root = Path(workdir).resolve()
    pool = make_pool(root)
    logger.info("training the tiny demo model for %d steps on drawn shapes", train_steps)
    arch, ckpt = make_tiny_model(root, train_steps=train_steps)
    config_path = write_demo_config(root, arch, ckpt, pool)
    result = run_pool(load_config(config_path), partition="2026-01-01", force=True)
    uri = result["uri"]
    print(f"demo config:     {config_path}")
    print(f"curated output:  {uri}")
    print(f"report:          {result['report']}")
    print(f"counts:          {result.get('counts')}")
    return 0
