"""Near-miss heads end to end on generated videos: fit, eval, the head in the flow, OOD frames.

The videos are drawn here: a textured road scene panning past (normal) and, inside the
labelled spans, a large textured red block filling most of the view (the "near miss"): a
head fitted on the embeddings of a random tiny CLIP separates the two.
"""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path

import pytest
import yaml

av = pytest.importorskip("av")  # PyAV before decord (see tests/video_factory.py)
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from flows.cli import main  # noqa: E402
from flows.video import run_video  # noqa: E402
from schemas.config import load_config  # noqa: E402
from tasks.publish.manifest import read_manifest  # noqa: E402
from tasks.video.head import fit_gda, load_head, save_head, select_alpha  # noqa: E402
from tasks.video.metrics import IOU_THRESHOLDS  # noqa: E402
from tests.helpers import published_dir  # noqa: E402

PARTITION = "2026-03-04"
FPS, SECONDS, W, H = 8, 6.0, 96, 64
# video -> positive spans (s); c.mp4 is named by a normal row only
SPANS = {"a.mp4": [(1.5, 3.0)], "b.mp4": [(3.5, 5.0)], "c.mp4": []}
METRICS = {
    "frame_auc",
    "frame_ap",
    "false_alarms_per_hour",
    *(f"event_{m}_at_{t}" for m in ("p", "r", "f1") for t in IOU_THRESHOLDS),
}


def texture(seed: int, h: int = H, w: int = 3 * W) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
    return np.clip(110 + 35 * coarse + 12 * rng.normal(size=(h, w, 3)), 0, 255).astype(np.uint8)


def road(i: int, seed: int) -> np.ndarray:
    """Frame i of a camera panning over a textured scene, a small blue car crossing."""
    f = texture(seed)[:, 2 * i : 2 * i + W].copy()
    x = (5 * i) % (W - 12)
    f[40:52, x : x + 12] = (40, 40, 200)
    return f


def near_miss(i: int, seed: int) -> np.ndarray:
    """The road with a big red textured block in front (a vehicle cutting in)."""
    f = road(i, seed)
    block = texture(seed + 100, 48, 80)[:, :, 0]
    f[8:56, 8:88] = np.stack([np.clip(block + 100, 0, 255), block // 4, block // 4], -1)
    return f


def write_video(path: Path, frames: list[np.ndarray], fps: int = FPS) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"preset": "ultrafast", "qp": "0"}  # lossless: frozen stays frozen
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, "rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def labelled_video(path: Path, spans: list[tuple[float, float]], seed: int) -> Path:
    frames = []
    for i in range(round(SECONDS * FPS)):
        t = i / FPS
        inside = any(s <= t < e for s, e in spans)
        frames.append(near_miss(i, seed) if inside else road(i, seed))
    return write_video(path, frames)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, tiny_model) -> Path:
    """Three labelled videos, their labels CSV and a config."""
    root = tmp_path_factory.mktemp("fleet")
    (root / "in").mkdir()
    for k, (name, spans) in enumerate(SPANS.items()):
        labelled_video(root / "in" / name, spans, seed=k)
    rows = ["video,start_s,end_s,label"]
    rows += [f"{v},0,{SECONDS},normal" for v in SPANS]
    rows += [f"{v},{s},{e},near_miss" for v, spans in SPANS.items() for s, e in spans]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    cfg = {
        "dataset": "nm",
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
    return root


def cached_training_set(cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Embeddings, hand-made truth and video ids of every sampled frame, from the cache."""
    from flows.common import cache_root
    from tasks.video.score import cached_video_scores, load_video_scores

    xs, ys, vids, found = [], [], [], []
    for name, spans in SPANS.items():
        url = str(Path(cfg.video.input).parent / name)
        vs = cached_video_scores(url, cfg.video, cfg.model, cache_root(cfg), {})
        assert vs is not None, f"{name} is not in the score cache"
        table, emb = load_video_scores(vs, {})
        t = table["t_s"].to_numpy()
        dt = 1.0 / min(cfg.video.sample_fps, vs.probe["fps"])
        truth = np.zeros(len(t), bool)
        for s, e in spans:  # positive iff [t, t + dt) overlaps [s, e)
            truth |= (t < e) & (t + dt > s)
        xs.append(emb.astype(np.float32))
        ys.append(truth)
        vids += [name] * len(t)
        found.append(vs)
    return np.concatenate(xs), np.concatenate(ys), np.asarray(vids), found


def prompt_logits(cfg, x: np.ndarray) -> np.ndarray:
    """scale * (cos(near) - cos(normal)), written out."""
    from flows.common import cache_root
    from tasks.video.score import prompt_embeddings

    near, normal, scale = prompt_embeddings(
        cfg.model, cfg.video.prompts.model_dump(), cache_root(cfg), {}
    )
    e = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    return scale * (e @ (near / np.linalg.norm(near)) - e @ (normal / np.linalg.norm(normal)))


def pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y], s[~y]
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


def test_fit_then_eval_end_to_end(fleet, prefect_harness, capsys):
    head_path = fleet / "head.safetensors"
    args = ["--labels", str(fleet / "labels.csv"), "-c", str(fleet / "c.yaml")]
    args += ["--partition", PARTITION]
    assert main(["nearmiss", "fit", *args, "--out", str(head_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["videos_scored"] == 3 and summary["videos_cached"] == 0
    assert summary["dropped_ood_frames"] == 0

    # the head is GDA on exactly the labelled frames the cache holds, alpha by LOVO
    cfg = load_config(fleet / "c.yaml")
    x, y, vids, scored = cached_training_set(cfg)
    assert summary["positive_frames"] == int(y.sum()) and summary["frames"] == len(y)
    head, alpha, meta = load_head(head_path.read_bytes(), scored[0].model)
    ref = fit_gda(x, y)
    assert np.allclose(head.w, ref.w, atol=1e-9) and abs(head.b - ref.b) < 1e-9
    assert alpha == select_alpha(x, y, vids, prompt_logits(cfg, x)).alpha
    assert meta["model_checkpoint_sha256"] == scored[0].model["checkpoint_sha256"]

    out = fleet / "eval"
    assert main(["nearmiss", "eval", *args, "--head", str(head_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "frame_auc" in printed and "with_head" in printed
    doc = json.loads((out / "metrics.json").read_text())
    assert set(doc["zero_shot"]) == METRICS and set(doc["with_head"]) == METRICS
    assert doc["videos_scored"] == 0 and doc["videos_cached"] == 3  # fit's embeddings reused
    assert (out / "report.md").exists() and (out / "plots" / "frame_curves.png").exists()

    # the flow with this head publishes frames whose score gives eval's AUC, by brute force
    cfg = load_config(fleet / "c.yaml", [f"video.head={head_path}"])
    result = run_video(cfg, PARTITION)
    part = published_dir(result["uri"])
    stats = json.loads((part / "stats.json").read_text())
    assert stats["videos_scored"] == 0 and stats["videos_cached"] == 3
    frames = pl.read_parquet(part / "frames.parquet").sort("video", "t_s")
    names = frames["video"].str.split("/").list.last().to_numpy()
    truth = np.concatenate([y[vids == n] for n in SPANS])
    assert list(names) == list(vids)
    auc = pairwise_auc(truth, frames["score"].to_numpy())
    assert doc["with_head"]["frame_auc"] == pytest.approx(auc, abs=1e-9)
    assert auc > 0.95  # the head learned the red block
    manifest = read_manifest(result["uri"])
    assert manifest["head"]["sha256"] == hashlib.sha256(head_path.read_bytes()).hexdigest()


def test_a_new_head_republishes_from_cached_embeddings(fleet, prefect_harness, monkeypatch):
    """Changing the head file (same path) changes the run key: re-published, no decode."""
    from flows.nearmiss import score_labelled

    cfg0 = load_config(fleet / "c.yaml")
    score_labelled(cfg0, str(fleet / "labels.csv"), PARTITION)  # cached by the fit test
    x, y, _, scored = cached_training_set(cfg0)
    path = fleet / "swap.safetensors"
    head = fit_gda(x, y)
    path.write_bytes(save_head(head, 1.0, scored[0].model, "p"))
    cache = fleet / "out" / "nm" / "_cache"  # the fit's embeddings, another output
    overrides = [f"video.head={path}", f"output={fleet / 'o2'}", f"cache={cache}"]
    cfg = load_config(fleet / "c.yaml", overrides)
    first = run_video(cfg, PARTITION)
    assert first["status"] == "published"
    key1 = read_manifest(first["uri"])["run_key"]

    path.write_bytes(save_head(head, 0.5, scored[0].model, "p"))  # another alpha, same path

    def no_decode(*a, **k):
        raise AssertionError("a video was decoded again")

    monkeypatch.setattr("tasks.video.score.load_model", no_decode)
    second = run_video(cfg, PARTITION)
    assert second["status"] == "published"
    manifest = read_manifest(second["uri"])
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["run_key"] != key1 and manifest["head"]["sha256"] == sha
    assert manifest["config_files"]["video.head"] == sha
    part = published_dir(second["uri"])
    stats = json.loads((part / "stats.json").read_text())
    assert stats["videos_scored"] == 0 and stats["videos_cached"] == 3
    frames = pl.read_parquet(part / "frames.parquet").sort("video", "t_s")
    e = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    z = 0.5 * (e @ head.w + head.b) + 0.5 * prompt_logits(cfg0, x)
    assert np.allclose(frames["p_head"].to_numpy(), 1 / (1 + np.exp(-z)), atol=1e-6)
    assert run_video(cfg, PARTITION)["status"] == "skipped"


def test_a_head_for_another_model_is_refused_before_scoring(fleet, tiny_model, capsys):
    from tasks.model.files import planned_identity

    cfg = load_config(fleet / "c.yaml")
    other = {**planned_identity(cfg.model), "checkpoint_sha256": "0" * 64}
    head = fit_gda(np.eye(64)[[0, 1, 2, 3]], np.array([0, 0, 1, 1]))
    (fleet / "other.safetensors").write_bytes(save_head(head, 0.5, other, "p"))
    out = fleet / "o3"
    overrides = ["--set", f"video.head={fleet / 'other.safetensors'}", "--set", f"output={out}"]
    day = ["--partition", "2026-03-05"]  # partitions are dates (this one is not published)
    code = main(["run", "video", "-c", str(fleet / "c.yaml"), *overrides, *day])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("curate: config: invalid value for 'video.head'")
    assert "head was made for model" in err[-1] and "Traceback" not in "\n".join(err)
    assert not list(out.rglob("done.json"))  # failed before the score stage ran


def ood_video(path: Path) -> tuple[Path, dict[str, list[float]]]:
    """2 s of road, 1.5 s black, 1.5 s frozen (one picture repeated), 1 s of road; returns
    the times of the frames each kind covers (4 samples/s of an 8 fps video)."""
    frames, kinds = [], []
    for i in range(round(SECONDS * FPS)):
        t = i / FPS
        if 2.0 <= t < 3.5:
            frames.append(np.zeros((H, W, 3), np.uint8))
            kinds.append("black")
        elif 3.5 <= t < 5.0:
            frames.append(road(28, seed=9))
            kinds.append("frozen" if t > 3.5 else "first_frozen")
        else:
            frames.append(road(i, seed=9))
            kinds.append("road")
    write_video(path, frames)
    times: dict[str, list[float]] = {}
    for i in range(0, len(frames), 2):  # the sampled frames
        times.setdefault(kinds[i], []).append(i / FPS)
    return path, times


def test_ood_frames_are_flagged_counted_and_left_out_of_events(
    tmp_path, tiny_model, prefect_harness
):
    (tmp_path / "in").mkdir()
    _, times = ood_video(tmp_path / "in" / "broken.mp4")
    cfg = {
        "dataset": "ood",
        "output": str(tmp_path / "out"),
        "model": {**tiny_model, "precision": "fp32", "device": "cpu"},
        "video": {
            "input": str(tmp_path / "in" / "*.mp4"),
            "sample_fps": 4,
            # every usable frame is "near-miss": only the OOD flag can keep frames out
            "events": {
                "start": 0.0,
                "stop": 0.0,
                "merge_gap_s": 3.0,
                "min_duration_s": 0.25,
                "nms_window_s": 0.0,
            },
        },
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    result = run_video(load_config(tmp_path / "c.yaml"), PARTITION)
    part = published_dir(result["uri"])
    frames = pl.read_parquet(part / "frames.parquet").sort("t_s")
    flagged = frames.filter(pl.col("ood_flag"))
    # the picture held for 1.5 s is frozen from its first sample on (a hold of >= 1 s)
    frozen = times["first_frozen"] + times["frozen"]
    assert flagged["t_s"].to_list() == pytest.approx(sorted(times["black"] + frozen))
    cues = dict(zip(flagged["t_s"].to_list(), flagged["ood_cue"].to_list(), strict=True))
    assert {cues[t] for t in times["black"]} == {"black"}
    assert {cues[t] for t in frozen} == {"frozen"}
    assert frames.filter(~pl.col("ood_flag"))["smoothed"].is_nan().sum() == 0
    assert flagged["smoothed"].is_nan().all()

    events = pl.read_parquet(part / "events.parquet").sort("start_s")
    # each stretch of usable frames is its own event (a sample lasts 0.25 s), never merged
    # across the flagged ones: road, road again
    spans = list(events.select("start_s", "end_s").iter_rows())
    assert spans == [(0.0, 2.0), (5.0, 6.0)]
    for t in flagged["t_s"]:
        assert not ((events["start_s"] < t + 0.25) & (events["end_s"] > t)).any()
    stats = json.loads((part / "stats.json").read_text())
    assert stats["ood_frames"] == flagged.height
    assert stats["ood_cues"] == {"black": len(times["black"]), "frozen": len(frozen)}
    report = (part / "report.md").read_text()
    assert f"shaded grey on the timelines: {flagged.height} (black 6, frozen 6)" in report

    # without the flag, the same cached frames make one event over the whole video
    off = load_config(tmp_path / "c.yaml", ["video.ood.threshold=null"])
    part = published_dir(run_video(off, PARTITION)["uri"])
    events = pl.read_parquet(part / "events.parquet")
    assert events.height == 1 and events["start_s"][0] == 0.0
    assert pl.read_parquet(part / "frames.parquet")["ood_flag"].sum() == 0


def test_heads_convert_a_torch_state_dict(tmp_path, model_cfg, capsys):
    import torch

    from tasks.model.clip import model_identity
    from tasks.model.heads import apply_embedding_head, load_embedding_head

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": model_cfg.model_dump(mode="json")}))
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    torch.save(mlp.state_dict(), tmp_path / "aesthetic.pt")
    out = tmp_path / "aesthetic.safetensors"
    args = ["heads", "convert", str(tmp_path / "aesthetic.pt"), "--model-config", str(cfg)]
    assert main([*args, "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["weights"] == [[8, 64], [1, 8]]
    head = load_embedding_head(out.read_bytes(), model_identity(model_cfg))
    x = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)
    with torch.no_grad():
        ref = mlp(torch.nn.functional.normalize(torch.from_numpy(x), dim=-1))[:, 0].numpy()
    assert np.allclose(apply_embedding_head(head, x), ref, atol=1e-5)

    torch.save(mlp, tmp_path / "module.pt")  # a pickled module, not plain tensors
    args = ["heads", "convert", str(tmp_path / "module.pt"), "-c", str(cfg), "--out", str(out)]
    assert main(args) == 3
    assert "not a plain tensor state dict" in capsys.readouterr().err.strip().splitlines()[-1]
