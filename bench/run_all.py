"""Run every benchmark (bench/bench_*.py) and write one JSON: `make bench`.

Each script runs in its own process and prints one JSON object as its last stdout line.
For each, the result records the workload, throughput, the bound it is compared to, the
ratio, peak RSS and how time grows from 1x to 4x the input (`t4x_over_4_t1x`: 1.0 is
linear), keeps the script's own output under `details`, and checks the issue's targets:
pool and video flows >= 0.85 of their bounds, linear scaling, orchestration < 5% of run time.

    .venv/bin/python bench/run_all.py --out bench/results.json [--quick] [--only video,pool]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harness import child_env, cores, prefect_api, scaling  # noqa: E402

# scripts without a --quick flag: the arguments that make them quick
QUICK_ARGS = {"bench_balance.py": ["--captions", "20000"]}
# scripts that do not measure 1x -> 4x themselves: (size flag, 1x quick, 1x full, seconds key)
SCALE_BY_RERUN = {"bench_balance.py": ("--captions", 20000, 100000, "end_to_end_s")}
COMMON = ("workload", "throughput", "unit", "bound", "bound_throughput", "ratio", "target_ratio")
LINEAR_MAX = 1.15  # t4x / (4 t1x) above this is worse than linear (beyond timing noise)


def scripts(only: set[str] | None) -> list[Path]:
    found = sorted(HERE.glob("bench_*.py"))
    return [p for p in found if not only or p.stem.removeprefix("bench_") in only]


def script_args(path: Path, quick: bool) -> list[str]:
    if not quick:
        return []
    if '"--quick"' in path.read_text(encoding="utf-8"):
        return ["--quick"]
    return list(QUICK_ARGS.get(path.name, []))


def run_script(path: Path, args: list[str], timeout: float) -> tuple[dict[str, Any], float]:
    """(the script's JSON, wall seconds); a failure becomes {"error": ...}, never an exception."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, str(path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=HERE.parent,
            env=child_env(),
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}, time.perf_counter() - t0
    wall = time.perf_counter() - t0
    found = last_json(proc.stdout)
    if proc.returncode != 0 or found is None:
        tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
        return {"error": f"exit {proc.returncode}, no JSON object on stdout: {tail}"}, wall
    return found, wall


def last_json(stdout: str) -> dict[str, Any] | None:
    """The last JSON object printed (one line, or indented over several)."""
    lines = stdout.rstrip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("{"):
            try:
                return json.loads("\n".join(lines[i:]))
            except json.JSONDecodeError:
                continue
    return None


def adapt(raw: dict[str, Any]) -> dict[str, Any]:
    """Map a script's own keys onto the common ones (scripts that print them pass through)."""
    out = {k: raw.get(k) for k in COMMON}
    out["peak_rss_bytes"] = raw.get("peak_rss_bytes")
    out["scaling"] = raw.get("scaling")
    if raw.get("benchmark") == "pool_flow" and out["throughput"] is None:
        out |= {
            "throughput": raw.get("flow_images_per_s"),
            "unit": "images per second",
            "bound_throughput": raw.get("bound_images_per_s"),
            "peak_rss_bytes": raw.get("parent_peak_rss_bytes"),
        }
    if raw.get("bench") == "balance" and "skipped" not in raw:
        e2e, matcher = raw.get("end_to_end_captions_per_s"), raw.get("matcher_captions_per_s")
        out |= {
            "workload": f"MetaCLIP balancing of {raw.get('captions')} captions, t={raw.get('t')}",
            "throughput": e2e,
            "unit": "captions per second",
            "bound": "substring matcher alone on the same captions",
            "bound_throughput": matcher,
            "ratio": round(e2e / matcher, 3) if e2e and matcher else None,
            "peak_rss_bytes": int(raw["peak_rss_mib"] * 2**20) if "peak_rss_mib" in raw else None,
        }
    return out


def rerun_scaling(path: Path, quick: bool, timeout: float) -> dict[str, Any] | None:
    """1x and 4x runs of a script that does not measure its own scaling."""
    if path.name not in SCALE_BY_RERUN:
        return None
    flag, n_quick, n_full, key = SCALE_BY_RERUN[path.name]
    n = n_quick if quick else n_full
    one, _ = run_script(path, [flag, str(n)], timeout)
    four, _ = run_script(path, [flag, str(4 * n)], timeout)
    if key not in one or key not in four:
        return {"error": one.get("error") or four.get("error") or f"no {key} in output"}
    rss = [int(r["peak_rss_mib"] * 2**20) if "peak_rss_mib" in r else None for r in (one, four)]
    return {flag.lstrip("-") + "_1x": n, **scaling(one[key], four[key], *rss)}


def targets(records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's acceptance targets, each with its value and by how much it is met/missed."""
    out = []

    def check(name: str, metric: str, value: Any, target: float, higher_is_better: bool) -> None:
        if value is None:
            out.append({"benchmark": name, "metric": metric, "value": None, "met": None})
            return
        met = value >= target if higher_is_better else value <= target
        margin = value - target if higher_is_better else target - value
        out.append({"benchmark": name, "metric": metric, "value": value, "target": target,
                    "met": met, "margin": round(margin, 4)})  # fmt: skip

    for name, rec in records.items():
        if name == "scaling" and records.get("pool", {}).get("scaling") == rec.get("scaling"):
            continue  # bench_scaling.py measures the pool flow: checked under "pool"
        if rec.get("target_ratio") is not None:
            check(name, "ratio", rec.get("ratio"), rec["target_ratio"], True)
        if rec.get("scaling") and "t4x_over_4_t1x" in rec["scaling"]:
            check(name, "t4x_over_4_t1x", rec["scaling"]["t4x_over_4_t1x"], LINEAR_MAX, False)
        details = rec.get("details", {})
        if details.get("noop_run_s") is not None:
            check(name, "noop_run_s", details["noop_run_s"], details["noop_run_target_s"], False)
            backfill = next((v for k, v in details.items() if k.startswith("noop_backfill_")
                             and k.endswith("_dates_s")), None)  # fmt: skip
            check(name, "noop_backfill_s", backfill, details["noop_backfill_target_s"], False)
        pct = rec.get("details", {}).get("overhead_pct_at_default_shard")
        if pct is not None:
            check(name, "orchestration_overhead_pct", pct, 5.0, False)
        for metric, target in (details.get("targets") or {}).items():  # the bench's own targets
            check(name, metric, details.get(metric), target, False)
    # language ID per caption against the pool flow's time per sample, in this same run
    lang, pool = records.get("language", {}), records.get("pool", {})
    lang_ms = lang.get("details", {}).get("ms_per_caption", lang.get("ms_per_caption"))
    if lang_ms is not None and pool.get("throughput"):
        share = lang_ms / (1000.0 / pool["throughput"])
        check("language", "share_of_pool_time_per_sample", round(share, 6), 0.10, False)
    return out


def machine() -> dict[str, Any]:
    import torch

    from tasks.model.clip import cpu_supports_fast_bf16

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": cores(),
        "cpu_bf16": cpu_supports_fast_bf16(),
        "cuda": torch.cuda.is_available(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "results.json"))
    ap.add_argument("--quick", action="store_true", help="small inputs: a few minutes in all")
    ap.add_argument("--only", help="re-run these (e.g. video,overhead), keep the others in --out")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per script")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    records = previous(Path(args.out), args.quick) if only else {}
    t0, load_before = time.perf_counter(), round(os.getloadavg()[0], 2)
    # one Prefect server for every script (they use PREFECT_API_URL when set): each starting
    # its own cost 5-10 s, a sixth of `--quick`
    with prefect_api():
        for path in scripts(only):
            name = path.stem.removeprefix("bench_")
            print(f"running {path.name} ...", file=sys.stderr, flush=True)
            raw, wall = run_script(path, script_args(path, args.quick), args.timeout)
            rec = {**adapt(raw), "wall_s": round(wall, 1), "details": raw}
            if rec["scaling"] is None and "error" not in raw:
                rec["scaling"] = rerun_scaling(path, args.quick, args.timeout)
            records[name] = rec
    if "pool" in records and "scaling" in records and records["pool"]["scaling"] is None:
        records["pool"]["scaling"] = records["scaling"].get("scaling")  # bench_scaling.py
    result = {
        "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        # a shared machine's neighbours show here (and in every timing): 1-minute load average
        "wall_s": round(time.perf_counter() - t0, 1),
        "load_1m": {"start": load_before, "end": round(os.getloadavg()[0], 2)},
        "benchmarks": records,
        "targets": targets(records),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print_summary(result, args.out)
    return 1 if any("error" in r["details"] for r in records.values()) else 0


def previous(out: Path, quick: bool) -> dict[str, dict[str, Any]]:
    """The other benchmarks' records from an earlier run in the same mode (for --only)."""
    try:
        data = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data.get("benchmarks", {}) if data.get("mode") == ("quick" if quick else "full") else {}


def print_summary(result: dict[str, Any], out: str) -> None:
    for name, rec in result["benchmarks"].items():
        err = rec["details"].get("error")
        line = f"error: {err.splitlines()[0]}" if err else f"{rec['throughput']} {rec['unit']}"
        if rec.get("ratio") is not None:
            line += f", {rec['ratio']} of {rec['bound']}"
        print(f"{name:10s} {line}", file=sys.stderr)
    for t in result["targets"]:
        print(
            f"target {t['benchmark']}.{t['metric']}: {t['value']} met={t['met']}", file=sys.stderr
        )
    load = result["load_1m"]
    print(f"{result['wall_s']} s in all, load {load['start']} -> {load['end']}", file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
