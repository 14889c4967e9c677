"""`curate nearmiss eval --rounds R1.csv R2.csv ...`: how the head improves per review round.

Each file is what one review round produced (e.g. `curate import labelstudio`). Round k's
training labels are files 1..k, where a video named again in a later file takes that file's
rows only (a later review of a video replaces the earlier one; videos are matched by the
input they name, whatever form the name takes). For each round a head is fitted on those
labels (`nearmiss fit`) and evaluated against `--labels` (`nearmiss eval`), in
`DIR/rounds/K/` (labels.csv, head.safetensors, metrics.json, report.md); `DIR/metrics.json`
gets a `rounds` list and `DIR/report.md` a "Review rounds" table (round 0: zero-shot).
Labelled videos that are also test videos are counted (`test_overlap`): a head evaluated on
what it was fitted on is flattered.
"""

from __future__ import annotations

import json
from typing import Any

from flows import nearmiss
from flows.plan import list_inputs
from schemas.config import CurateConfig
from tasks.io import storage
from tasks.publish.report import md_table
from tasks.review.labelstudio import labels_csv
from tasks.video.labels import LabelRow, names, read_labels

SHOWN = ("frame_auc", "frame_ap", "event_f1_at_0.3", "false_alarms_per_hour")


def cumulative(rounds: list[list[LabelRow]], urls: list[str]) -> list[list[LabelRow]]:
    """The training labels of each round (see the module docstring)."""
    current: dict[str, list[LabelRow]] = {}
    out = []
    for rows in rounds:
        named: dict[str, list[LabelRow]] = {}
        for r in rows:
            fits = [u for u in urls if names(r.video, u)]
            key = fits[0] if len(fits) == 1 else r.video
            named.setdefault(key, []).append(LabelRow(key, r.start_s, r.end_s, r.label))
        current.update(named)
        out.append([r for key in sorted(current) for r in current[key]])
    return out


def eval_rounds(
    cfg: CurateConfig, labels: str, partition: str | None, head: str | None,
    rounds: list[str], out: str,
) -> dict[str, Any]:  # fmt: skip
    """`nearmiss eval` into `out`, plus one fitted and evaluated head per round."""
    doc = nearmiss.evaluate(cfg, labels, partition, head, out)
    part = doc["partition"]
    tested = {r["video"] for r in doc["per_video"].get("zero_shot", [])}
    urls = list_inputs(cfg.video.input, part, cfg.storage_options, "video.input")
    table = [{"round": 0, "labels": "zero-shot", **{m: doc["zero_shot"][m] for m in SHOWN}}]
    for k, rows in enumerate(cumulative([read_labels(p) for p in rounds], urls), start=1):
        folder = storage.join(out, "rounds", str(k))
        csv_path, head_path = (
            storage.join(folder, "labels.csv"),
            storage.join(folder, "head.safetensors"),
        )
        storage.write_bytes(csv_path, labels_csv(rows).encode())
        fitted = nearmiss.fit(cfg, csv_path, part, head_path)
        scored = nearmiss.evaluate(cfg, labels, part, head_path, folder)
        videos = {r.video for r in rows}
        table.append({
            "round": k, "labels": rounds[k - 1], "videos": len(videos),
            "frames": fitted["frames"], "positive_frames": fitted["positive_frames"],
            "alpha": fitted["alpha"], "test_overlap": len(videos & tested),
            **{m: scored["with_head"][m] for m in SHOWN},
        })  # fmt: skip
    doc["rounds"] = table
    text = json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n"
    storage.write_bytes(storage.join(out, "metrics.json"), text.encode())
    report = storage.join(out, "report.md")
    section = "\n" + rounds_markdown(table)
    storage.write_bytes(report, storage.read_bytes(report) + section.encode())
    return doc


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def rounds_markdown(table: list[dict[str, Any]]) -> str:
    """The "Review rounds" section: per round its labels and the head's test metrics, and
    the change of frame AUC from the round before."""
    header = ["round", "labels", "videos", "frames", "positive", "alpha", "test overlap",
              *SHOWN, "Δ frame_auc"]  # fmt: skip
    rows, previous = [], None
    for r in table:
        auc = r["frame_auc"]
        delta = None if previous is None or auc is None else auc - previous
        cells = [r["round"], f"`{r['labels']}`", r.get("videos"), r.get("frames"),
                 r.get("positive_frames"), r.get("alpha"), r.get("test_overlap")]  # fmt: skip
        rows.append([_fmt(c) for c in cells] + [_fmt(r[m]) for m in SHOWN] + [_fmt(delta)])
        previous = auc if auc is not None else previous
    intro = (
        "Each round's head is fitted on the labels of rounds 1..k (a video labelled again "
        "takes its latest labels) and scored against the test labels above; round 0 is "
        "zero-shot alone. A test overlap above 0 flatters that round."
    )
    return "## Review rounds\n\n" + intro + "\n\n" + md_table(header, rows) + "\n"
