"""Pool-flow throughput against a bare forward loop of the same model, batch and precision.

Both are measured in this one run on the same images: the bound is `encode_image` +
`encode_text` on already decoded, preprocessed and tokenized batches; the flow is the whole
`curate run pool` (read tars, decode, preprocess, tokenize, score, select, publish) with an
empty cache. Peak RSS of the score stage is measured in fresh processes for 1x, 2x and 4x
the shards, to show it stays flat as the number of shards grows.

Usage: python bench/bench_pool.py [--images N] [--model ViT-B-32] [--precision bf16]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data" / "images"


def source_images(n: int) -> list[tuple[bytes, str]]:
    """(jpeg bytes, caption) pairs: real flickr8k photos when available, else drawn ones."""
    out: list[tuple[bytes, str]] = []
    for tar_path in sorted(SHARED.glob("flickr8k-small-*.tar")) + sorted(
        SHARED.glob("flickr8k-orig-*.tar")
    ):
        with tarfile.open(tar_path) as tar:
            files: dict[str, dict[str, bytes]] = {}
            for m in tar.getmembers():
                if m.isfile():
                    key, ext = m.name.split(".", 1)
                    files.setdefault(key, {})[ext] = tar.extractfile(m).read()
        out += [(f["jpg"], f["txt"].decode()) for f in files.values() if "jpg" in f and "txt" in f]
    if not out:
        from infra.demo_data import draw

        out = [(draw("red", "circle", size=256, seed=i), "a red circle") for i in range(64)]
    return [out[i % len(out)] for i in range(n)]


def write_shards(folder: Path, pairs: list[tuple[bytes, str]], per_shard: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(pairs), per_shard):
        with tarfile.open(folder / f"{s // per_shard:05d}.tar", "w") as tar:
            for i, (img, cap) in enumerate(pairs[s : s + per_shard], start=s):
                for ext, data in (("jpg", img), ("txt", cap.encode())):
                    info = tarfile.TarInfo(f"{i:09d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def bare_forward(model_cfg, pairs, batch_size: int) -> float:
    """images/s of the model alone on pre-made batches (the bound)."""
    import torch
    from PIL import Image

    from tasks.model.clip import load_model

    m = load_model(model_cfg)
    batches = []
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s : s + batch_size]
        px = torch.stack([m.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b, _ in chunk])
        batches.append((px, m.tokenize([c for _, c in chunk])))
    m.encode_images(batches[0][0][:2])
    m.encode_tokens(batches[0][1][:2])  # warm-up
    t0 = time.perf_counter()
    for px, tok in batches:
        m.encode_images(px)
        m.encode_tokens(tok)
    return len(pairs) / (time.perf_counter() - t0)


def flow_run(cfg_dict: dict, n: int) -> float:
    from flows.pool import run_pool
    from schemas.config import parse_config

    t0 = time.perf_counter()
    run_pool(parse_config(cfg_dict), partition="2026-01-01", force=True)
    return n / (time.perf_counter() - t0)


def peak_rss_bytes() -> int:
    """This process's peak RSS (VmHWM). Unlike ru_maxrss it is not inherited across exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def score_rss(cfg_dict: dict, shards: list[str]) -> int:
    """Peak RSS (bytes) of a fresh process that scores `shards` one after another."""
    code = (
        f"import json,sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from bench.bench_pool import peak_rss_bytes\n"
        "from schemas.config import parse_config\nfrom tasks.pool.score import score_shard\n"
        "cfg = parse_config(json.loads(sys.argv[1]))\n"
        "for u in json.loads(sys.argv[2]):\n"
        "    score_shard(u, cfg.pool, cfg.model, cfg.cache, force=True)\n"
        "print(peak_rss_bytes())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(cfg_dict), json.dumps(shards)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--per-shard", type=int, default=128)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from schemas.config import ModelConfig

    work = Path(tempfile.mkdtemp(prefix="bench-pool-"))
    try:
        pairs = source_images(args.images)
        write_shards(work / "in", pairs, args.per_shard)
        model = {
            "name": args.model,
            "pretrained": None,
            "precision": args.precision,
            "device": "cpu",
            "batch_size": args.batch_size,
        }
        cfg = {
            "dataset": "bench",
            "output": str(work / "out"),
            "cache": str(work / "cache"),
            "model": model,
            "pool": {"input": str(work / "in" / "*.tar"), "clip_filter": {"top_fraction": 0.5}},
        }
        bare = bare_forward(ModelConfig(**model), pairs, args.batch_size)
        write_shards(work / "warm", pairs[:8], 8)  # start Prefect's API outside the timing
        flow_run({**cfg, "pool": {**cfg["pool"], "input": str(work / "warm" / "*.tar")}}, 8)
        flow = flow_run(cfg, len(pairs))
        shards = sorted(str(p) for p in (work / "in").glob("*.tar"))
        rss = {f"{k}x": score_rss(cfg, (shards * 4)[: k * 1]) for k in (1, 2, 4)}
        result = {
            "benchmark": "pool_flow",
            "workload": (
                f"{len(pairs)} images, {len(shards)} shards, {args.model} {args.precision}, "
                f"batch {args.batch_size}, cpu threads {os.cpu_count()}"
            ),
            "flow_images_per_s": round(flow, 2),
            "bound": "bare forward loop (encode_image + encode_text on ready batches)",
            "bound_images_per_s": round(bare, 2),
            "ratio": round(flow / bare, 3),
            "target_ratio": 0.7,
            "peak_rss_bytes_by_shards_scored": rss,
            "peak_rss_growth_4x_over_1x": round(rss["4x"] / rss["1x"], 3),
            "parent_peak_rss_bytes": peak_rss_bytes(),
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
