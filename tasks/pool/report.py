"""Human report of a pool partition: report.md plus a few small plots.

The report leads with the numbers that must add up (input = every status), then the
reasons, CLIP scores and MetaCLIP balancing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import polars as pl

from schemas.tables import STATUSES
from tasks.metaclip.report import plot_kept_share, worldwide_section
from tasks.pool.examples import examples_markdown, write_example_grids
from tasks.pool.quality import top_repeated
from tasks.publish.report import (
    PLOT_REASONS,
    PLOT_STATUS,
    fmt,
    md_table,
    new_figure,
    no_data,
    plot_status_counts,
    plot_top_reasons,
    reasons_table,
    save_figure,
    status_counts_table,
    timings_table,
    write_text,
)

logger = logging.getLogger(__name__)

QUANTILES = ("p01", "p05", "p25", "p50", "p75", "p95", "p99")
PLOT_SCORES = "plots/clip_score_hist.png"
PLOT_ENTRIES = "plots/metaclip_rank_counts.png"
PLOT_TOKENS = "plots/caption_tokens.png"
CONTEXT = 77  # tokens an OpenAI-vocabulary CLIP text tower reads


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
        no_data(ax, "no metadata matches")
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
        no_data(ax, "no scored samples")
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
    if balance.get("mode") == "worldwide":
        return worldwide_section(balance) + "\n\n" + _balance_table(balance)
    return _balance_table(balance)


def _balance_table(balance: Mapping[str, Any]) -> str:
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


def plot_caption_tokens(samples: pl.DataFrame, out_url: str, so: Any) -> str:
    """Caption length in the model's tokens, with the context the model reads."""
    fig, ax = new_figure()
    n = samples["n_tokens"].drop_nulls().to_numpy() if "n_tokens" in samples.columns else []
    if len(n):
        ax.hist(n, bins=min(60, max(10, int(n.max() - n.min()) + 1)))
        ax.axvline(CONTEXT, color="black", linestyle="--", label=f"context {CONTEXT}")
        ax.set_xlabel("caption tokens (incl. start/end)")
        ax.set_ylabel("captions")
        ax.legend(fontsize=8)
    else:
        no_data(ax, "no token counts")
    ax.set_title("Caption length")
    return save_figure(fig, out_url, PLOT_TOKENS, so)


def _captions_section(samples: pl.DataFrame) -> str:
    """Languages, truncation and the most repeated captions of the partition."""
    if "lang" not in samples.columns:
        return "No caption facts recorded."
    langs = samples.group_by(pl.col("lang").fill_null("none")).len()
    langs = langs.sort(["len", "lang"], descending=[True, False]).head(10)
    total = max(samples.height, 1)
    rows = [[lang, n, f"{100 * n / total:.2f}%"] for lang, n in langs.iter_rows()]
    truncated = int(samples["truncated"].fill_null(False).sum())
    scored = int(samples["clip_score"].is_not_null().sum())
    judged = int(
        (samples["truncated"].fill_null(False) & samples["clip_score"].is_not_null()).sum()
    )
    top = top_repeated(samples["caption"], 10).filter(pl.col("count") > 1)
    return "\n\n".join(
        [
            md_table(["language", "captions", "share"], rows),
            f"Captions longer than the model's context: {truncated} "
            f"({judged} of {scored} CLIP scores judge only a prefix).",
            "Repeated captions (normalised: case, whitespace, digits), most frequent first:",
            md_table(["caption", "count"], [[ex, c] for _, c, ex in top.iter_rows()])
            if top.height
            else "none",
        ]
    )


def _pool_markdown(
    samples: pl.DataFrame,
    stats: Mapping[str, Any],
    plots: list[str],
    examples: dict[str, list[str]] | None = None,
) -> str:
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
        "## Captions",
        _captions_section(samples),
        "## Deduplication",
        _dedup_section(stats.get("reasons") or {}),
        "## Examples",
        *(examples_markdown(examples) if examples else ["No examples drawn."]),
        "## Plots",
        *[f"![{p.removeprefix('plots/').removesuffix('.png')}]({p})" for p in plots],
        "## Timings",
        timings_table(stats.get("timings") or {}),
    ]
    return "\n\n".join(parts) + "\n"


def _dedup_section(reasons: Mapping[str, int]) -> str:
    rows = [[k, v] for k, v in sorted(reasons.items()) if k.startswith("duplicate:")]
    if not rows:
        return "No duplicates."
    return md_table(["method", "duplicates"], rows)


def write_pool_report(
    samples: pl.DataFrame,
    stats: dict,
    out_url: str,
    storage_options: dict | None = None,
    entry_counts: tuple[np.ndarray, np.ndarray] | None = None,
    images: Callable[[pl.DataFrame], dict[str, bytes]] | None = None,
    dedup_groups: pl.DataFrame | None = None,
) -> list[str]:
    """Write report.md and plots/*.png under `out_url`; return the relative paths written.

    `images(rows)` reads the image bytes of sample rows (uid -> bytes): with it the report
    shows example grids per decision and pictures of duplicate groups.
    """
    so, counts = storage_options, stats.get("counts") or {}
    threshold = (stats.get("clip_score") or {}).get("threshold")
    plots = [
        plot_score_hist(samples, threshold, out_url, so),
        plot_status_counts(counts, out_url, PLOT_STATUS, so),
        plot_top_reasons(stats.get("reasons") or {}, out_url, PLOT_REASONS, so),
        plot_caption_tokens(samples, out_url, so),
    ]
    if entry_counts is not None:
        balance = stats.get("balance") or {}
        worldwide = balance.get("mode") == "worldwide"
        plots.append(
            plot_entry_ranks(entry_counts, None if worldwide else balance.get("t"), out_url, so)
        )
        if worldwide:
            plots.append(plot_kept_share(balance, out_url, so))
    grids, examples = [], None
    if images is not None:
        grids, examples = write_example_grids(samples, images, dedup_groups, out_url, so)
    md = _pool_markdown(samples, stats, plots, examples)
    written = [*plots, *grids, write_text(out_url, "report.md", md, so)]
    logger.info("wrote pool report to %s (%d files)", out_url, len(written))
    return written
