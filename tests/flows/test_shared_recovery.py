"""Issue 20, part 2, on the real dashcam recordings of ../shared (skipped when absent).

Each of the three dashcam videos is cut at 30%, 60% and 90% of its size (the moov, written
last by these cameras, is lost). With an intact recording of the same camera in the
partition each cut copy is `recovered` with at least 90% of the frames its prefix holds, and
its frames' embeddings are those of the intact original's frames at the same times (the
same pictures); without one each is quarantined `no_reference`.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import polars as pl
import pytest

from flows.video import run_video
from schemas.config import parse_config
from tasks.verify import verify_partition
from tests.helpers import published_dir, shared_path
from tests.video_factory import cut_at, write_sidecar

pytestmark = pytest.mark.shared
# kb0 and kb1 come from one camera (same parameter sets, same day); kb2 from another
CAMERAS = {"dashcam_kb0": "kb-a", "dashcam_kb1": "kb-a", "dashcam_kb2": "kb-b"}
FRACTIONS = (0.3, 0.6, 0.9)


def config(tmp_path: Path, tiny_model: dict, folder: Path) -> dict:
    return {
        "dataset": "fleet",
        "output": str(tmp_path / "out"),
        "model": {**tiny_model, "precision": "fp32", "batch_size": 32},
        "video": {"input": str(folder / "*.mp4"), "sample_fps": 2, "chunk_frames": 32},
    }


def cached_embeddings(cache: Path) -> dict[str, tuple[pl.DataFrame, np.ndarray]]:
    """{video URL: (frames, embeddings)} of every scored entry in the score cache."""
    out = {}
    for marker in cache.glob("video-scores/*/done.json"):
        meta = json.loads(marker.read_text())
        files = {k: marker.parent / v for k, v in meta["files"].items()}
        if meta["meta"]["probe"]["status"] in ("ok", "recovered"):
            frames = pl.read_parquet(files["frames.parquet"])
            out[meta["meta"]["probe"]["video"]] = (frames, np.load(files["emb.npy"]))
    return out


def make_night(folder: Path, intact: bool) -> dict[str, int]:
    """Cut copies (and the intact recordings when `intact`), with sidecars; returns every
    cut copy's count of frames its prefix holds whole."""
    folder.mkdir()
    videos = shared_path("data", "videos")
    whole = {}
    for stem, camera in CAMERAS.items():
        if intact:
            (folder / f"{stem}.mp4").symlink_to(videos / f"{stem}.mp4")
            write_sidecar(folder / f"{stem}.mp4", {"vehicle_id": camera})
        for f in FRACTIONS:
            cut = folder / f"{stem}_cut{round(f * 100)}.mp4"
            _, whole[str(cut)] = cut_at(videos / f"{stem}.mp4", cut, f)
            write_sidecar(cut, {"vehicle_id": camera})
    return whole


def test_cut_dashcam_recordings_are_recovered(tmp_path, tiny_model, prefect_harness):
    whole = make_night(tmp_path / "night", intact=True)
    result = run_video(parse_config(config(tmp_path, tiny_model, tmp_path / "night")), "2026-12-01")
    assert verify_partition(result["uri"]) == []
    videos = pl.read_parquet(published_dir(result["uri"]) / "videos.parquet")
    assert result["counts"]["recovered"] == 9 and result["counts"]["ok"] == 3
    emb = cached_embeddings(tmp_path / "out" / "fleet" / "_cache")
    for row in videos.filter(pl.col("status") == "recovered").iter_rows(named=True):
        stem = Path(row["video"]).name.split("_cut")[0]
        assert Path(row["reference"]).stem in {s for s, c in CAMERAS.items() if c == CAMERAS[stem]}
        assert whole[row["video"]] * 0.9 <= row["n_frames"] <= whole[row["video"]]
        original = str(tmp_path / "night" / f"{stem}.mp4")
        got, want = emb[row["video"]], emb[original]
        # the recovered frames at the original's times: the same pictures, the same embeddings
        joined = got[0].join(want[0], on="t_s", suffix="_orig")
        assert joined.height == got[0].height > 0
        a = got[1][joined["emb_row"].to_numpy()].astype(np.float64)
        b = want[1][joined["emb_row_orig"].to_numpy()].astype(np.float64)
        cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() > 0.999, (row["video"], cos.min())


def test_cut_dashcam_recordings_without_a_sibling(tmp_path, tiny_model, prefect_harness):
    make_night(tmp_path / "alone", intact=False)
    result = run_video(parse_config(config(tmp_path, tiny_model, tmp_path / "alone")), "2026-12-02")
    videos = pl.read_parquet(published_dir(result["uri"]) / "videos.parquet")
    assert videos["status"].cast(pl.String).unique().to_list() == ["quarantined"]
    assert videos["error"].unique().to_list() == ["no_reference"]
    assert videos.height == 9


def test_the_three_cameras_are_what_the_test_assumes() -> None:
    """kb0 and kb1 share their parameter sets (one camera), kb2's differ."""
    videos = shared_path("data", "videos")
    extradata = {}
    for stem in CAMERAS:
        with av.open(str(videos / f"{stem}.mp4")) as c:
            extradata[stem] = bytes(c.streams.video[0].codec_context.extradata)
    assert extradata["dashcam_kb0"] == extradata["dashcam_kb1"] != extradata["dashcam_kb2"]
