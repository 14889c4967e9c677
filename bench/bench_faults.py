"""How much of a flaky object store a pool run survives (issue 22): time and bytes per error rate.

One partition (5 shards of 16 samples, one of them broken) read from and published to moto
through the fault proxy (`infra/faulty_s3.py`, seeded), each rate with an empty cache and a
fresh output, on one Prefect server. Reported per rate: wall seconds, the ratio to the
fault-free run of this same process, the faults injected, and whether the published shards
and tables are byte-identical to the fault-free run's (or the run's one-line failure).
`highest_within_2x` is the highest rate that published the same bytes within twice the
fault-free time.

Usage: python bench/bench_faults.py [--rates 0.1,0.2,0.3,0.4,0.5] [--seed 22] [--quick]
(`--quick`: rate 0.1 only; `make bench` runs it with the other benchmarks)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from harness import cores, emit, load_1m, prefect_api, quiet  # noqa: E402

PARTITION = "2026-05-06"


def write_inputs(folder: Path) -> None:
    from tests.pool_factory import broken_pool, make_samples, write_tar

    day = folder / PARTITION
    day.mkdir(parents=True)
    for i in range(4):
        write_tar(day / f"{i:05d}.tar", make_samples(16, seed=100 + i))
    broken_pool(day / "00004.tar")


def digest(uri: str, so: dict[str, Any]) -> dict[str, str]:
    """{file: sha256} of the published shards and tables (from the manifest)."""
    from tasks.publish.manifest import read_published

    published = read_published(uri, so)
    prefix = f"{published.version}/"
    names = ((str(o["path"]).removeprefix(prefix), str(o["sha256"])) for o in published.outputs())
    return {n: h for n, h in names if n.startswith("shards/") or n.endswith(".parquet")}


def one_run(model: dict, inputs: str, output: str, so: dict) -> tuple[float, str | None]:
    from flows.pool import run_pool
    from schemas.config import parse_config

    cfg = {
        "dataset": "faults",
        "output": output,
        "storage_options": so,
        "model": {**model, "precision": "fp32", "device": "cpu", "batch_size": 8},
        "pool": {
            "input": inputs,
            "clip_filter": {"top_fraction": 0.6},
            "shard": {"max_samples": 10},
        },
    }
    t0 = time.perf_counter()
    try:
        run_pool(parse_config(cfg), PARTITION)
    except Exception as err:  # what the CLI would print as its one line
        return time.perf_counter() - t0, f"{type(err).__name__}: {err}"
    return time.perf_counter() - t0, None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="0.1,0.2,0.3,0.4,0.5")
    ap.add_argument("--seed", type=int, default=22)
    ap.add_argument("--quick", action="store_true", help="rate 0.1 only")
    args = ap.parse_args()
    if args.quick:
        args.rates = "0.1"
    quiet()
    from infra.demo_data import make_tiny_model
    from infra.faulty_s3 import FaultyS3
    from infra.s3 import moto_s3

    tmp = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    arch, ckpt = make_tiny_model(tmp / "model")
    model = {"name": str(arch), "pretrained": str(ckpt)}
    write_inputs(tmp / "in")
    out: dict[str, Any] = {"bench": "faults", "cores": cores(), "load_1m_start": load_1m()}
    with prefect_api(), moto_s3() as s3, FaultyS3(s3.endpoint, seed=args.seed) as proxy:
        bucket = s3.create_bucket("bench-faults")
        s3.upload(str(tmp / "in"), f"{bucket}/in")
        inputs, so = f"{bucket}/in/{{date}}/*.tar", s3.storage_options
        clean_s, err = one_run(model, inputs, f"{bucket}/clean", so)
        assert err is None, err
        want = digest(f"{bucket}/clean/faults/pool/{PARTITION}", so)
        rows = []
        for rate in [float(r) for r in args.rates.split(",")]:
            proxy.rate, proxy.counts = rate, type(proxy.counts)()
            output = f"{bucket}/r{int(rate * 100)}"
            wall, err = one_run(model, inputs, output, proxy.storage_options)
            same = err is None and digest(f"{output}/faults/pool/{PARTITION}", so) == want
            faults = sum(n for k, n in proxy.counts.items() if k != "requests")
            rows.append({
                "rate": rate, "wall_s": round(wall, 2), "ratio": round(wall / clean_s, 2),
                "requests": proxy.counts["requests"], "faults": faults,
                "same_bytes": same, "error": err,
            })  # fmt: skip
    ok = [r["rate"] for r in rows if r["same_bytes"] and r["ratio"] <= 2.0]
    out |= {
        "clean_s": round(clean_s, 2),
        "rates": rows,
        "highest_within_2x": max(ok, default=None),
        "load_1m_end": load_1m(),
    }
    emit(out)


if __name__ == "__main__":
    main()
