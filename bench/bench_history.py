"""A year of nights: does a night's cost stay flat as the history grows? (issue 19)

Simulates N nights of M samples each through the real select and commit path of the pool
flow (`plan_run`, `balance_inputs`, the dataset-scope dedup lookup, `select`, the version
folder, `finish` -> commit + catalog, then the index compaction), with every dedup method on,
`scope: dataset` and MetaCLIP `running_counts`. Scoring is replaced by generated score tables
(sha256, 64-bit pHash, clustered 512-d fp16 embeddings, MetaCLIP entry ids), written where
the score stage would have cached them; shards are not written (there are no images).
Each night runs in a fresh process, so its peak RSS is its own.

Planted cross-night copies of kept samples of earlier nights (exact bytes, a pHash within the
configured distance, an embedding at cosine 0.96-0.995) must be found, and no unplanted sample
may become a duplicate. The JSON has per-night wall time and peak RSS, night N (default 60)
over night 10 (a shorter run: its middle night), recall per method and false merges; and
planning a run and `curate ls` over 1,000 published partitions on a moto S3 server.

    .venv/bin/python bench/bench_history.py [--nights 60 --per-night 100000] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, cores, emit, load_1m, peak_rss_bytes, quiet, run_child

DIM = 512
N_ENTRIES = 20_000
N_TOPICS = 4000
PLANT = {"exact": 0.02, "perceptual": 0.02, "semantic": 0.02}  # of each night's samples


def date_of(night: int) -> str:
    import datetime as dt

    return (dt.date(2026, 1, 1) + dt.timedelta(days=night - 1)).isoformat()


def config(work: Path, model: dict[str, str]) -> dict[str, Any]:
    return {
        "dataset": "history",
        "output": str(work / "out"),
        "cache": str(work / "cache"),
        "model": {**model, "precision": "fp32", "device": "cpu"},
        "pool": {
            "input": str(work / "in" / "{date}" / "*.tar"),
            "text_filter": {"enabled": False},
            "dedup": {
                "exact": True,
                "perceptual": {"max_distance": 4},
                "semantic": {"threshold": 0.95},
                "scope": "dataset",
            },
            "balance": {
                "metadata": str(work / "metadata.json"),
                "t": 200,
                "seed": 0,
                "running_counts": True,
            },
        },
    }


# --- generating a night (parent) -------------------------------------------------------------


def topics() -> np.ndarray:
    rng = np.random.default_rng(12345)
    c = rng.standard_normal((N_TOPICS, DIM)).astype(np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def published_kept(work: Path, night: int) -> tuple[Any, np.ndarray]:
    """(index rows, embeddings) of a published night's kept samples (its dedup segment)."""
    import polars as pl

    from tasks.publish.manifest import read_published

    found = read_published(str(work / "out" / "history" / "pool" / date_of(night)))
    assert found is not None
    rows = pl.read_parquet(found.url("dedup/index.parquet"))
    return rows, np.load(found.url("dedup/emb.npy"), mmap_mode="r")


def make_night(work: Path, night: int, n: int, centres: np.ndarray) -> list[dict]:
    """Write night `night`'s score table, embeddings and matches; return the planted rows."""
    import polars as pl

    from schemas.tables import SCORES, conform

    rng = np.random.default_rng(1000 + night)
    emb = unit(centres[rng.integers(0, N_TOPICS, n)] + rng.standard_normal((n, DIM)) * 0.045)
    sha = [hashlib.sha256(f"{night}/{i}".encode()).hexdigest() for i in range(n)]
    phash = rng.integers(0, 2**64, n, dtype=np.uint64)
    planted: list[dict] = []
    if night > 1:
        slots = rng.permutation(n)
        at = 0
        for method, share in PLANT.items():
            k = int(n * share)
            for i in slots[at : at + k]:
                src_night = int(rng.integers(1, night))
                rows, src_emb = SOURCES.get(src_night) or _remember(work, src_night)
                j = int(rng.integers(0, rows.height))
                i = int(i)
                if method == "exact":
                    sha[i] = rows["sha256"][j]
                elif method == "perceptual":
                    v = int(rows["phash"][j])
                    for b in rng.choice(64, size=int(rng.integers(1, 5)), replace=False):
                        v ^= 1 << int(b)
                    phash[i] = v
                else:
                    cos = rng.uniform(0.96, 0.995)
                    s = np.asarray(src_emb[j], np.float32)
                    s /= np.linalg.norm(s)
                    r = rng.standard_normal(DIM).astype(np.float32)
                    r -= (r @ s) * s
                    r /= np.linalg.norm(r)
                    emb[i] = cos * s + np.sqrt(1 - cos**2) * r
                planted.append({"i": i, "method": method, "source": rows["uid"][j],
                                "night": src_night})  # fmt: skip
            at += k
    uid = [f"{night:03d}-{i:07d}" for i in range(n)]
    folder = work / "nights" / f"{night:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    source = str(work / "in" / date_of(night) / "00000.tar")
    scores = pl.DataFrame(
        {
            "uid": uid, "source": source, "key": uid, "index": np.arange(n), "caption": "x",
            "url": None, "image_ext": "jpg", "width": 256, "height": 256,
            "clip_score": rng.random(n).astype(np.float32), "emb_row": np.arange(n),
            "error": None, "error_detail": None, "source_meta": None, "sha256": sha,
            "phash": phash, "lang": "en", "lang_score": 0.99, "n_tokens": 8, "truncated": False,
        }
    )  # fmt: skip
    conform(scores, SCORES).write_parquet(folder / "scores.parquet")
    np.save(folder / "emb.npy", emb.astype(np.float16))
    ranks = np.minimum(rng.zipf(1.3, size=(n, 2)) - 1, N_ENTRIES - 1).astype(np.uint32)
    pl.DataFrame(
        {"uid": uid, "index": np.arange(n), "entry_ids": [sorted(set(r)) for r in ranks.tolist()]},
        schema={"uid": pl.String, "index": pl.Int64, "entry_ids": pl.List(pl.UInt32)},
    ).write_parquet(folder / "matches.parquet")
    tar = work / "in" / date_of(night) / "00000.tar"
    tar.parent.mkdir(parents=True, exist_ok=True)
    tar.write_bytes(f"night {night}".encode())  # what the plan fingerprints
    return planted


SOURCES: dict[int, tuple[Any, np.ndarray]] = {}


def _remember(work: Path, night: int) -> tuple[Any, np.ndarray]:
    SOURCES[night] = published_kept(work, night)
    return SOURCES[night]


def evaluate(work: Path, night: int, planted: list[dict]) -> dict[str, Any]:
    """Planted copies found (duplicate of their very source) per method; false merges."""
    import polars as pl

    from tasks.publish.manifest import read_published

    found = read_published(str(work / "out" / "history" / "pool" / date_of(night)))
    assert found is not None
    df = pl.read_parquet(found.url("samples.parquet"), columns=["uid", "status", "duplicate_of"])
    status = df["status"].cast(pl.String).to_list()
    dup_of = df["duplicate_of"].to_list()
    out: dict[str, Any] = {m: [0, 0] for m in PLANT}
    planted_rows = set()
    for p in planted:
        planted_rows.add(p["i"])
        out[p["method"]][1] += 1
        if status[p["i"]] == "duplicate" and dup_of[p["i"]] == p["source"]:
            out[p["method"]][0] += 1
    out["false_merges"] = sum(
        1 for i, s in enumerate(status) if s == "duplicate" and i not in planted_rows
    )
    out["kept"] = status.count("kept")
    return out


# --- one night (child) -----------------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU time of this process, every thread: what a night costs on a loaded machine too."""
    import resource

    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def child(work: Path, night: int) -> dict[str, Any]:
    quiet()
    import polars as pl

    from flows.run import finish, versioned
    from schemas.config import parse_config
    from tasks.metaclip.counts import balance_inputs, save_partition_counts
    from tasks.pool.dedup_step import EMB_FILE, INDEX_FILE, embedding_reader, index_table
    from tasks.pool.select import select
    from tasks.publish.writer import describe_file, write_table

    cfg = parse_config(json.loads((work / "config.json").read_text()))
    so, date = cfg.storage_options, date_of(night)
    folder = work / "nights" / f"{night:03d}"
    source = str(work / "in" / date / "00000.tar")
    import flows.pool

    lookup_s = [0.0, 0.0]  # wall, CPU of the history lookup (query_history)
    query = flows.pool.query_history

    def timed_query(*a: Any, **kw: Any) -> Any:
        w, c = time.perf_counter(), cpu_seconds()
        try:
            return query(*a, **kw)
        finally:
            lookup_s[0] += time.perf_counter() - w
            lookup_s[1] += cpu_seconds() - c

    flows.pool.query_history = timed_query
    t0, c0 = time.perf_counter(), cpu_seconds()
    from flows.plan import plan_run

    plan = plan_run(cfg, "pool", date)
    scores = pl.read_parquet(folder / "scores.parquet")
    matches = pl.read_parquet(folder / "matches.parquet").with_columns(
        pl.lit(source).alias("source")
    )
    embeddings = embedding_reader({source: str(folder / "emb.npy")}, so)
    bal = balance_inputs(cfg, date)
    t_plan = time.perf_counter() - t0
    profile = os.environ.get("CURATE_BENCH_PROFILE")  # a folder: one cProfile per night
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    sel = select(scores, cfg.pool, matches, bal, embeddings, prior_of(cfg, plan), {})
    if profile:
        prof.disable()
        prof.dump_stats(str(Path(profile) / f"night-{night:03d}.prof"))
    t_select = time.perf_counter() - t0 - t_plan
    rss_select = peak_rss_bytes()
    with versioned(plan, so) as version:
        outputs = [write_table(sel.samples, version.url("samples.parquet"), "samples.parquet", so)]
        for name in save_counts(save_partition_counts, version, bal, sel.pool_counts, so):
            outputs.append(describe_file(version.url(name), name, so))
        kept = sel.samples.filter(pl.col("status") == "kept")
        outputs.append(write_table(index_table(kept), version.url(INDEX_FILE), INDEX_FILE, so))
        from tasks.io import storage

        storage.write_bytes(version.url(EMB_FILE), storage.npy_bytes(embeddings(kept)), so)
        outputs.append(describe_file(version.url(EMB_FILE), EMB_FILE, so))
        counts = sel.samples.group_by(pl.col("status").cast(pl.String)).len()
        stats = {"flow": "pool", "dataset": cfg.dataset, "partition": date,
                 "counts": {"input": sel.samples.height, **dict(counts.iter_rows())}}  # fmt: skip
        finish(cfg, plan, version, outputs, stats, lambda v: [],
               {"dedup": {"against": sel.extra.get("dedup_prior", {})}})  # fmt: skip
    t_night, c_night = time.perf_counter() - t0, cpu_seconds() - c0
    rss_night = peak_rss_bytes()

    class Log:
        def info(self, *a: Any) -> None: ...

        def warning(self, msg: str, *a: Any) -> None:
            print(msg % a, file=sys.stderr)

    t1 = time.perf_counter()
    try:
        from flows.pool import compact_index
    except ImportError:  # the code before the dedup index: nothing to compact
        compact_index = None
    if compact_index is not None:
        compact_index(cfg, Log())
    return {"night": night, "wall_s": round(t_night, 3), "cpu_s": round(c_night, 3),
            "plan_s": round(t_plan, 3),
            "select_s": round(t_select, 3), "lookup_s": round(lookup_s[0], 3),
            "lookup_cpu_s": round(lookup_s[1], 3), "peak_rss_bytes": rss_night,
            "peak_rss_select_bytes": rss_select,
            "compact_s": round(time.perf_counter() - t1, 3),
            "read": sel.extra.get("dedup_read", {})}  # fmt: skip


def prior_of(cfg: Any, plan: Any) -> Any:
    """The dataset-scope dedup history as the select stage takes it. Before the dedup index
    (to measure the old curve with the same bench) it was every earlier segment, loaded."""
    try:
        from flows.pool import history_lookup
    except ImportError:
        from tasks.pool.dedup_step import read_prior

        d = cfg.pool.dedup
        return read_prior(cfg.output, cfg.dataset, plan.prior, d.semantic is not None,
                          cfg.storage_options, plan.model)  # fmt: skip
    return history_lookup(cfg, plan)


def save_counts(save: Any, version: Any, bal: Any, counts: Any, so: Any) -> list[str]:
    """This night's counts files (before running totals existed: one file, its own)."""
    import inspect

    if "folder" in inspect.signature(save).parameters:
        return save(version.root, bal, counts, so)
    save(version.url("entry_counts.parquet"), bal, counts, so)
    return ["entry_counts.parquet"]


# --- planning and ls over 1,000 partitions on S3 ---------------------------------------------


def catalog_bench(work: Path, model: dict[str, str], n: int) -> dict[str, Any]:
    """`plan_run` and `curate ls` over `n` published partitions on moto S3 (manifests written
    directly; the catalog rebuilt from them once, as for an existing dataset)."""
    import io
    from contextlib import redirect_stdout

    from flows.cli import main
    from flows.plan import plan_run
    from infra.s3 import moto_s3, patched_env
    from schemas.config import parse_config
    from tasks.io import storage
    from tasks.publish.catalog import write_rebuilt

    with moto_s3() as s3:
        bucket = s3.create_bucket("history-bench")
        so = s3.storage_options
        base = f"{bucket}/out/cat/pool"
        for night in range(1, n + 1):
            part = f"{base}/{date_of(night)}"
            version = f"v-20260101T000000Z-{night:08x}"
            manifest = {"flow": "pool", "dataset": "cat", "partition": date_of(night),
                        "version": version, "run_key": f"k{night}", "counts": {"input": 10,
                        "kept": 7}, "created": "2026-01-01T00:00:00+00:00",
                        "outputs": [{"path": f"{version}/entry_counts.parquet",
                                     "sha256": f"{night:064x}", "size": 1}]}  # fmt: skip
            storage.write_json(f"{part}/manifest.json", manifest, so)
            storage.write_bytes(f"{part}/_SUCCESS", b"", so)
        t0 = time.perf_counter()
        write_rebuilt(base, so)
        rebuild_s = time.perf_counter() - t0
        storage.write_bytes(f"{bucket}/in/{date_of(n + 1)}/00000.tar", b"x", so)
        raw = {
            **config(work, model),
            "dataset": "cat",
            "output": f"{bucket}/out",
            "storage_options": so,
            "pool": {**config(work, model)["pool"], "input": f"{bucket}/in/{{date}}/*.tar"},
        }
        cfg = parse_config(raw)
        t0 = time.perf_counter()
        plan = plan_run(cfg, "pool", date_of(n + 1))
        plan_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with (
            patched_env({"AWS_ENDPOINT_URL_S3": s3.endpoint}),
            redirect_stdout(io.StringIO()) as out,
        ):
            main(["ls", f"{bucket}/out/cat"])  # the CLI reads the endpoint from the environment
        ls_s = time.perf_counter() - t0
        listed = out.getvalue().count("\n") - 1
    return {"partitions": n, "rebuild_catalog_s": round(rebuild_s, 3),
            "plan_s": round(plan_s, 3), "ls_s": round(ls_s, 3), "ls_rows": listed,
            "history_through": plan.history["through"] if plan.history else None}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nights", type=int, default=60)
    ap.add_argument("--per-night", type=int, default=100_000)
    ap.add_argument("--partitions", type=int, default=1000, help="for the plan/ls timing")
    ap.add_argument("--quick", action="store_true", help="5 nights of 10,000 samples")
    ap.add_argument("--work", help="keep the data here (default: a temporary folder)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        emit(child(Path(args.work), args.child))
        return
    if args.quick:
        args.nights, args.per_night, args.partitions = 5, 10_000, 100
    quiet()
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        emit(run(work, args))


def with_compaction(nights: list[dict], ref_at: int) -> dict[str, float]:
    """Night cost with the compaction that follows its commit: the last night over night
    `ref_at` (an index), and the means of the 3 nights ending at each."""

    def total(at: int) -> float:
        return nights[at]["wall_s"] + nights[at]["compact_s"]

    def window(at: int) -> float:
        return sum(total(a) for a in range(max(0, at - 2), at + 1)) / (at + 1 - max(0, at - 2))

    last_at = len(nights) - 1
    return {"last_over_ref": round(total(last_at) / total(ref_at), 3),
            "window_last_over_ref": round(window(last_at) / window(ref_at), 3)}  # fmt: skip


def run(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from infra.demo_data import make_tiny_model

    arch, ckpt = make_tiny_model(work / "model")
    model = {"name": str(arch), "pretrained": str(ckpt)}
    (work / "metadata.json").write_text(json.dumps([f"entry {i}" for i in range(N_ENTRIES)]))
    (work / "config.json").write_text(json.dumps(config(work, model)))
    centres = topics()
    nights, found = [], {m: [0, 0] for m in PLANT}
    false_merges = 0
    for night in range(1, args.nights + 1):
        planted = make_night(work, night, args.per_night, centres)
        row = run_child(Path(__file__), ["--work", str(work), "--child", str(night)], 3600)
        got = evaluate(work, night, planted)
        for m in PLANT:
            found[m][0] += got[m][0]
            found[m][1] += got[m][1]
        false_merges += got["false_merges"]
        nights.append({**row, "kept": got["kept"], "found": {m: got[m] for m in PLANT}})
        print(json.dumps(nights[-1]), file=sys.stderr)
    ref_at = min(9, len(nights) // 2 - 1) if len(nights) > 1 else 0  # night 10
    ref = nights[ref_at]
    last = nights[-1]
    recall = {m: round(f / t, 4) if t else None for m, (f, t) in found.items()}
    return {
        "workload": (
            f"{args.nights} nights x {args.per_night} samples, dedup scope dataset "
            "(exact, perceptual d=4, semantic 0.95) + running counts"
        ),
        "throughput": round(args.per_night / last["wall_s"], 1),
        "unit": "samples/s (last night)",
        "bound": f"night {ref['night']}",
        "bound_throughput": round(args.per_night / ref["wall_s"], 1),
        "ratio": round(ref["wall_s"] / last["wall_s"], 3),
        "target_ratio": round(1 / 1.3, 3),
        "time_last_over_ref": round(last["wall_s"] / ref["wall_s"], 3),
        "cpu_last_over_ref": round(last["cpu_s"] / ref["cpu_s"], 3),
        "rss_last_over_ref": round(last["peak_rss_bytes"] / ref["peak_rss_bytes"], 3),
        # a night's job also compacts the index after its commit: the same ratio with it, and
        # over 3-night windows (merges come every third night)
        "with_compaction": with_compaction(nights, ref_at),
        "peak_rss_bytes": max(n["peak_rss_bytes"] for n in nights),
        "recall": recall,
        "false_merges": false_merges,
        "nights": nights,
        "catalog": catalog_bench(work, model, args.partitions),
        "cores": cores(),
        "load_1m": load_1m(),
        "root": str(ROOT),
    }


if __name__ == "__main__":
    main()
