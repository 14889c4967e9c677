"""The worldwide part of a pool report: per-language balancing figures and one plot.

Reads only the partition's stats (`balance` with `mode: worldwide`), so `curate report`,
the card and report.md say the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tasks.publish.report import md_table, new_figure, no_data, save_figure, share

PLOT_KEPT_SHARE = "plots/metaclip_kept_share_by_language.png"
PLOT_LANGUAGES = 40  # bars shown: the languages with the most captions


def _by_captions(languages: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, Mapping]]:
    return sorted(languages.items(), key=lambda kv: (-int(kv[1].get("captions", 0)), kv[0]))


def _head(row: Mapping[str, Any]) -> str:
    return ", ".join(f"{h['entry']} ({h['count']})" for h in row.get("head") or []) or "–"


def worldwide_section(balance: Mapping[str, Any]) -> str:
    """Markdown: how p was set, then per metadata language captions, matched, t_L, kept,
    kept share and the head entries; then the captions no list covers."""
    langs = balance.get("languages") or {}
    p, source = balance.get("tail_fraction"), balance.get("tail_fraction_from")
    how = f"English's t = {balance.get('t')}" if source == "t" else "configured"
    rows = [
        [code, r.get("captions"), r.get("matched"), r.get("t"), r.get("kept"),
         share(r.get("kept", 0), r.get("captions", 0)), _head(r)]
        for code, r in _by_captions(langs)
    ]  # fmt: skip
    lost = balance.get("without_metadata") or {}
    listed = balance.get("metadata_languages") or []
    parts = [
        f"Worldwide balancing (MetaCLIP 2): tail fraction p = {p if p is None else f'{p:.6g}'} "
        f"({how}); {len(listed)} metadata languages, {len(langs)} with captions here. "
        "A language's threshold t_L is the count at which its sorted entry counts reach the "
        "share p of its matches; entries counted t_L or more are sampled down to t_L.",
        md_table(
            ["language", "captions", "matched", "t_L", "kept", "kept share", "head entries"],
            rows,
        )
        if rows
        else "No caption has a metadata language.",
    ]
    if lost:
        parts.append(
            "Captions with no list for their language (they match nothing and are dropped), "
            "by identifier code (`none`: no letters):"
        )
        parts.append(md_table(["language", "captions"], sorted(lost.items())))
    return "\n\n".join(parts)


def plot_kept_share(balance: Mapping[str, Any], out_url: str, so: dict | None) -> str:
    """Bars of kept / captions per metadata language (the most captioned first)."""
    fig, ax = new_figure()
    rows = _by_captions(balance.get("languages") or {})[:PLOT_LANGUAGES]
    if rows:
        shares = [r["kept"] / r["captions"] if r.get("captions") else 0.0 for _, r in rows]
        x = np.arange(len(rows))
        ax.bar(x, shares)
        ax.set_xticks(x, [code for code, _ in rows], rotation=90, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("kept / captions")
        ax.set_xlabel("metadata language (most captions first)")
    else:
        no_data(ax, "no caption has a metadata language")
    ax.set_title("MetaCLIP 2: kept share by language")
    return save_figure(fig, out_url, PLOT_KEPT_SHARE, so)
