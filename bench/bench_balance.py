"""Benchmark MetaCLIP balancing: `balance_file` end to end and the matcher alone.

Captions are real LAION-400M and CC3M alt-texts from ../shared, repeated with light
perturbations (extra words, title case, numbers) up to --captions; the metadata is the
500k-entry proxy list. t defaults to MetaCLIP 400M's ratio (20,000 per 1.6B captions) scaled to
the pool, which makes most captions need a draw (the expensive case). Prints one JSON object.

    .venv/bin/python bench/bench_balance.py [--captions N] [--t T] [--compare REPS]

--compare REPS also times REPS warm runs with forked workers off and on, alternating in the
same process (the fair comparison on a shared, noisy machine), and reports each one's range.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tasks.metaclip.balance as balance_mod  # noqa: E402
import tasks.metaclip.matcher as metadata_mod  # noqa: E402
from tasks.metaclip.balance import balance_file  # noqa: E402
from tasks.metaclip.matcher import Matcher, get_matcher  # noqa: E402
from tasks.metaclip.metadata import load_metadata  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
METADATA = DATA / "metaclip" / "proxy_metadata.json.gz"
LAION = DATA / "captions" / "laion400m_10k.parquet"
CC3M = DATA / "captions" / "cc3m_val_15k.tsv"


def base_captions() -> list[str]:
    laion = pl.read_parquet(LAION)["TEXT"].drop_nulls().to_list()
    with open(CC3M, encoding="utf-8") as f:
        cc3m = [line.split("\t", 1)[0] for line in f if line.strip()]
    return laion + cc3m


def perturbed(base: list[str], n: int, seed: int = 0) -> list[str]:
    """n realistic captions: real ones, some with a borrowed word, title case or a number."""
    rng = random.Random(seed)
    words = [w for c in base[:2000] for w in c.split()]
    out = []
    for _ in range(n):
        c = rng.choice(base)
        r = rng.random()
        if r < 0.3:
            c = f"{c} {rng.choice(words)}"
        elif r < 0.45:
            c = c.title()
        elif r < 0.6:
            c = f"{c}, {rng.randint(1, 99)}"
        out.append(c)
    return out


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def cpu_seconds() -> dict[str, float]:
    """CPU seconds of this process and of its finished children (the forked workers)."""
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return {"self": own.ru_utime + own.ru_stime, "children": kids.ru_utime + kids.ru_stime}


def compare(inp: str, out: str, t: int, reps: int) -> dict:
    """captions/s of warm `balance_file` runs, single-process vs forked, interleaved."""
    default = metadata_mod.PARALLEL_MIN_ROWS
    rates: dict[str, list[float]] = {"single_process": [], "forked": []}
    stages: dict[str, list[dict]] = {"single_process": [], "forked": []}
    try:
        for _ in range(reps):
            for mode, threshold in (("single_process", 1 << 62), ("forked", default)):
                metadata_mod.PARALLEL_MIN_ROWS = balance_mod.PARALLEL_MIN_ROWS = threshold
                cpu0 = cpu_seconds()
                stats = balance_file(str(METADATA), inp, out, t=t, seed=0)
                rates[mode].append(stats["captions_per_s"])
                cpu = {k: round(v - cpu0[k], 2) for k, v in cpu_seconds().items()}
                stages[mode].append({**stats["stage_seconds"], "cpu_s": cpu})
    finally:
        metadata_mod.PARALLEL_MIN_ROWS = balance_mod.PARALLEL_MIN_ROWS = default
    return {
        m: {"captions_per_s_min": min(r), "captions_per_s_max": max(r), "stages": stages[m]}
        for m, r in rates.items()
    }


def run(n: int, t: int | None, reps: int = 0) -> dict:
    t = t or max(1, round(n * 20_000 / 1.6e9))
    captions = perturbed(base_captions(), n)
    md = load_metadata(str(METADATA))
    t0 = time.perf_counter()
    Matcher(md)
    build_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = os.path.join(tmp, "in.parquet"), os.path.join(tmp, "out.parquet")
        pl.DataFrame(
            {"caption": captions, "url": [f"http://x/{i}.jpg" for i in range(n)]}
        ).write_parquet(inp)
        cold = balance_file(str(METADATA), inp, out, t=t, seed=0)  # builds the cached matcher
        warm = balance_file(str(METADATA), inp, out, t=t, seed=0)
        compared = compare(inp, out, t, reps) if reps else None
        series = pl.read_parquet(inp)["caption"]
    t0 = time.perf_counter()
    get_matcher(md).match_series(series)
    match_s = time.perf_counter() - t0
    return {
        "bench": "balance",
        "captions": n,
        "t": t,
        "cores": len(os.sched_getaffinity(0)),
        "metadata_entries": len(md),
        "automaton_build_s": round(build_s, 2),
        "end_to_end_captions_per_s": warm["captions_per_s"],
        "end_to_end_s": warm["seconds"],
        "end_to_end_cold_s": cold["seconds"],
        "stage_seconds": warm["stage_seconds"],
        "matcher_captions_per_s": round(n / match_s, 1),
        "matched_fraction": round(warm["matched"] / n, 4),
        "kept_fraction": round(warm["kept"] / n, 4),
        "peak_rss_mib": peak_rss_mib(),
        **({"compare": compared} if compared else {}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captions", type=int, default=100_000, help="pool size (1M for the target)")
    ap.add_argument("--t", type=int, default=None, help="balancing threshold (default: scaled)")
    ap.add_argument("--compare", type=int, default=0, metavar="REPS", help="forked vs not")
    args = ap.parse_args()
    missing = [str(p) for p in (METADATA, LAION, CC3M) if not p.exists()]
    if missing:
        print(json.dumps({"bench": "balance", "skipped": f"shared data absent: {missing}"}))
        return
    print(json.dumps(run(args.captions, args.t, args.compare)))


if __name__ == "__main__":
    main()
