"""How the pool flow's time and peak RSS grow from 1x to 4x the input (linear = 1.0).

Each size runs in a fresh process (peak RSS only grows) against one Prefect server, after a
warm-up run that loads the model and the Prefect client, so the timed run is the flow alone:
read shards, decode, score, select, publish. The shard size is fixed, so 4x the input is 4x
the shards (as a pool grows), scored and written with the thread runner.

    .venv/bin/python bench/bench_scaling.py [--quick] [--images 256] [--per-shard 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    RssSampler,
    cores,
    emit,
    load_1m,
    peak_rss_bytes,
    prefect_api,
    quiet,
    run_child,
    scaling,
)


def child_run(args: argparse.Namespace) -> dict:
    """Warm up on 8 images, then time one pool run on `args.images` images."""
    from bench_pool import flow_run, source_images, write_shards

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pairs = source_images(args.images)
        write_shards(work / "in", pairs, args.per_shard)
        write_shards(work / "warm", pairs[:8], 8)
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
        from infra.server import api_scope

        with api_scope():  # Prefect's API starts in the warm-up run and stays up for the timed one
            flow_run({**cfg, "pool": {**cfg["pool"], "input": str(work / "warm" / "*.tar")}}, 8)
            with RssSampler() as rss:
                t0 = time.perf_counter()
                flow_run(cfg, args.images)
                seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "images": args.images,
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_max_by_fifth_bytes": rss.max_by_fifth(),
        "load_1m": load_1m(),
    }


def measure(args: argparse.Namespace) -> dict:
    common = [f"--model={args.model}", f"--precision={args.precision}"]
    common += [f"--per-shard={args.per_shard}", f"--batch-size={args.batch_size}"]
    with prefect_api():
        one = run_child(Path(__file__), ["--child", f"--images={args.images}", *common])
        four = run_child(Path(__file__), ["--child", f"--images={4 * args.images}", *common])
    return {
        "benchmark": "pool_flow_scaling",
        "workload": f"pool flow on {args.images} and {4 * args.images} images, "
        f"{args.per_shard} per shard, {args.model} {args.precision} random-init, "
        f"batch {args.batch_size}, cpu cores {cores()}",
        "throughput": round(four["images"] / four["seconds"], 2),
        "unit": "images per second (4x input)",
        "throughput_1x": round(one["images"] / one["seconds"], 2),
        "peak_rss_bytes": four["peak_rss_bytes"],
        "scaling": scaling(
            one["seconds"], four["seconds"], one["peak_rss_bytes"], four["peak_rss_bytes"]
        ),
        "rss_max_by_fifth_of_4x_run_bytes": four["rss_max_by_fifth_bytes"],
        "load_1m_after": {"1x": one["load_1m"], "4x": four["load_1m"]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 and 64 images")
    ap.add_argument("--images", type=int, default=256, help="the 1x input")
    ap.add_argument("--per-shard", type=int, default=64)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.images, args.per_shard = min(args.images, 16), min(args.per_shard, 4)
    quiet()
    emit(child_run(args) if args.child else measure(args))


if __name__ == "__main__":
    main()
