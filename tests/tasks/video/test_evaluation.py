"""Evaluation hygiene: labels past a video's end, videos keyed by full URL, fit folds."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from schemas.config import VideoConfig
from schemas.tables import EVENTS, FRAMES, VIDEOS, conform
from tasks.video.evaluation import metrics_document, video_evals, write_eval
from tasks.video.fit import VideoFrames, labelled_frames
from tasks.video.labels import parse_labels


def tables(videos: dict[str, float], events: dict[str, list[tuple[float, float]]]):
    """videos/frames/events tables: each video `duration` s at 4 samples/s, score 0.5."""
    rows, frames, evs = [], [], []
    for url, duration in videos.items():
        rows.append({"video": url, "status": "ok", "duration_s": duration, "fps": 4.0})
        n = round(duration * 4)
        frames.append(
            pl.DataFrame(
                {
                    "video": [url] * n,
                    "frame_index": np.arange(n),
                    "t_s": np.arange(n) / 4.0,
                    "score": np.full(n, 0.5),
                    "emb_row": np.arange(n),
                }
            )
        )
        evs += [{"video": url, "start_s": s, "end_s": e} for s, e in events.get(url, [])]
    full = {k: None for k in VIDEOS}
    videos_df = conform(pl.DataFrame([{**full, **r} for r in rows]), VIDEOS)
    frames_df = pl.concat(frames).with_columns(
        [pl.lit(None).alias(c) for c in FRAMES if c not in frames[0].columns]
    )
    events_df = pl.DataFrame(evs) if evs else pl.DataFrame(schema={"video": pl.String})
    events_df = events_df.with_columns(
        [pl.lit(None).alias(c) for c in EVENTS if c not in events_df.columns]
    )
    return videos_df, conform(frames_df, FRAMES), conform(events_df, EVENTS)


def test_labelled_spans_past_the_video_end_are_cut_counted_and_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 27, case 5: a span at 10-12 s on a 3 s video cannot be detected; it counted
    as a missed span (recall 1/2 for a video whose one real span was found), silently."""
    url = "s3://fleet/day/short.mp4"
    labels = parse_labels(
        "video,start_s,end_s,label\n"
        "short.mp4,1.0,2.0,near_miss\nshort.mp4,10.0,12.0,near_miss\nshort.mp4,2.5,4.0,collision\n"
    )
    t = tables({url: 3.0}, {url: [(1.0, 2.0), (2.5, 3.0)]})
    with caplog.at_level(logging.WARNING, logger="tasks.video.evaluation"):
        evals = video_evals(t, labels, 4.0)
    assert "2 span(s) past the end" in caplog.text
    (_, ev), = evals  # fmt: skip
    assert ev.spans == [(1.0, 2.0), (2.5, 3.0)] and ev.spans_clipped == 2
    doc = metrics_document({"zero_shot": evals, "with_head": None}, {})
    assert doc["zero_shot"]["event_r_at_0.5"] == 1.0  # both spans within the video found
    assert doc["per_video"]["zero_shot"][0]["label_spans_clipped"] == 2


def test_two_videos_of_one_name_in_two_folders_stay_two(tmp_path: Path) -> None:
    """Issue 27, case 6: `a/cam.mp4` and `b/cam.mp4` were one video to the evaluation (by
    base name): both took each other's labels, metrics.json counted 3 videos of 4, and the
    report linked both rows to one timeline."""
    urls = ["s3://f/a/cam.mp4", "s3://f/b/cam.mp4", "s3://f/c.mp4", "s3://f/d.mp4"]
    labels = parse_labels(
        "video,start_s,end_s,label\n"
        "a/cam.mp4,1.0,2.0,near_miss\nb/cam.mp4,3.0,4.0,near_miss\n"
        "c.mp4,0,1,normal\nd.mp4,0.5,1.5,collision\n"
    )
    t = tables(dict.fromkeys(urls, 5.0), {urls[0]: [(1.0, 2.0)], urls[1]: [(3.0, 4.0)]})
    evals = video_evals(t, labels, 4.0)
    assert [u for u, _ in evals] == urls
    assert [ev.spans for _, ev in evals] == [[(1.0, 2.0)], [(3.0, 4.0)], [], [(0.5, 1.5)]]
    doc = metrics_document({"zero_shot": evals, "with_head": None}, {"not_evaluated": []})
    assert [r["video"] for r in doc["per_video"]["zero_shot"]] == urls
    assert doc["zero_shot"]["event_r_at_0.5"] == pytest.approx(2 / 3)
    write_eval(str(tmp_path), doc, {"zero_shot": evals, "with_head": None}, {"zero_shot": t[1]})
    report = (tmp_path / "report.md").read_text()
    rows = [line for line in report.splitlines() if "cam.mp4" in line and "[plot]" in line]
    assert len(rows) == 2 and "| a/cam.mp4 |" in rows[0] and "| b/cam.mp4 |" in rows[1]
    assert len({line.split("[plot](")[1] for line in rows}) == 2  # two timelines
    assert (
        json.loads((tmp_path / "metrics.json").read_text())["per_video"]["zero_shot"][1]["video"]
        == urls[1]
    )


def test_fit_folds_keep_two_videos_of_one_name_apart() -> None:
    """Leave-one-video-out folds merged `a/cam.mp4` and `b/cam.mp4` into one video."""
    labels = parse_labels(
        "video,start_s,end_s,label\na/cam.mp4,0,1,near_miss\nb/cam.mp4,1,2,near_miss\n"
    )
    rng = np.random.default_rng(0)
    videos = []
    for url in ("s3://f/a/cam.mp4", "s3://f/b/cam.mp4"):
        n = 8
        table = pl.DataFrame({"t_s": np.arange(n) / 4.0, "frame_index": np.arange(n)})
        table = table.with_columns([pl.lit(100.0).alias(c) for c in ("mean_luma", "std_luma")])
        table = table.with_columns(
            pl.lit(0.0).alias("saturated_fraction"), pl.lit(5.0).alias("frame_diff"),
            pl.lit(5.0).alias("laplacian_energy"), pl.lit(0.0).alias("featureless_fraction"),
        )  # fmt: skip
        videos.append(VideoFrames(url, 4.0, table, rng.normal(size=(n, 4)).astype(np.float16)))
    prompts = (rng.normal(size=4), rng.normal(size=4), 10.0)
    data = labelled_frames(videos, labels, prompts, VideoConfig(input="x", sample_fps=4))
    assert sorted(set(data.video.tolist())) == ["s3://f/a/cam.mp4", "s3://f/b/cam.mp4"]
    truth = {u: data.y[data.video == u].nonzero()[0].tolist() for u in set(data.video.tolist())}
    assert truth == {"s3://f/a/cam.mp4": [0, 1, 2, 3], "s3://f/b/cam.mp4": [4, 5, 6, 7]}
