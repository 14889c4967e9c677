"""Pool-flow throughput against the faster bare forward loop, fp32 or bf16, same run.

The bound is `encode_image` + `encode_text` on already decoded, preprocessed and tokenized
batches, measured in this run in fp32 and in bf16 (a CPU without native bf16 runs it
several times slower: the faster one is the bound). The flow is the whole `curate run pool`
(read tars, decode, preprocess, tokenize, score, select, publish) with an empty cache and
`precision: auto`, over 12 input shards of mixed sizes. Also reported: the share of
distinct captions per shard on the shared LAION/CC3M captions (the text tower runs once per
distinct caption) and the text-tower time that saves. Peak RSS of the score stage is
measured in fresh processes for 1x, 2x and 4x the shards.

Usage: python bench/bench_pool.py [--images N] [--model ViT-B-32]
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
sys.path.insert(0, str(ROOT / "bench"))
from harness import child_env, cores  # noqa: E402


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


def bound_precisions(args: argparse.Namespace) -> tuple[str, ...]:
    """Both precisions (the bound is the faster); --quick: only the one `auto` resolves to."""
    if not args.quick:
        return ("fp32", "bf16")
    from tasks.model.clip import resolve_device, resolve_precision

    return (resolve_precision("auto", resolve_device(args.device)),)


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
        env=child_env(),  # ends with this process (its harness import ties it)
    )
    return int(out.stdout.strip().splitlines()[-1])


SHARD_SIZES = (16, 96, 48, 128, 24, 64, 112, 32, 80, 40, 8, 56)  # 12 shards, mixed sizes


def write_mixed_shards(folder: Path, pairs: list[tuple[bytes, str]]) -> None:
    """12 shards whose sizes follow SHARD_SIZES, scaled to the number of images."""
    scale = len(pairs) / sum(SHARD_SIZES)
    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    for s, size in enumerate(SHARD_SIZES):
        n = max(1, round(size * scale)) if s < len(SHARD_SIZES) - 1 else len(pairs) - start
        write_shards(folder / f"s{s:02d}", pairs[start : start + n], n)
        (folder / f"s{s:02d}" / "00000.tar").rename(folder / f"{s:05d}.tar")
        start += n


def caption_repeats(shard_size: int = 10_000) -> dict:
    """Distinct-caption share per shard-sized chunk of the shared caption sets."""
    import polars as pl

    sets = {}
    laion = ROOT.parent / "shared" / "data" / "captions" / "laion400m_10k.parquet"
    cc3m = ROOT.parent / "shared" / "data" / "captions" / "cc3m_val_15k.tsv"
    if laion.exists():
        sets["laion400m_10k"] = pl.read_parquet(laion)["TEXT"].to_list()
    if cc3m.exists():
        sets["cc3m_val_15k"] = [
            line.split("\t", 1)[0] for line in cc3m.read_text().splitlines() if line
        ]
    out = {}
    for name, caps in sets.items():
        chunks = [caps[i : i + shard_size] for i in range(0, len(caps), shard_size)]
        distinct = sum(len(set(c)) for c in chunks)
        out[name] = {"captions": len(caps), "distinct_per_shard": distinct}
        out[name]["distinct_share"] = round(distinct / max(1, len(caps)), 4)
    return out


def text_seconds_per_caption(model_cfg, captions: list[str], batch_size: int) -> float:
    from tasks.model.clip import load_model

    m = load_model(model_cfg)
    batches = [
        m.tokenize(captions[i : i + batch_size]) for i in range(0, len(captions), batch_size)
    ]
    m.encode_tokens(batches[0][:2])
    t0 = time.perf_counter()
    for tok in batches:
        m.encode_tokens(tok)
    return (time.perf_counter() - t0) / len(captions)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=704)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="32 images; the bound at the precision 'auto' picks only; peak RSS at 1x and 4x",
    )
    args = ap.parse_args()
    if args.quick:
        args.images = min(args.images, 32)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from schemas.config import ModelConfig

    work = Path(tempfile.mkdtemp(prefix="bench-pool-"))
    try:
        pairs = source_images(args.images)
        write_mixed_shards(work / "in", pairs)
        model = {
            "name": args.model,
            "pretrained": None,
            "precision": "auto",
            "device": args.device,
            "batch_size": args.batch_size,
        }
        cfg = {
            "dataset": "bench",
            "output": str(work / "out"),
            "cache": str(work / "cache"),
            "model": model,
            "pool": {"input": str(work / "in" / "*.tar"), "clip_filter": {"top_fraction": 0.5}},
        }
        bounds = {
            p: bare_forward(ModelConfig(**{**model, "precision": p}), pairs, args.batch_size)
            for p in bound_precisions(args)
        }
        fastest = max(bounds, key=bounds.get)
        from infra.server import api_scope

        write_shards(work / "warm", pairs[:8], 8)
        with api_scope():  # Prefect's API starts in the warm-up run and stays up for the timed one
            flow_run({**cfg, "pool": {**cfg["pool"], "input": str(work / "warm" / "*.tar")}}, 8)
            flow = flow_run(cfg, len(pairs))
        shards = sorted(str(p) for p in (work / "in").glob("*.tar"))
        sizes = (1, 4) if args.quick else (1, 2, 4)
        rss = {f"{k}x": score_rss(cfg, (shards * 4)[:k]) for k in sizes}
        repeats = caption_repeats()
        caps = [c for _, c in pairs] * 2
        per_caption = text_seconds_per_caption(
            ModelConfig(**{**model, "precision": fastest}), caps[:256], args.batch_size
        )
        for stats in repeats.values():
            saved = stats["captions"] - stats["distinct_per_shard"]
            stats["text_tower_s_saved"] = round(saved * per_caption, 2)
            stats["text_tower_s_total"] = round(stats["captions"] * per_caption, 2)
        result = {
            "benchmark": "pool_flow",
            "workload": (
                f"{len(pairs)} images in {len(shards)} shards of mixed sizes, {args.model} "
                f"precision auto, batch {args.batch_size}, {cores()} cores"
            ),
            "flow_images_per_s": round(flow, 2),
            "bound": f"bare forward loop, the faster of {' and '.join(bounds)} ({fastest})",
            "bound_images_per_s": round(bounds[fastest], 2),
            "bare_forward_images_per_s": {k: round(v, 2) for k, v in bounds.items()},
            "ratio": round(flow / bounds[fastest], 3),
            "target_ratio": 0.85,
            "distinct_captions": repeats,
            "peak_rss_bytes_by_shards_scored": rss,
            "peak_rss_growth_4x_over_1x": round(rss["4x"] / rss["1x"], 3),
            "parent_peak_rss_bytes": peak_rss_bytes(),
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
