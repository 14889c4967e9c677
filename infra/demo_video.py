"""Bundled sample videos for `curate demo`: two short dashcam-like clips and their labels.

A textured road scene pans past with a small car crossing; inside each labelled span a big
red block fills most of the view (a vehicle cutting in). Enough for `curate run video`,
`curate nearmiss fit` and `eval` to run end to end on the demo, without any download.
Written with PyAV (no ffmpeg binary needed), losslessly, so no frame looks frozen.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

FPS, SECONDS, WIDTH, HEIGHT = 8, 4.0, 96, 64
# video -> its near-miss spans in seconds
SPANS = {"dashcam_a.mp4": [(1.5, 2.5)], "dashcam_b.mp4": [(0.5, 1.5)]}


def _texture(seed: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
    return np.clip(110 + 35 * coarse + 12 * rng.normal(size=(h, w, 3)), 0, 255).astype(np.uint8)


def frame(i: int, seed: int, near_miss: bool) -> np.ndarray:
    """Frame `i`: the scene panning, a blue car crossing, a red block in front on a near miss."""
    f = _texture(seed, HEIGHT, 3 * WIDTH)[:, 2 * i : 2 * i + WIDTH].copy()
    x = (5 * i) % (WIDTH - 12)
    f[40:52, x : x + 12] = (40, 40, 200)
    if near_miss:
        block = _texture(seed + 100, 48, 80)[:, :, 0]
        f[8:56, 8:88] = np.stack([np.clip(block + 100, 0, 255), block // 4, block // 4], -1)
    return f


def write_video(path: Path, spans: list[tuple[float, float]], seed: int) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "ultrafast", "qp": "0"}
        for i in range(round(SECONDS * FPS)):
            inside = any(s <= i / FPS < e for s, e in spans)
            picture = av.VideoFrame.from_ndarray(frame(i, seed, inside), "rgb24")
            for packet in stream.encode(picture):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_videos(root: Path, partition: str) -> tuple[Path, Path]:
    """The clips under `root/videos/{partition}/` and `root/labels.csv` (README "Near-miss
    heads" describes the format); returns (the videos folder, the labels file)."""
    folder = root / "videos" / partition
    for k, (name, spans) in enumerate(SPANS.items()):
        write_video(folder / name, spans, seed=k)
    rows = ["video,start_s,end_s,label"]
    rows += [f"{v},0,{SECONDS},normal" for v in SPANS]
    rows += [f"{v},{s},{e},near_miss" for v, spans in SPANS.items() for s, e in spans]
    labels = root / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return root / "videos", labels
