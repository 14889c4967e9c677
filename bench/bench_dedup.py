"""Benchmark the dedup core: pHash grouping of 1M hashes and SemDeDup of 1M fp16 embeddings.

Prints one JSON object. `summary` holds, per part, the seconds of one call, its peak extra
memory in bytes and that peak over the input array's size (`peak_extra_over_input`; issue
10's targets: < 30 s for pHash, < 90 s for SemDeDup, and < 2x the input for both).

Each part runs in a fresh child process, which builds its input in bounded chunks and then
calls the function twice on it:

1. timed, untraced: `seconds`, and the resident-set growth `rss_extra_bytes` = VmHWM after
   the call - VmRSS before it, with the high-water mark reset just before the call
   (/proc/self/clear_refs) and glibc's free memory handed back first (malloc_trim), so pages
   freed while building the input cannot silently absorb the call's allocations;
2. under tracemalloc: `traced_peak_bytes`, the peak of the bytes allocated during the call
   and not yet freed, result included. numpy reports every array buffer to tracemalloc, so
   this is exact for numpy arrays and immune to allocator page reuse, but it does not see
   memory C libraries take with their own malloc (BLAS buffers, sort scratch).

A warm-up call on the first 4,096 rows comes first, so what a process pays once (library
code pages, lazy imports, BLAS thread buffers) is not charged to the measured calls.
`peak_extra_bytes` is the larger of the two (a conservative figure); both stay in the
output, with `deterministic` (the two calls gave the same groups). Inputs: uniform random
64-bit hashes with 10% planted near copies (1..d bit flips) and 1% exact copies; clustered
unit embeddings (1,000 topics) with 5% planted near copies (cosine 0.96-0.995). Each part
also runs at 1/4 of the size, for the 1x -> 4x scaling.

    .venv/bin/python bench/bench_dedup.py [--quick] [--only perceptual|semantic]
        [--hashes N] [--embeddings N] [--max-distance 4] [--threshold 0.95] [--dim 512]
        [--one-call]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harness import cores, emit, load_1m, run_child, scaling  # noqa: E402

CHUNK = 16_384  # rows generated at a time: input building never peaks above the call
TARGET_S = {"perceptual": 30.0, "semantic": 90.0}  # at 1M rows on 2 cores
TARGET_EXTRA_OVER_INPUT = 2.0
WARMUP_ROWS = 4096  # one small call first, so one-off process costs are not charged


def planted_hashes(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, (2, m) planted pairs within distance d)."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64, n, dtype=np.uint64)
    m = n // 10
    src, dst = rng.choice(n, (2, m), replace=False)
    for i in range(0, m, CHUNK):
        s = slice(i, i + CHUNK)
        flips = rng.integers(1, max(d, 1) + 1, len(src[s]))
        # the first `flips` of a random bit order per row: distinct bits, exactly `flips` of them
        order = np.argsort(rng.random((len(src[s]), 64)), axis=1)
        bits = np.where(np.arange(64) < flips[:, None], np.uint64(1) << order.astype(np.uint64), 0)
        h[dst[s]] = h[src[s]] ^ np.bitwise_or.reduce(bits.astype(np.uint64), axis=1)
    copies = rng.choice(n, (2, n // 100), replace=False)
    h[copies[1]] = h[copies[0]]
    keep = ~np.isin(src, copies[1]) & ~np.isin(dst, copies[1])
    return h, np.stack([src[keep], dst[keep]])


def planted_embeddings(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fp16 unit embeddings, (2, m) planted near-copy pairs), built chunk by chunk."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((1000, dim)).astype(np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float16)
    pairs = []
    for i in range(0, n, CHUNK):
        k = min(CHUNK, n - i)
        noise = rng.standard_normal((k, dim), dtype=np.float32)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        x = topics[rng.integers(0, 1000, k)] + 1.2 * noise
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        src, dst = rng.choice(k, (2, k // 20), replace=False)
        cos = rng.uniform(0.96, 0.995, len(src)).astype(np.float32)[:, None]
        z = rng.standard_normal((len(src), dim), dtype=np.float32)
        z -= (z * x[src]).sum(1, keepdims=True) * x[src]
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        x[dst] = cos * x[src] + np.sqrt(1 - cos**2) * z
        out[i : i + k] = x
        pairs.append(np.stack([src + i, dst + i]))
    return out, np.concatenate(pairs, axis=1)


def _proc_status_bytes(field: str) -> int | None:
    """VmRSS / VmHWM of this process from /proc/self/status (Linux), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Linux >= 4.0: restart the VmHWM count here, so input building is not counted."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def trim_heap() -> None:
    """Collect garbage and hand glibc's free heap pages back to the OS (no-op elsewhere)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def child(part: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Two calls on fresh input (timed + RSS, then traced); runs in its own process."""
    from tasks.pool.dedup import perceptual_groups, semantic_groups

    t0 = time.perf_counter()
    if part == "perceptual":
        data, planted = planted_hashes(n, args.max_distance)
    else:
        data, planted = planted_embeddings(n, args.dim)
    build_s = time.perf_counter() - t0

    def call(x: np.ndarray = data) -> np.ndarray:
        if part == "perceptual":
            return perceptual_groups(x, args.max_distance)
        return semantic_groups(x, args.threshold)

    call(data[:WARMUP_ROWS].copy())  # code pages, lazy imports, BLAS threads: once a process

    def measured(traced: bool) -> dict[str, Any]:
        """One call: its groups, seconds, VmHWM growth over VmRSS before, tracemalloc peak."""
        trim_heap()
        rss_before, reset = _proc_status_bytes("VmRSS"), reset_peak_rss()
        if traced:
            tracemalloc.start()
        t0 = time.perf_counter()
        groups = call()
        seconds = time.perf_counter() - t0
        hwm = _proc_status_bytes("VmHWM")
        peak = tracemalloc.get_traced_memory()[1] if traced else None
        tracemalloc.stop()
        extra = hwm - rss_before if reset and hwm and rss_before else None
        return {"groups": groups, "s": seconds, "hwm": hwm, "rss_extra": extra, "traced": peak}

    # timed and RSS without tracing overhead, then traced (--one-call: one traced call)
    timed = measured(traced=args.one_call)
    traced = timed if args.one_call else measured(traced=True)
    groups, rss_extra, traced_peak = timed["groups"], timed["rss_extra"], traced["traced"]
    peak_extra = max(traced_peak, rss_extra or 0)
    return {
        "part": part,
        "rows": n,
        "input_bytes": data.nbytes,
        "seconds": round(timed["s"], 3),
        "rows_per_s": round(n / timed["s"], 1),
        "peak_extra_bytes": peak_extra,
        "peak_extra_over_input": round(peak_extra / data.nbytes, 3),
        "traced_peak_bytes": traced_peak,
        "traced_peak_over_input": round(traced_peak / data.nbytes, 3),
        "rss_extra_bytes": rss_extra,
        "rss_extra_over_input": None if rss_extra is None else round(rss_extra / data.nbytes, 3),
        "peak_rss_bytes": timed["hwm"],  # the whole process during the call
        "traced_call_s": round(traced["s"], 3),
        "one_call": args.one_call,  # True: seconds include tracemalloc's overhead
        "deterministic": bool(np.array_equal(groups, traced["groups"])),
        "groups": len(np.unique(groups)),
        "planted_pairs_found": round(float((groups[planted[0]] == groups[planted[1]]).mean()), 4),
        "build_input_s": round(build_s, 2),
    }


def run_part(part: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    flags = [
        "--max-distance", str(args.max_distance), "--threshold", str(args.threshold),
        "--dim", str(args.dim), *(["--one-call"] if args.one_call else []),
    ]  # fmt: skip
    quarter = run_child(Path(__file__), ["--child", part, "--n", str(n // 4), *flags])
    full = run_child(Path(__file__), ["--child", part, "--n", str(n), *flags])
    full["scaling"] = scaling(
        quarter["seconds"], full["seconds"], quarter["peak_rss_bytes"], full["peak_rss_bytes"]
    )
    full["scaling"]["peak_extra_4x_over_1x"] = round(
        full["peak_extra_bytes"] / max(1, quarter["peak_extra_bytes"]), 3
    )
    full["quarter"] = quarter
    if n >= 1_000_000:
        full["target_s"] = TARGET_S[part]
        full["met_time"] = full["seconds"] <= TARGET_S[part]
    full["target_peak_extra_over_input"] = TARGET_EXTRA_OVER_INPUT
    full["met_memory"] = full["peak_extra_over_input"] < TARGET_EXTRA_OVER_INPUT
    return full


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100,000 hashes and embeddings")
    ap.add_argument("--hashes", type=int, default=None)
    ap.add_argument("--embeddings", type=int, default=None)
    ap.add_argument("--max-distance", type=int, default=4)
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--only", choices=["perceptual", "semantic"], default=None)
    ap.add_argument(
        "--one-call", action="store_true", help="one traced call per size (seconds include tracing)"
    )
    ap.add_argument("--child", choices=["perceptual", "semantic"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        emit(child(args.child, args.n, args))
        return
    default = 100_000 if args.quick else 1_000_000
    sizes = {"perceptual": args.hashes or default, "semantic": args.embeddings or default}
    parts = {p: run_part(p, n, args) for p, n in sizes.items() if args.only in (None, p)}
    main_part = parts.get("semantic") or parts["perceptual"]
    summary = {
        p: {k: r[k] for k in ("rows", "seconds", "input_bytes", "peak_extra_bytes",
                              "peak_extra_over_input", "met_memory")}
        | ({"met_time": r["met_time"]} if "met_time" in r else {})
        for p, r in parts.items()
    }  # fmt: skip
    flat = {
        f"{p}_{k}": r[k] for p, r in parts.items() for k in ("seconds", "peak_extra_over_input")
    }
    targets = {f"{p}_peak_extra_over_input": TARGET_EXTRA_OVER_INPUT for p in parts}
    targets |= {f"{p}_seconds": TARGET_S[p] for p, r in parts.items() if "target_s" in r}
    emit(
        {
            "bench": "dedup",
            "workload": ", ".join(
                f"{p} dedup of {r['rows']:,} rows in {r['seconds']} s, peak "
                f"{r['peak_extra_over_input']}x the input"
                for p, r in parts.items()
            )
            + f" (pHash d<={args.max_distance}, cosine>={args.threshold}, dim {args.dim})",
            "throughput": main_part["rows_per_s"],
            "unit": f"{main_part['part']} rows per second",
            "bound": None,
            "bound_throughput": None,
            "ratio": None,
            "target_ratio": None,
            "peak_rss_bytes": max(r["peak_rss_bytes"] or 0 for r in parts.values()) or None,
            "scaling": main_part["scaling"],
            "summary": summary,
            **flat,
            "targets": targets,  # metric -> upper bound, checked by run_all.py
            "parts": parts,
            "cores": cores(),
            "load_1m": load_1m(),
        }
    )


if __name__ == "__main__":
    main()
