"""Human report of a pool partition: report.md plus a few small plots.

The report is for a person deciding whether last night's run looks right, so it leads with the
numbers that must add up (input = every status) and shows the check instead of trusting it.
The markdown/plot helpers here are shared with the video report.

Figures are built with `matplotlib.figure.Figure`, never pyplot: pyplot keeps global state
that is not thread-safe, and flows write reports from worker threads.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np
import polars as pl
from matplotlib.figure import Figure

from schemas.tables import STATUSES
from tasks.io import storage

logger = logging.getLogger(__name__)

FIGSIZE = (6.0, 3.5)
DPI = 100
TOP_REASONS = 15
QUANTILES = ("p01", "p05", "p25", "p50", "p75", "p95", "p99")

PLOT_SCORES = "plots/clip_score_hist.png"
PLOT_STATUS = "plots/status_counts.png"
PLOT_REASONS = "plots/top_reasons.png"
PLOT_ENTRIES = "plots/metaclip_rank_counts.png"


# ---------------------------------------------------------------- shared helpers


def fmt(value: Any, digits: int = 4) -> str:
    """Format a table cell: ints as is, floats to `digits` significant digits, None as '–'."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, bool | int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return f"{float(value):.{digits}g}"
    return str(value)


def _cell(value: Any) -> str:
    """Markdown-safe cell text: pipes and newlines would break the table."""
    return fmt(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _numeric(column: list[Any]) -> bool:
    """Numbers, or percentages rendered as text ('41.7%'); blanks do not count."""
    vals = [v for v in column if v not in (None, "", "–")]
    return bool(vals) and all(
        isinstance(v, int | float | np.number) or (isinstance(v, str) and v.endswith("%"))
        for v in vals
    )


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; columns holding only numbers are right-aligned."""
    cols = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in header]
    align = ["---:" if _numeric(c) else "---" for c in cols]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def share(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "–"


def status_counts_table(counts: Mapping[str, int]) -> str:
    """Counts per status (every key but 'input'), their sum, and the check sum == input."""
    total_in = int(counts.get("input", 0))
    statuses = [(k, int(v)) for k, v in counts.items() if k != "input"]
    rows: list[list[Any]] = [[k, v, share(v, total_in)] for k, v in statuses]
    total = sum(v for _, v in statuses)
    rows += [["**sum**", total, share(total, total_in)], ["**input**", total_in, ""]]
    if total == total_in:
        check = f"Check: sum of statuses = {total} = input ✓"
    else:
        check = f"Check: **MISMATCH**: sum of statuses {total} ≠ input {total_in} ✗"
    return md_table(["status", "count", "share of input"], rows) + "\n\n" + check


def sorted_reasons(reasons: Mapping[str, int]) -> list[tuple[str, int]]:
    """Most frequent first, ties by name, so the report is the same on every run."""
    return sorted(((k, int(v)) for k, v in reasons.items()), key=lambda kv: (-kv[1], kv[0]))


def reasons_table(reasons: Mapping[str, int]) -> str:
    if not reasons:
        return "No rejected or quarantined items."
    total = sum(int(v) for v in reasons.values())
    rows = [[k, v, share(v, total)] for k, v in sorted_reasons(reasons)]
    return md_table(["reason", "count", "share of reasons"], rows)


def timings_table(timings: Mapping[str, float]) -> str:
    if not timings:
        return "No timings recorded."
    return md_table(["stage", "seconds"], [[k, float(v)] for k, v in timings.items()])


def new_figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    return fig, fig.add_subplot()


def save_figure(fig: Figure, out_url: str, rel: str, storage_options: dict | None) -> str:
    """Render `fig` as PNG to `out_url/rel` through storage (works on object stores)."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    storage.write_bytes(storage.join(out_url, rel), buf.getvalue(), storage_options)
    return rel


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_status_counts(counts: Mapping[str, int], out_url: str, rel: str, so: dict | None) -> str:
    fig, ax = new_figure()
    items = [(k, int(v)) for k, v in counts.items() if k != "input"]
    ax.bar([k for k, _ in items], [v for _, v in items], color="tab:blue")
    ax.set_ylabel("count")
    ax.set_title(f"Status counts (input {int(counts.get('input', 0))})")
    ax.tick_params(axis="x", labelrotation=30)
    return save_figure(fig, out_url, rel, so)


def plot_top_reasons(reasons: Mapping[str, int], out_url: str, rel: str, so: dict | None) -> str:
    fig, ax = new_figure()
    top = sorted_reasons(reasons)[:TOP_REASONS]
    if top:
        ax.barh([k for k, _ in top][::-1], [v for _, v in top][::-1], color="tab:red")
        ax.set_xlabel("count")
        ax.tick_params(axis="y", labelsize=7)
    else:
        _no_data(ax, "no rejected items")
    ax.set_title(f"Top {TOP_REASONS} reasons")
    return save_figure(fig, out_url, rel, so)


def write_text(out_url: str, rel: str, text: str, so: dict | None) -> str:
    storage.write_bytes(storage.join(out_url, rel), text.encode("utf-8"), so)
    return rel


# ---------------------------------------------------------------- MetaCLIP distribution


def _head_share(counts: np.ndarray, head: int) -> float:
    total = float(counts.sum())
    if total == 0:
        return 0.0
    top = np.sort(counts)[::-1][:head]
    return float(top.sum()) / total


def entry_distribution_summary(
    counts_before: np.ndarray, counts_after: np.ndarray, head: int = 100
) -> dict:
    """How balancing flattened the entry distribution: entries hit and head/tail shares.

    The head share is the fraction of all (caption, entry) matches held by the `head` most
    frequent entries of that distribution (each ranked by its own counts); tail = 1 - head.
    """
    before = np.asarray(counts_before, dtype=np.int64)
    after = np.asarray(counts_after, dtype=np.int64)
    hb, ha = _head_share(before, head), _head_share(after, head)
    return {
        "head": int(head),
        "entries": len(before),
        "entries_hit_before": int((before > 0).sum()),
        "entries_hit_after": int((after > 0).sum()),
        "matches_before": int(before.sum()),
        "matches_after": int(after.sum()),
        "head_share_before": hb,
        "head_share_after": ha,
        "tail_share_before": 1.0 - hb if before.sum() else 0.0,
        "tail_share_after": 1.0 - ha if after.sum() else 0.0,
    }


def plot_entry_ranks(
    entry_counts: tuple[np.ndarray, np.ndarray], t: int | None, out_url: str, so: dict | None
) -> str:
    """Rank-count (Zipf) plot: balancing should cut the head down to about t."""
    fig, ax = new_figure()
    plotted = False
    for label, counts in zip(("before", "after"), entry_counts, strict=True):
        c = np.sort(np.asarray(counts, dtype=np.int64))[::-1]
        c = c[c > 0]
        if len(c):
            ax.loglog(np.arange(1, len(c) + 1), c, label=f"{label} ({len(c)} entries hit)")
            plotted = True
    if not plotted:
        _no_data(ax, "no metadata matches")
    else:
        if t:
            ax.axhline(t, color="grey", linestyle="--", linewidth=1, label=f"t = {t}")
        ax.set_xlabel("entry rank")
        ax.set_ylabel("matches")
        ax.legend(fontsize=8)
    ax.set_title("MetaCLIP entry counts by rank")
    return save_figure(fig, out_url, PLOT_ENTRIES, so)


# ---------------------------------------------------------------- pool report


def _score_groups(samples: pl.DataFrame) -> dict[str, np.ndarray]:
    """Finite CLIP scores split into kept / filtered_clip / other statuses."""
    df = samples.select(pl.col("clip_score").cast(pl.Float64), pl.col("status").cast(pl.String))
    df = df.filter(pl.col("clip_score").is_not_null() & pl.col("clip_score").is_finite())
    other = ~pl.col("status").is_in(["kept", "filtered_clip"])
    return {
        "kept": df.filter(pl.col("status") == "kept")["clip_score"].to_numpy(),
        "filtered_clip": df.filter(pl.col("status") == "filtered_clip")["clip_score"].to_numpy(),
        "other": df.filter(other)["clip_score"].to_numpy(),
    }


def plot_score_hist(samples: pl.DataFrame, threshold: float | None, out_url: str, so: Any) -> str:
    fig, ax = new_figure()
    groups = {k: v for k, v in _score_groups(samples).items() if len(v)}
    if groups:
        ax.hist(list(groups.values()), bins=50, stacked=True, label=list(groups.keys()))
        if threshold is not None:
            ax.axvline(threshold, color="black", linestyle="--", label=f"cut {threshold:.4g}")
        ax.set_xlabel("CLIP score (cosine)")
        ax.set_ylabel("samples")
        ax.legend(fontsize=8)
    else:
        _no_data(ax, "no scored samples")
    ax.set_title("CLIP score of scored samples")
    return save_figure(fig, out_url, PLOT_SCORES, so)


def _samples_check(samples: pl.DataFrame, counts: Mapping[str, int]) -> str:
    """Cross-check the per-sample table against the stats the flow recorded."""
    got = dict(samples.group_by(pl.col("status").cast(pl.String)).len().iter_rows())
    bad = [s for s in STATUSES if int(got.get(s, 0)) != int(counts.get(s, 0))]
    if not bad and samples.height == int(counts.get("input", 0)):
        return f"samples.parquet agrees: {samples.height} rows, same counts per status ✓"
    diffs = ", ".join(f"{s} {got.get(s, 0)} vs {counts.get(s, 0)}" for s in bad)
    return f"samples.parquet **disagrees** ({samples.height} rows): {diffs} ✗"


def _clip_section(clip: Mapping[str, Any]) -> str:
    q = clip.get("quantiles") or {}
    table = md_table(list(QUANTILES), [[q.get(k) for k in QUANTILES]])
    mode, thr = clip.get("mode"), clip.get("threshold")
    cut = f"Selection: {mode or 'none'}; threshold {fmt(thr)}."
    return f"{table}\n\n{cut}"


def _balance_section(balance: Mapping[str, Any] | None) -> str:
    if not balance:
        return "Balancing: not configured."
    hb, ha = balance.get("head_share_before"), balance.get("head_share_after")
    rows = [
        ["t", balance.get("t")],
        ["seed", balance.get("seed")],
        ["metadata sha256", balance.get("metadata_sha256")],
        ["metadata entries", balance.get("entries")],
        ["entries hit before", balance.get("entries_hit_before")],
        ["entries hit after", balance.get("entries_hit_after")],
        ["head share before", hb],
        ["head share after", ha],
        ["tail share before", balance.get("tail_share_before", None if hb is None else 1 - hb)],
        ["tail share after", balance.get("tail_share_after", None if ha is None else 1 - ha)],
    ]
    return md_table(["", "value"], rows)


def _pool_markdown(samples: pl.DataFrame, stats: Mapping[str, Any], plots: list[str]) -> str:
    counts, shards = stats.get("counts") or {}, stats.get("shards") or {}
    parts = [
        f"# Pool report: {stats.get('dataset')} / {stats.get('partition')}",
        "## Counts by status",
        status_counts_table(counts),
        _samples_check(samples, counts),
        "## Reasons",
        reasons_table(stats.get("reasons") or {}),
        "## Shards",
        md_table(["shards", "count"], [[k, v] for k, v in shards.items()]),
        "## CLIP score quantiles",
        _clip_section(stats.get("clip_score") or {}),
        "## MetaCLIP balancing",
        _balance_section(stats.get("balance")),
        "## Plots",
        *[f"![{p.removeprefix('plots/').removesuffix('.png')}]({p})" for p in plots],
        "## Timings",
        timings_table(stats.get("timings") or {}),
    ]
    return "\n\n".join(parts) + "\n"


def write_pool_report(
    samples: pl.DataFrame,
    stats: dict,
    out_url: str,
    storage_options: dict | None = None,
    entry_counts: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[str]:
    """Write report.md and plots/*.png under `out_url`; return the relative paths written."""
    so, counts = storage_options, stats.get("counts") or {}
    threshold = (stats.get("clip_score") or {}).get("threshold")
    plots = [
        plot_score_hist(samples, threshold, out_url, so),
        plot_status_counts(counts, out_url, PLOT_STATUS, so),
        plot_top_reasons(stats.get("reasons") or {}, out_url, PLOT_REASONS, so),
    ]
    if entry_counts is not None:
        plots.append(
            plot_entry_ranks(entry_counts, (stats.get("balance") or {}).get("t"), out_url, so)
        )
    written = [*plots, write_text(out_url, "report.md", _pool_markdown(samples, stats, plots), so)]
    logger.info("wrote pool report to %s (%d files)", out_url, len(written))
    return written
