"""Human report of a video partition: per-video table, event rate, score timelines.

A reviewer checks the detector by eye: the timeline of each video shows the raw and smoothed
score against the start/stop thresholds, with detected events shaded red and frames flagged
out-of-distribution (left out of detection) shaded grey, so a missed or spurious event is
visible at a glance. Plots are capped so a night with thousands of videos stays cheap.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import polars as pl

from schemas.tables import SCORED_VIDEO
from tasks.publish.report import (
    md_table,
    new_figure,
    plot_status_counts,
    reasons_table,
    save_figure,
    status_counts_table,
    timings_table,
    write_text,
)

logger = logging.getLogger(__name__)

MAX_TIMELINES = 50
MAX_EVENT_ROWS = 200
PLOT_STATUS = "plots/video_status_counts.png"


def short_names(urls: Iterable[str | None]) -> dict[str, str]:
    """Each URL's shortest path end (whole components) that no other URL ends with: its
    file name, or `a/cam.mp4` beside `b/cam.mp4` (videos are keyed by full URL; this is
    only what a person reads)."""
    parts = {u: u.replace("\\", "/").rstrip("/").split("/") for u in set(urls) if u}
    out: dict[str, str] = {}
    depth = 1
    while len(out) < len(parts):
        tails = {u: "/".join(p[-depth:]) for u, p in parts.items() if u not in out}
        seen = Counter("/".join(p[-depth:]) for p in parts.values())
        for u, tail in tails.items():
            if seen[tail] == 1 or depth >= len(parts[u]):
                out[u] = tail if seen[tail] == 1 else u
        depth += 1
    return out


def timeline_path(n: int) -> str:
    return f"plots/timeline_{n}.png"


def _events_per_video(events: pl.DataFrame) -> dict[str, int]:
    if events.is_empty():
        return {}
    return dict(events.group_by("video").len().iter_rows())


def ood_spans(frames: pl.DataFrame) -> list[tuple[float, float]]:
    """Time spans of consecutive OOD-flagged frames, each frame lasting until the next one
    (the last one as long as the frame before it)."""
    if frames.is_empty() or "ood_flag" not in frames.columns:
        return []
    f = frames.sort("t_s")
    t = f["t_s"].to_numpy()
    flag = f["ood_flag"].fill_null(False).to_numpy().astype(np.int8)
    step = float(np.median(np.diff(t))) if len(t) > 1 else 1.0
    ends = np.r_[t[1:], t[-1] + step]
    edges = np.flatnonzero(np.diff(np.r_[0, flag, 0]))
    return [(float(t[a]), float(ends[b - 1])) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def plot_timeline(
    video: str,
    frames: pl.DataFrame,
    events: pl.DataFrame,
    thresholds: Mapping[str, float],
    out_url: str,
    rel: str,
    so: dict | None,
    title: str | None = None,
) -> str:
    """Score and smoothed score vs time, thresholds as lines, events and OOD frames shaded;
    the telemetry cue (robust z, right axis) where the video has telemetry."""
    fig, ax = new_figure()
    f = frames.sort("t_s")
    _plot_telemetry(ax, f)
    for i, (s, e) in enumerate(ood_spans(f)):
        ax.axvspan(s, e, color="grey", alpha=0.3, label="OOD (ignored)" if i == 0 else None)
    ax.plot(f["t_s"].to_numpy(), f["score"].to_numpy(), linewidth=0.8, alpha=0.6, label="score")
    ax.plot(f["t_s"].to_numpy(), f["smoothed"].to_numpy(), linewidth=1.5, label="smoothed")
    if thresholds.get("start") is not None:
        ax.axhline(thresholds["start"], color="red", linestyle="--", linewidth=1, label="start")
    if thresholds.get("stop") is not None:
        ax.axhline(thresholds["stop"], color="orange", linestyle=":", linewidth=1, label="stop")
    for i, (s, e) in enumerate(events.select("start_s", "end_s").iter_rows()):
        ax.axvspan(s, e, color="red", alpha=0.15, label="event" if i == 0 else None)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("score")
    ax.set_title(f"{title or video} ({events.height} events)", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    return save_figure(fig, out_url, rel, so)


def _plot_telemetry(ax: Any, frames: pl.DataFrame) -> None:
    if "telemetry" not in frames.columns or frames["telemetry"].is_null().all():
        return
    right = ax.twinx()
    z = frames["telemetry"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    right.plot(frames["t_s"].to_numpy(), z, color="purple", linewidth=0.8, alpha=0.7)
    right.set_ylabel("telemetry cue (robust z)", color="purple", fontsize=8)


def _timelines(
    videos: pl.DataFrame,
    frames: pl.DataFrame,
    events: pl.DataFrame,
    thresholds: Mapping[str, float],
    out_url: str,
    so: dict | None,
) -> dict[str, str]:
    """One timeline per scored video (ok or recovered), up to MAX_TIMELINES: {video: rel path}.

    Past the cap the videos with the most events come first (what a reviewer checks), then
    the others in table order."""
    ok = videos.filter(pl.col("status").cast(pl.String).is_in(SCORED_VIDEO))["video"].to_list()
    per_video = _events_per_video(events)
    ok = sorted(ok, key=lambda v: -per_video.get(v, 0)) if len(ok) > MAX_TIMELINES else ok
    out: dict[str, str] = {}
    short = short_names(videos["video"].to_list())
    for n, video in enumerate(ok[:MAX_TIMELINES]):
        vf = frames.filter(pl.col("video") == video)
        ve = events.filter(pl.col("video") == video)
        rel = timeline_path(n)
        out[video] = plot_timeline(video, vf, ve, thresholds, out_url, rel, so, short[video])
    return out


def _video_table(videos: pl.DataFrame, per_video: dict[str, int], plots: dict[str, str]) -> str:
    rows: list[list[Any]] = []
    short = short_names(videos["video"].to_list())
    for n, v in enumerate(videos.iter_rows(named=True)):
        link = f"[plot]({plots[v['video']]})" if v["video"] in plots else ""
        name = short.get(v["video"], "")
        status = str(v["status"])
        rows.append(
            [n, name, v["duration_s"], status, v["error"], per_video.get(v["video"], 0), link]
        )
    return md_table(["#", "video", "duration s", "status", "error", "events", "timeline"], rows)


def _events_table(events: pl.DataFrame) -> str:
    if events.is_empty():
        return "No events detected."
    cols = ["event_id", "video", "start_s", "end_s", "peak_s", "peak_score", "key"]
    ev = events.sort("video", "start_s").head(MAX_EVENT_ROWS)
    short = short_names(events["video"].to_list())
    rows = [[*r[:1], short.get(r[1], ""), *r[2:]] for r in ev.select(cols).iter_rows()]
    table = md_table(cols, rows)
    if events.height > MAX_EVENT_ROWS:
        table += f"\n\nShowing the first {MAX_EVENT_ROWS} of {events.height} events."
    return table


def _rate_line(stats: Mapping[str, Any], videos: pl.DataFrame, events: pl.DataFrame) -> str:
    hours = stats.get("video_hours")
    if hours is None:
        ok = videos.filter(pl.col("status").cast(pl.String).is_in(SCORED_VIDEO))
        hours = float(ok["duration_s"].fill_null(0).sum()) / 3600.0
    n = int(stats.get("events", events.height))
    cut = int(stats.get("clips", n))  # the rate counts published events: those with a clip
    rate = stats.get("events_per_hour", cut / hours if hours else None)
    rate_s = f"{rate:.3g}" if rate is not None else "–"
    if cut == n:
        return f"{n} events in {hours:.3g} h of video: **{rate_s} events per hour**."
    return (
        f"{n} events in {hours:.3g} h of video, {n - cut} without a clip (could not be cut): "
        f"**{rate_s} published events per hour**."
    )


def _ood_line(stats: Mapping[str, Any], thresholds: Mapping[str, Any]) -> str:
    n = stats.get("ood_frames", 0)
    cues = ", ".join(f"{c} {k}" for c, k in (stats.get("ood_cues") or {}).items())
    return (
        f"Frames flagged out-of-distribution (ood > {thresholds.get('ood')}), left out of "
        f"event detection and shaded grey on the timelines: {n}" + (f" ({cues})." if cues else ".")
    )


def _video_markdown(
    videos: pl.DataFrame,
    events: pl.DataFrame,
    stats: Mapping[str, Any],
    thresholds: Mapping[str, float],
    plots: dict[str, str],
) -> str:
    n_ok = videos.filter(pl.col("status").cast(pl.String).is_in(SCORED_VIDEO)).height
    capped = (
        f"Timelines shown for {MAX_TIMELINES} of {n_ok} scored videos (capped; the videos "
        "with the most events first)."
        if n_ok > MAX_TIMELINES
        else f"Timelines for all {n_ok} scored videos."
    )
    parts = [
        f"# Video report: {stats.get('dataset')} / {stats.get('partition')}",
        "## Counts by status",
        status_counts_table(stats.get("counts") or {}),
        f"![status counts]({PLOT_STATUS})",
        "## Events",
        _rate_line(stats, videos, events),
        f"Frames scored: {stats.get('frames', '–')}. "
        f"Thresholds: start {thresholds.get('start')}, stop {thresholds.get('stop')}.",
        _ood_line(stats, thresholds),
        "## Reasons",
        reasons_table(stats.get("reasons") or {}),
        "## Videos",
        capped,
        _video_table(videos, _events_per_video(events), plots),
        "## Event list",
        _events_table(events),
        "## Timings",
        timings_table(stats.get("timings") or {}),
    ]
    return "\n\n".join(parts) + "\n"


def write_video_report(
    videos: pl.DataFrame,
    frames: pl.DataFrame,
    events: pl.DataFrame,
    stats: dict,
    thresholds: dict,
    out_url: str,
    storage_options: dict | None = None,
) -> list[str]:
    """Write report.md and plots/*.png under `out_url`; return the relative paths written."""
    so = storage_options
    plots = _timelines(videos, frames, events, thresholds, out_url, so)
    status_plot = plot_status_counts(stats.get("counts") or {}, out_url, PLOT_STATUS, so)
    md = _video_markdown(videos, events, stats, thresholds, plots)
    written = [status_plot, *plots.values(), write_text(out_url, "report.md", md, so)]
    logger.info("wrote video report to %s (%d files)", out_url, len(written))
    return written
