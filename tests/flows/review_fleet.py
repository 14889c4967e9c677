"""A small fleet for the review loop's tests: four generated videos (the red block of
tests/flows/test_nearmiss.py inside their near-miss spans), labels for two of them, a head
fitted on those, and the partition the video flow published with that head."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.flows.test_nearmiss import SECONDS, labelled_video

PARTITION = "2026-03-04"
SPANS = {"a.mp4": [(1.5, 3.0)], "b.mp4": [(3.5, 5.0)], "c.mp4": [], "d.mp4": [(0.5, 2.0)]}
LABELLED = ("a.mp4", "c.mp4")  # the first review round; b and d are not labelled yet


@dataclass
class Fleet:
    root: Path
    config: Path
    labels: Path
    head: Path
    dataset: Path  # {output}/{dataset}


def labels_text(names: tuple[str, ...]) -> str:
    rows = ["video,start_s,end_s,label"]
    rows += [f"{v},0,{SECONDS},normal" for v in names]
    rows += [f"{v},{s},{e},near_miss" for v in names for s, e in SPANS[v]]
    return "\n".join(rows) + "\n"


def build_fleet(root: Path, tiny_model: dict) -> Fleet:
    """Videos, labels, config; `curate nearmiss fit`, then the flow with the head."""
    from flows.cli import main

    (root / "in").mkdir()
    for k, (name, spans) in enumerate(SPANS.items()):
        labelled_video(root / "in" / name, spans, seed=k)
    (root / "labels.csv").write_text(labels_text(LABELLED))
    cfg = {
        "dataset": "rv",
        "output": str(root / "out"),
        "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 16},
        "video": {
            "input": str(root / "in" / "*.mp4"),
            "sample_fps": 4,
            "chunk_frames": 8,
            "fusion": {"zero_shot_weight": 0.0, "motion_weight": 0.0, "head_weight": 1.0},
            "events": {"min_duration_s": 0.5, "merge_gap_s": 0.5, "nms_window_s": 0.0},
        },
    }
    (root / "c.yaml").write_text(yaml.safe_dump(cfg))
    head = root / "head.safetensors"
    args = ["--labels", str(root / "labels.csv"), "-c", str(root / "c.yaml")]
    assert main(["nearmiss", "fit", *args, "--partition", PARTITION, "--out", str(head)]) == 0
    cfg["video"]["head"] = str(head)
    (root / "c.yaml").write_text(yaml.safe_dump(cfg))
    run = ["run", "video", "-c", str(root / "c.yaml"), "--partition", PARTITION]
    assert main(run) == 0
    return Fleet(root, root / "c.yaml", root / "labels.csv", head, root / "out" / "rv")


POOL_DAY = "2026-05-01"


def build_pool(root: Path, tiny_model: dict) -> Path:
    """A published pool partition with every kind of row FiftyOne should show: kept and
    filtered by the CLIP threshold, exact copies (a duplicate group), a broken image
    (quarantined) and a head's column; returns `{output}/{dataset}`."""
    import torch
    from torch import nn

    from flows.cli import main
    from tests.pool_factory import PoolSample, corrupt_image, make_samples, write_tar

    samples = make_samples(10, seed=3)
    copies = [PoolSample(f"copy{i:05d}", samples[0].image, "jpg", f"the same photo again {i}",
                         {"uid": f"c0py{i:028x}"}) for i in range(2)]  # fmt: skip
    broken = PoolSample("broken0000", corrupt_image(1), "jpg", "a picture that is not one")
    write_tar(root / "in" / "00000.tar", [*samples, *copies, broken])
    torch.manual_seed(0)
    state = root / "aesthetic.pt"
    torch.save(nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 1)).state_dict(), state)
    cfg = {
        "dataset": "rp",
        "output": str(root / "out"),
        "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 8},
        "pool": {
            "input": str(root / "in" / "*.tar"),
            "text_filter": {"enabled": False},
            "dedup": {"exact": True, "perceptual": None},
            "clip_filter": {"top_fraction": 0.5},
        },
    }
    (root / "p.yaml").write_text(yaml.safe_dump(cfg))
    head = root / "aesthetic.safetensors"
    convert = ["heads", "convert", str(state), "--model-config", str(root / "p.yaml")]
    assert main([*convert, "--out", str(head)]) == 0
    cfg["pool"]["heads"] = {"aesthetic": {"path": str(head)}}
    (root / "p.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", "pool", "-c", str(root / "p.yaml"), "--partition", POOL_DAY]) == 0
    return root / "out" / "rp"
