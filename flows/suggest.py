"""`curate nearmiss suggest`: the spans to review next (`tasks/review/suggest.py`), from the
score stage's cache (videos not cached yet are scored by the video flow's own tasks), the
current head (`--head`, else `video.head`) and the labels so far. A video the labels name is
labelled throughout (the labels rule), so none of its spans is suggested: its windows are
the k-center's first centres instead."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import polars as pl

from flows.common import InputError
from flows.dates import date_range
from flows.nearmiss import score_urls, with_head
from flows.plan import config_files, list_inputs
from flows.video import check_head, detect, run_head
from schemas.config import CurateConfig
from tasks.io import storage
from tasks.review import suggest as sg
from tasks.video.labels import LabelError, LabelRow, match_inputs, read_labels
from tasks.video.score import VideoScores, load_video_scores

logger = logging.getLogger(__name__)
REVIEW_COLUMNS = {
    "rank": pl.Int64, "partition": pl.String, "video": pl.String, "start_s": pl.Float64,
    "end_s": pl.Float64, "fps": pl.Float64, "duration_s": pl.Float64, "frames": pl.Int64,
    "priority": pl.Float64, "uncertainty": pl.Float64, "disagreement": pl.Float64,
    "score_max": pl.Float64, "p_zero_shot_max": pl.Float64, "p_head_max": pl.Float64,
    "distance": pl.Float64,
}  # fmt: skip


def inputs_in_range(cfg: CurateConfig, start: str, end: str, labels: list[LabelRow]) -> list:
    """(partition, url, labelled) of every input of every date with inputs; an input
    listed on several dates (a pattern without `{date}`) counts once, at its first date."""
    found: list[tuple[str, str, bool]] = []
    seen: set[str] = set()
    for day in date_range(start, end):
        try:
            urls = list_inputs(cfg.video.input, day, cfg.storage_options, "video.input")
        except InputError:
            continue  # a date without videos
        try:
            named = set(match_inputs(labels, urls)[0]) if labels else set()
        except LabelError as err:
            raise InputError(str(err)) from None
        found += [(day, u, u in named) for u in urls if u not in seen]
        seen.update(urls)
    if not found:
        raise InputError(f"video.input: no input files from {start} to {end}")
    return found


def windows(cfg: CurateConfig, results: list[VideoScores], frames: pl.DataFrame,
            days: dict[str, str], window_s: float) -> dict[str, sg.Windows]:  # fmt: skip
    """Candidate windows of every ok video, by URL."""
    out = {}
    thr = cfg.video.events.start
    for vs in results:
        if vs.probe["status"] != "ok":
            continue
        f = frames.filter(pl.col("video") == vs.url).sort("t_s")
        _, emb = load_video_scores(vs, cfg.storage_options)
        cols = {c: f[c].cast(pl.Float64).fill_null(np.nan).to_numpy()
                for c in ("score", "p_near_miss", "p_head")}  # fmt: skip
        cols["usable"] = ~f["ood_flag"].to_numpy()
        base = {"partition": days[vs.url], "video": vs.url, "fps": float(vs.probe["fps"]),
                "duration_s": float(vs.probe["duration_s"])}  # fmt: skip
        rows = emb[f["emb_row"].to_numpy()]
        out[vs.url] = sg.video_windows(base, f["t_s"].to_numpy(), cols, rows,
                                       base["duration_s"], window_s, thr)  # fmt: skip
    return out


def suggest(
    cfg: CurateConfig, start: str, end: str, n: int, labels: list[str], head: str | None,
    window_s: float, out: str,
) -> dict[str, Any]:  # fmt: skip
    """Write review.parquet (REVIEW_COLUMNS, best first); returns a summary."""
    if cfg.video is None:
        raise InputError("config: nearmiss suggest needs a 'video' section")
    if n < 1 or window_s <= 0:
        raise InputError("nearmiss suggest: --n must be >= 1 and --window-s > 0")
    cfg = with_head(cfg, head) if head else cfg
    files = config_files(cfg, "video")  # the head's bytes, as a run would plan them
    check_head(cfg, files)
    rows = [r for path in labels for r in read_labels(path)]
    todo = inputs_in_range(cfg, start, end, rows)
    results, prompts, scored = score_urls(cfg, [u for _, u, _ in todo])
    frames = detect(cfg, results, prompts, run_head(cfg, files, results))[1]
    per_video = windows(cfg, results, frames, {u: d for d, u, _ in todo}, window_s)
    labelled = {u for _, u, is_labelled in todo if is_labelled}
    cands = sg.concat([w for u, w in per_video.items() if u not in labelled])
    centres = sg.concat([w for u, w in per_video.items() if u in labelled]).emb
    picks = sg.select(cands, centres, n)
    if len(picks) < n:
        logger.warning("only %d candidate window(s) for %d suggestion(s)", len(picks), n)
    table = pl.DataFrame(picks, schema=REVIEW_COLUMNS) if picks else pl.DataFrame(
        schema=REVIEW_COLUMNS)  # fmt: skip
    storage.write_parquet(table, out, cfg.storage_options)
    return {
        "out": out, "suggestions": table.height, "candidates": len(cands.rows),
        "videos": len(todo), "labelled_videos": len(labelled), "videos_scored": scored,
        "head": cfg.video.head,
    }  # fmt: skip
