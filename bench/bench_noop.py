"""What a run costs when there is nothing to do: a published partition re-run, and a
backfill over 30 published dates, each as the `curate` command a scheduler would start.

Both are timed end to end as subprocesses (imports included), after publishing the
partitions once with the tiny test model. Targets: under 3 s and under 15 s.

Usage: python bench/bench_noop.py [--dates 30] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from harness import cores, emit, load_1m  # noqa: E402


def curate(*args: str) -> float:
    """Seconds for one `curate ...` command (a fresh interpreter, as a scheduler runs it)."""
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dates", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="4 dates")
    args = ap.parse_args()
    n = 4 if args.quick else args.dates

    from infra.demo_data import make_tiny_model
    from tests.pool_factory import make_samples, write_tar

    work = Path(tempfile.mkdtemp(prefix="bench-noop-"))
    try:
        arch, ckpt = make_tiny_model(work / "model")
        dates = [f"2026-01-{d:02d}" for d in range(1, n + 1)]
        for i, date in enumerate(dates):
            write_tar(work / "in" / date / "0.tar", make_samples(3, seed=i))
        cfg = {
            "dataset": "noop",
            "output": str(work / "out"),
            "model": {"name": str(arch), "pretrained": str(ckpt), "precision": "fp32"},
            "pool": {"input": str(work / "in" / "{date}" / "*.tar")},
        }
        path = work / "c.yaml"
        path.write_text(yaml.safe_dump(cfg))
        span = ["--start", dates[0], "--end", dates[-1]]
        first = curate("backfill", "pool", "-c", str(path), *span, "--local")
        run_s = min(
            curate("run", "pool", "-c", str(path), "--partition", dates[0]) for _ in range(3)
        )
        backfill_s = curate("backfill", "pool", "-c", str(path), *span, "--local")
        emit(
            {
                "benchmark": "noop",
                "workload": f"{n} published pool partitions, tiny model, {cores()} cores",
                "first_backfill_s": round(first, 2),
                "noop_run_s": round(run_s, 2),
                "noop_run_target_s": 3.0,
                f"noop_backfill_{n}_dates_s": round(backfill_s, 2),
                "noop_backfill_target_s": 15.0 * n / 30,
                "load_1m": load_1m(),
            }
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
