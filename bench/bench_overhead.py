"""Prefect orchestration overhead per task, and what it costs a pool run at the default shard size.

Per task: a flow that submits N no-op tasks (all at once, as the pool flow does, and one at a
time, the latency of a single task) against N direct calls of the same function, on the
thread runner and, when prefect-dask is installed, a 2-worker local Dask cluster.

At the default shard size: a real pool run (ViT-B-32 bf16 random-init, CPU) gives the
images/s; a 10,000-sample input shard (img2dataset's default) then costs one score task, one
match task (balancing) and one write task per 10,000-sample output shard (`pool.shard`
default), so the overhead is 3 x (per-task latency) / (10,000 / images per second).

    .venv/bin/python bench/bench_overhead.py [--quick] [--tasks 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import cores, emit, peak_rss_bytes, prefect_api, quiet

DEFAULT_SHARD = 10_000
TASKS_PER_SHARD = 3  # score + match (when balancing) + write


def noop(i: int) -> int:
    return i


def overhead_flow(runner: Any, n: int) -> dict[str, float]:
    """Seconds for n tasks submitted together, and for n one at a time, inside one flow."""
    from prefect import flow, task

    t_noop = task(noop, name="noop")

    @flow(name="bench-overhead", task_runner=runner)
    def many(n: int) -> dict[str, float]:
        [f.result() for f in [t_noop.submit(i) for i in range(3)]]  # warm-up
        t0 = time.perf_counter()
        [f.result() for f in [t_noop.submit(i) for i in range(n)]]
        together = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(n):
            t_noop.submit(i).result()
        return {"together_s": together, "one_at_a_time_s": time.perf_counter() - t0}

    return many(n)


def per_task(runner: Any, n: int) -> dict[str, float]:
    t0 = time.perf_counter()
    for i in range(n):
        noop(i)
    direct = time.perf_counter() - t0
    t = overhead_flow(runner, n)
    return {
        "tasks": n,
        "ms_per_task_submitted_together": round((t["together_s"] - direct) / n * 1e3, 3),
        "ms_per_task_one_at_a_time": round((t["one_at_a_time_s"] - direct) / n * 1e3, 3),
        "direct_call_us": round(direct / n * 1e6, 3),
    }


def runners(n: int) -> dict[str, dict[str, float]]:
    from prefect.task_runners import ThreadPoolTaskRunner

    out = {"threads": per_task(ThreadPoolTaskRunner(max_workers=4), n)}
    try:
        from infra.cluster import dask_execution
        from schemas.config import RunnerConfig
    except ImportError:
        return out
    try:
        with dask_execution(RunnerConfig(kind="dask", workers=2), gpu=False) as runner:
            out["dask"] = per_task(runner, max(10, n // 4))
    except ImportError:  # prefect-dask absent
        pass
    return out


def pool_images_per_s(images: int, model: str, precision: str) -> dict[str, float]:
    """A real pool run (threads runner): its images/s and its own task overhead share."""
    from bench_pool import flow_run, source_images, write_shards

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pairs = source_images(images)
        write_shards(work / "in", pairs, max(1, images // 2))
        cfg = {
            "dataset": "bench",
            "output": str(work / "out"),
            "cache": str(work / "cache"),
            "model": {"name": model, "pretrained": None, "precision": precision, "device": "cpu"},
            "pool": {"input": str(work / "in" / "*.tar"), "clip_filter": {"top_fraction": 0.5}},
        }
        write_shards(work / "warm", pairs[:8], 8)
        flow_run({**cfg, "pool": {**cfg["pool"], "input": str(work / "warm" / "*.tar")}}, 8)
        ips = flow_run(cfg, images)
    return {"images": images, "images_per_s": round(ips, 2), "run_s": round(images / ips, 2)}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with prefect_api():
        per = runners(args.tasks)
        pool = pool_images_per_s(args.images, args.model, args.precision)
    worst_ms = max(
        max(r["ms_per_task_submitted_together"], r["ms_per_task_one_at_a_time"])
        for r in per.values()
    )
    shard_s = DEFAULT_SHARD / pool["images_per_s"]
    pct = TASKS_PER_SHARD * worst_ms / 1e3 / shard_s * 100
    run_tasks = 2 + 1  # this run: two input shards scored, one output shard written
    threads = per["threads"]
    threads_ms = max(
        threads["ms_per_task_submitted_together"], threads["ms_per_task_one_at_a_time"]
    )
    return {
        "benchmark": "orchestration_overhead",
        "workload": f"{args.tasks} no-op tasks per runner; pool run of {args.images} images "
        f"({args.model} {args.precision}, cpu cores {cores()})",
        "throughput": round(1e3 / max(threads["ms_per_task_submitted_together"], 1e-6), 1),
        "unit": "no-op tasks per second (threads runner)",
        "bound": "direct function calls",
        "bound_throughput": round(1e6 / max(threads["direct_call_us"], 1e-6), 1),
        "ratio": None,
        "ms_per_task": per,
        "ms_per_task_worst": worst_ms,
        "pool_run": pool,
        "overhead_pct_of_pool_run_measured": round(  # that run used the thread runner
            run_tasks * threads_ms / 1e3 / pool["run_s"] * 100, 3
        ),
        "default_shard_samples": DEFAULT_SHARD,
        "overhead_pct_at_default_shard": round(pct, 4),
        "target_pct": 5.0,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="50 tasks, a 64-image pool run")
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--precision", default="bf16")
    args = ap.parse_args()
    if args.quick:
        args.tasks, args.images = min(args.tasks, 50), min(args.images, 64)
    quiet()
    emit(measure(args))


if __name__ == "__main__":
    main()
