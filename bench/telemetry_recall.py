"""Event recall with and without the telemetry cue, at the same false alarms per hour.

A generated night: 16 one-minute videos of 4 vehicles (sidecar `vehicle_id`), each with
telemetry (NMEA at 1 Hz for two vehicles, CSV at 10 Hz for the others): cruising with
acceleration noise, one or two ordinary stops (1.5-2.5 m/s^2 for 3-4 s) per video, and
in half of the videos one or two planted hard brakes (5-7 m/s^2 for 1-2 s), labelled
`near_miss` from a second before to a second after. The videos are scored once with the
tiny random-weight model of the tests (`curate nearmiss` machinery: score cache, detect),
then detection is swept over `events.start` (stop = start - 0.2) for the `zero_shot`
variant (zero-shot + motion) and `with_telemetry` (the cue at the config's weight). Each
sweep point gives (false alarms per hour, event recall at IoU 0.3); the table is the best
recall each variant reaches within a false-alarm budget.

    .venv/bin/python bench/telemetry_recall.py [--out DIR] [--seed 0]

Random weights make the zero-shot cue noise: the figure shows what the telemetry cue adds
to a detector that sees nothing, not what it adds to a pretrained CLIP.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.telemetry_factory import START, drive, every, write_csv, write_nmea  # noqa: E402
from tests.video_factory import make_video  # noqa: E402

N_VIDEOS, SECONDS, VEHICLES = 16, 60.0, 4
STARTS = [round(x, 2) for x in np.arange(0.30, 0.96, 0.01)]
BUDGETS = (0.0, 15.0, 30.0, 60.0, 120.0)


def make_night(root: Path, seed: int) -> tuple[Path, Path]:
    """Videos, sidecars, telemetry and the labels CSV; returns (videos folder, labels)."""
    rng = np.random.default_rng(seed)
    d = root / "in"
    d.mkdir(parents=True)
    labels = ["video,start_s,end_s,label"]
    for k in range(N_VIDEOS):
        name = f"v{k % VEHICLES}_{k:02d}.mp4"
        make_video(d / name, SECONDS, 10, (64, 48))
        stops = [(float(rng.uniform(5, 55)), float(rng.uniform(3, 4)), float(rng.uniform(1.5, 2.5)))
                 for _ in range(int(rng.integers(1, 3)))]  # fmt: skip
        hard = []
        if k % 2:
            for _ in range(int(rng.integers(1, 3))):
                t0 = float(rng.uniform(5, 52))
                hard.append((t0, float(rng.uniform(1, 2)), float(rng.uniform(5, 7))))
        trip = drive(SECONDS + 2, brakes=tuple(stops + hard), seed=seed * 100 + k)
        vehicle = f"van-{k % VEHICLES}"
        (d / name.replace(".mp4", ".json")).write_text(
            json.dumps({"vehicle_id": vehicle, "start_time": START.isoformat()})
        )
        if k % VEHICLES < 2:
            write_nmea(d / name.replace(".mp4", ".nmea"), every(trip, 1.0))
        else:
            write_csv(d / name.replace(".mp4", ".csv"), trip)
        for t0, length, _ in hard:
            labels.append(f"{name},{max(0.0, t0 - 1):.2f},{t0 + length + 1:.2f},near_miss")
    (root / "labels.csv").write_text("\n".join(labels) + "\n")
    return d, root / "labels.csv"


def sweep(cfg, data) -> dict[str, list[tuple[float, float, float]]]:
    """{variant: [(start, false alarms per hour, recall@0.3), ...]}."""
    from flows.nearmiss import variant_tables
    from tasks.video.evaluation import video_evals
    from tasks.video.metrics import evaluate

    out: dict[str, list[tuple[float, float, float]]] = {"zero_shot": [], "with_telemetry": []}
    for start in STARTS:
        events = cfg.video.events.model_copy(update={"start": start, "stop": start - 0.2})
        video = cfg.video.model_copy(update={"events": events})
        tables = variant_tables(cfg.model_copy(update={"video": video}), data, None)
        for variant in out:
            evals = video_evals(tables[variant], data.labels, cfg.video.sample_fps)
            summary, _ = evaluate([v for _, v in evals])
            out[variant].append(
                (start, summary["false_alarms_per_hour"], summary["event_r_at_0.3"])
            )
    return out


def _positive_spans(cfg, data) -> int:
    """Positive spans as the evaluation counts them (overlapping labels merged)."""
    from flows.nearmiss import variant_tables
    from tasks.video.evaluation import video_evals

    tables = variant_tables(cfg, data, None)
    return sum(len(v.spans) for _, v in video_evals(tables["zero_shot"], data.labels, 2.0))


def best_recall(points: list[tuple[float, float, float]], budget: float) -> float | None:
    ok = [r for _, fa, r in points if fa is not None and r is not None and fa <= budget]
    return max(ok) if ok else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="keep the generated night here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--telemetry-weight", type=float, default=None, help="default: config's")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="telemetry-recall-"))
    from infra.demo_data import make_tiny_model

    arch, ckpt = make_tiny_model(root / "model")
    videos, labels = make_night(root, args.seed)
    from flows.nearmiss import score_labelled
    from schemas.config import parse_config

    cfg = parse_config(
        {
            "dataset": "telemetry-recall",
            "output": str(root / "out"),
            "model": {"name": str(arch), "pretrained": str(ckpt), "precision": "fp32"},
            "video": {"input": str(videos / "*.mp4"), "sample_fps": 2},
        }
    )
    if args.telemetry_weight is not None:
        fusion = cfg.video.fusion.model_copy(update={"telemetry_weight": args.telemetry_weight})
        cfg = cfg.model_copy(update={"video": cfg.video.model_copy(update={"fusion": fusion})})
    data = score_labelled(cfg, str(labels), "2026-05-04")
    curves = sweep(cfg, data)
    spans = _positive_spans(cfg, data)
    hours = N_VIDEOS * SECONDS / 3600
    table = {
        f"fa_per_hour<={b:g}": {v: best_recall(p, b) for v, p in curves.items()} for b in BUDGETS
    }
    weight = cfg.video.fusion.telemetry_weight
    result = {"videos": N_VIDEOS, "hours": hours, "spans": spans, "seed": args.seed,
              "telemetry_weight": weight,
              "recall_at_0.3_within_budget": table, "curves": curves}  # fmt: skip
    print(json.dumps(result["recall_at_0.3_within_budget"], indent=2))
    (root / "telemetry_recall.json").write_text(json.dumps(result, indent=2))
    print(f"{spans} positive spans (planted hard brakes) in {hours:.3f} h of video, "
          f"telemetry weight {weight:g}; curves in {root}")  # fmt: skip


if __name__ == "__main__":
    main()
