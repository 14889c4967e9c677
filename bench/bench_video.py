"""Video-flow throughput (seconds of video per second) against decode-only and model-only.

The workload is a night of a driving recorder: a dozen generated videos of mixed lengths
(default 30 minutes in all, 640x360, 30 fps, H.264 ultrafast, a 2 s GOP; low-complexity
frames, so decoding is cheaper than on real footage), cached in the temp dir by their
parameters. Measured in this run, each in a fresh process:

- flow: `run_video` end to end over the night (probe, decode, preprocess, embed, detect,
  publish clips, report), with the default runner;
- decode-only: `iter_frame_chunks` over the same videos at `sample_fps` with resize on
  decode, no model;
- model-only: `encode_images` on ready tensors, as many frames as the flow scored, in the
  flow's chunk size.

The bound is min(decode-only, model-only); model-only runs right after each flow run, so
both see the same load from neighbours on a shared machine. One long video (the night's
length) and a quarter of it are also run the same way: time and peak RSS must grow
linearly (memory stays flat: decoding is chunked), and their ratios show the per-run costs
a single short video cannot hide.

Real footage (`real_footage`, skipped without ../shared/data/videos): the eight shared
videos (136 s: dashcam, CCTV and highway footage, 640x352 to 1280x720, 10-30 fps) at
`sample_fps` 8, run as a user runs them: `curate run video` in its own process against a
warm Prefect server (PREFECT_API_URL), timed from the command's start to its exit
(interpreter start, imports and model load included); decode-only and model-only on the
same videos and frame count right before and after it.

    .venv/bin/python bench/bench_video.py [--quick] [--minutes 30] [--videos 12] [--real-only]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from fractions import Fraction
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

PARTITION = "2026-01-01"
SHARED_VIDEOS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "videos"
REAL_SAMPLE_FPS = 8.0


def video_path(minutes: float, width: int, height: int, fps: int, variant: int = 0) -> Path:
    """A generated test video, made once per parameter set and kept in the temp dir.

    Videos of another `variant` differ in their pictures (no two files of a night are the
    same bytes: the flow would process such copies once)."""
    folder = Path(tempfile.gettempdir()) / "clip-curate-bench"
    tag = f"-v{variant}" if variant else ""
    path = folder / f"drive-{minutes:g}min-{width}x{height}-{fps}fps{tag}.mp4"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(".part.mp4")
        write_video(part, round(minutes * 60 * fps), width, height, fps, variant)
        part.replace(path)
    return path


# relative lengths of the night's videos: recorders cut files of a few minutes, some short
NIGHT_WEIGHTS = (1, 1, 2, 2, 3, 3, 4, 4, 5, 6, 7, 8)


def night_minutes(minutes: float, videos: int) -> list[float]:
    """Lengths of `videos` mixed-size videos, `minutes` in all (to the second)."""
    weights = [NIGHT_WEIGHTS[i % len(NIGHT_WEIGHTS)] for i in range(videos)]
    return [round(minutes * 60 * w / sum(weights)) / 60 for w in weights]


def night_paths(args: argparse.Namespace) -> list[Path]:
    return [
        video_path(m, args.width, args.height, args.fps, variant=i + 1)
        for i, m in enumerate(night_minutes(args.minutes, args.videos))
    ]


def write_video(
    path: Path, n_frames: int, width: int, height: int, fps: int, variant: int = 0
) -> None:
    """H.264 frames written straight as YUV planes: a gradient and a moving block (its path
    shifted by `variant`)."""
    import av
    import numpy as np

    base = np.empty((height * 3 // 2, width), np.uint8)
    base[:height] = np.linspace(16, 200, width, dtype=np.uint8)[None, :]
    base[height:] = 128
    side = max(8, height // 9)
    y0 = (height // 2 - side // 2 + variant * 7) % (height - side)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.gop_size = 2 * fps
        stream.options = {"preset": "ultrafast"}
        for i in range(n_frames):
            buf = base.copy()
            x = (i * 4) % (width - side)
            buf[y0 : y0 + side, x : x + side] = 235
            for packet in stream.encode(av.VideoFrame.from_ndarray(buf, format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def model_dict(args: argparse.Namespace) -> dict:
    return {
        "name": args.model,
        "pretrained": None,
        "precision": args.precision,
        "device": args.device,
        "batch_size": args.chunk_frames,
    }


def flow_config(args: argparse.Namespace, video: str | list[str], work: Path) -> dict:
    return {
        "dataset": "bench",
        "output": str(work / "out"),
        "cache": str(work / "cache"),
        "model": model_dict(args),
        "video": {"input": video, "sample_fps": args.sample_fps, "chunk_frames": args.chunk_frames},
        "runner": {"kind": "threads"},
    }


def child_flow(args: argparse.Namespace) -> dict:
    """Warm up (Prefect client, model) on a short video, then time the flow on `args.video`."""
    from flows.video import run_video
    from infra.server import api_scope
    from schemas.config import parse_config

    warm = video_path(0.1, args.width, args.height, args.fps)
    # Prefect's API starts in the warm-up run and stays up for the timed one
    with tempfile.TemporaryDirectory() as tmp, api_scope():
        run_video(parse_config(flow_config(args, str(warm), Path(tmp) / "w")), PARTITION)
        with RssSampler() as rss:
            t0 = time.perf_counter()
            cfg = flow_config(args, args.video.split(os.pathsep), Path(tmp))
            result = run_video(parse_config(cfg), PARTITION)
            seconds = time.perf_counter() - t0
        from tasks.publish.manifest import read_published

        stats = json.loads(Path(read_published(result["uri"]).url("stats.json")).read_text())
    return {
        "seconds": seconds,
        "frames": stats["frames"],
        "counts": stats["counts"],
        "events": stats["events"],
        "video_s": stats["video_hours"] * 3600,
        "timings": stats["timings"],
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_max_by_fifth_bytes": rss.max_by_fifth(),
        "load_1m": load_1m(),
    }


def child_decode(args: argparse.Namespace) -> dict:
    from tasks.video.decoding.probe import iter_frame_chunks

    size = 224  # ViT-B-32's input: decord resizes the short side while decoding
    t0 = time.perf_counter()
    frames = 0
    for video in args.video.split(os.pathsep):
        for idx, _, _ in iter_frame_chunks(video, None, args.sample_fps, size, args.chunk_frames):
            frames += len(idx)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "frames": frames,
        "peak_rss_bytes": peak_rss_bytes(),
        "load_1m": load_1m(),
    }


def child_model(args: argparse.Namespace) -> dict:
    import torch

    from schemas.config import ModelConfig
    from tasks.model.clip import load_model

    model = load_model(ModelConfig(**model_dict(args)))
    size = model.image_size
    batch = torch.randn(args.chunk_frames, 3, size, size)
    model.encode_images(batch[:2])  # warm-up
    done, t0 = 0, time.perf_counter()
    while done < args.frames:
        n = min(args.chunk_frames, args.frames - done)
        model.encode_images(batch[:n])
        done += n
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "frames": done,
        "peak_rss_bytes": peak_rss_bytes(),
        "load_1m": load_1m(),
    }


def child(mode: str, args: argparse.Namespace, **extra: object) -> dict:
    flags = [f"--child={mode}", f"--model={args.model}", f"--precision={args.precision}"]
    flags += [f"--sample-fps={args.sample_fps}", f"--chunk-frames={args.chunk_frames}"]
    flags += [f"--device={args.device}"]
    flags += [f"--width={args.width}", f"--height={args.height}", f"--fps={args.fps}"]
    flags += [f"--{k.replace('_', '-')}={v}" for k, v in extra.items()]
    return run_child(Path(__file__), flags)


def paired(args: argparse.Namespace, videos: list[Path], minutes: float, decode_vs: float) -> dict:
    """The flow on `videos`, then model-only on as many frames right after it: a neighbour's
    load on this shared machine then weighs on both sides of the ratio alike."""
    flow = child("flow", args, video=os.pathsep.join(map(str, videos)))
    if flow["counts"]["ok"] != len(videos):  # a copy or a bad file: not the workload asked for
        raise RuntimeError(f"the flow processed {flow['counts']} of {len(videos)} videos")
    model = child("model", args, frames=args.bound_frames or flow["frames"])
    flow_vs = minutes * 60 / flow["seconds"]
    model_vs = model["frames"] / model["seconds"] / args.sample_fps
    bound = min(decode_vs, model_vs)
    return {"flow": flow, "model": model, "flow_vs": flow_vs, "model_vs": model_vs,
            "bound": bound, "ratio": flow_vs / bound}  # fmt: skip


def decode_only(args: argparse.Namespace, videos: list[Path], minutes: float) -> float:
    """Decode-only throughput (video seconds per second) over `videos`."""
    decode = child("decode", args, video=os.pathsep.join(map(str, videos)))
    return minutes * 60 / decode["seconds"]


def cli_flow(args: argparse.Namespace, videos: list[Path], work: Path) -> dict:
    """`curate run video` in a fresh process on `videos`: wall seconds and the stats."""
    import subprocess

    import yaml

    cfg = flow_config(args, [str(v) for v in videos], work)
    cfg["video"]["sample_fps"] = REAL_SAMPLE_FPS
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    curate = Path(sys.executable).parent / "curate"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(curate), "run", "video", "-c", str(path), "--partition", PARTITION],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"curate run video failed: {proc.stderr.strip()[-800:]}")
    from tasks.publish.manifest import read_published

    final = work / "out" / "bench" / "video" / PARTITION
    stats = json.loads(Path(read_published(str(final)).url("stats.json")).read_text())
    return {"seconds": seconds, "stats": stats, "load_1m": load_1m()}


def measure_real(args: argparse.Namespace) -> dict:
    """The shared real videos through the CLI against min(decode-only, model-only)."""
    videos = sorted(SHARED_VIDEOS.glob("*.mp4"))
    if not videos:
        return {"skipped": f"no videos in {SHARED_VIDEOS}"}
    real = argparse.Namespace(**{**vars(args), "sample_fps": REAL_SAMPLE_FPS})
    decode = child("decode", real, video=os.pathsep.join(map(str, videos)))
    with prefect_api(), tempfile.TemporaryDirectory() as tmp:
        load_before = load_1m()
        flow = cli_flow(args, videos, Path(tmp))
        model = child("model", real, frames=flow["stats"]["frames"])
    video_s = flow["stats"]["video_hours"] * 3600
    decode_vs = video_s / decode["seconds"]
    model_vs = model["frames"] / model["seconds"] / REAL_SAMPLE_FPS
    bound = min(decode_vs, model_vs)
    flow_vs = video_s / flow["seconds"]
    in_flow = flow["stats"]["timings"]["total_s"]  # the flow's stages, without start-up
    return {
        "workload": f"{len(videos)} shared real videos ({video_s:.1f} s), sample_fps "
        f"{REAL_SAMPLE_FPS:g}, {args.model} {args.precision} random-init, the CLI against a "
        f"warm Prefect server, cpu cores {cores()}",
        "throughput": round(flow_vs, 3),
        "unit": "video seconds per second",
        "bound": "min(decode-only, model-only)",
        "bound_throughput": round(bound, 3),
        "ratio": round(flow_vs / bound, 3),
        "target_ratio": 0.85,
        "ratio_within_the_flow": round(video_s / in_flow / bound, 3),
        "cli_seconds": round(flow["seconds"], 3),
        "flow_timings_s": flow["stats"]["timings"],
        "decode_only_video_s_per_s": round(decode_vs, 3),
        "model_only_video_s_per_s": round(model_vs, 3),
        "frames": flow["stats"]["frames"],
        "counts": flow["stats"]["counts"],
        "load_1m": {"before": load_before, "after_cli": flow["load_1m"],
                    "after_model": model["load_1m"], "after_decode": decode["load_1m"]},
    }  # fmt: skip


def single_videos(args: argparse.Namespace) -> dict:
    """One video of the night's length (4x) against one of a quarter of it (1x): the
    single-video ratios and how time and memory grow with a video's length."""
    full = video_path(args.minutes, args.width, args.height, args.fps)
    quarter = video_path(args.minutes / 4, args.width, args.height, args.fps)
    single_decode = decode_only(args, [full], args.minutes)
    four = paired(args, [full], args.minutes, single_decode)
    ones = [paired(args, [quarter], args.minutes / 4, single_decode) for _ in range(args.pairs)]
    flow4 = four["flow"]
    t1x = min(p["flow"]["seconds"] for p in ones)
    rss1x = max(p["flow"]["peak_rss_bytes"] for p in ones)
    return {
        "single_video_ratios": {
            f"{args.minutes:g} min": round(four["ratio"], 3),
            f"{args.minutes / 4:g} min": [round(p["ratio"], 3) for p in ones],
        },
        "scaling": scaling(t1x, flow4["seconds"], rss1x, flow4["peak_rss_bytes"]),
        "scaling_note": f"one {args.minutes / 4:g} min video (1x) against one "
        f"{args.minutes:g} min video (4x)",
        "single_video": {
            "decode_only_video_s_per_s": round(single_decode, 3),
            "flow_timings_s": flow4["timings"],
            "rss_max_by_fifth_bytes": flow4["rss_max_by_fifth_bytes"],
        },
        "load_1m_after_single": [flow4["load_1m"], four["model"]["load_1m"]],
        "load_1m_after_quarter": [[p["flow"]["load_1m"], p["model"]["load_1m"]] for p in ones],
    }


def measure(args: argparse.Namespace) -> dict:
    night = night_paths(args)
    minutes = sum(night_minutes(args.minutes, args.videos))
    video_path(0.1, args.width, args.height, args.fps)  # the children's warm-up video
    night_decode = decode_only(args, night, minutes)
    with prefect_api():
        main = paired(args, night, minutes, night_decode)
        # --quick: the night only (single videos and scaling need the full run's minutes)
        single = {"scaling": None} if args.quick else single_videos(args)
    flow, model = main["flow"], main["model"]
    sizes = ", ".join(f"{m * 60:g}" for m in night_minutes(args.minutes, args.videos))
    return {
        "benchmark": "video_flow",
        "workload": f"{len(night)} videos ({sizes} s; {minutes:g} min in all) "
        f"{args.width}x{args.height} {args.fps} fps (generated, H.264 ultrafast), sample_fps "
        f"{args.sample_fps:g}, {args.model} {args.precision} random-init, chunk "
        f"{args.chunk_frames}, cpu cores {cores()}",
        "throughput": round(main["flow_vs"], 3),
        "unit": "video seconds per second",
        "bound": "min(decode-only, model-only)",
        "bound_throughput": round(main["bound"], 3),
        "ratio": round(main["ratio"], 3),
        "ratio_note": "the night's videos in one run, against model-only on as many frames "
        "measured right after it",
        "target_ratio": 0.85,
        "peak_rss_bytes": flow["peak_rss_bytes"],
        "flow_frames_per_s": round(flow["frames"] / flow["seconds"], 2),
        "decode_only_video_s_per_s": round(night_decode, 3),
        "model_only_video_s_per_s": round(main["model_vs"], 3),
        "model_only_frames_per_s": round(model["frames"] / model["seconds"], 2),
        "model_only_frames": model["frames"],
        "frames": flow["frames"],
        "events": flow["events"],
        "flow_timings_s": flow["timings"],
        "model_only_peak_rss_bytes": model["peak_rss_bytes"],
        "load_1m_after_night": [flow["load_1m"], model["load_1m"]],
        **single,
    }


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="2 minutes of video; no single-video or real runs"
    )
    ap.add_argument("--minutes", type=float, default=30.0, help="the night's length")
    ap.add_argument("--videos", type=int, default=12, help="videos in the night")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--sample-fps", type=float, default=2.0)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--chunk-frames", type=int, default=64)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--bound-frames", type=int, default=0, help="model-only frames (0: as flow)")
    ap.add_argument("--pairs", type=int, default=1, help="quarter-length flow/model pairs")
    ap.add_argument("--real-only", action="store_true", help="only the shared real videos")
    ap.add_argument("--child", choices=["flow", "decode", "model"], help=argparse.SUPPRESS)
    ap.add_argument("--video", help=argparse.SUPPRESS)
    ap.add_argument("--frames", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.minutes = min(args.minutes, 2.0)
    return args


def main() -> None:
    args = parse_args()
    quiet()
    if args.child:
        run = {"flow": child_flow, "decode": child_decode, "model": child_model}[args.child]
        emit(run(args))
        return
    if args.real_only:
        emit({"benchmark": "video_flow_real_footage", **measure_real(args)})
        return
    result = measure(args)
    result["real_footage"] = (
        {"skipped": "--quick (the full run and --real-only measure the shared footage)"}
        if args.quick
        else measure_real(args)
    )
    emit(result)


if __name__ == "__main__":
    main()
