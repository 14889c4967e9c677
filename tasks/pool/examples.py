"""Pictures a person can judge thresholds by: grids of example samples per decision.

Which samples are shown is decided first (`pick_examples`, a pure function of the samples
table, recorded in `examples.json` so a reader, or a test, can check the choice), then their
image bytes are read back from the input shards (the bytes that were scored and, for kept
samples, published) and drawn small. Quarantined samples have no usable image and get no grid.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable, Iterable
from typing import Any

import polars as pl
from matplotlib.figure import Figure
from PIL import Image

from tasks.io import storage
from tasks.publish.report import DPI, save_figure

PER_GROUP = 6
DEDUP_GROUPS = 4  # duplicate groups pictured
THUMB = 128
EXAMPLES_FILE = "examples.json"

# rejection statuses whose samples have an image worth showing, by their reason code
_PICTURED = ("filtered_text", "filtered_image", "filtered_head", "filtered_balance")


def pick_examples(samples: pl.DataFrame, per_group: int = PER_GROUP) -> dict[str, list[str]]:
    """uids to show, per group: `kept` (the lowest-scoring kept: those nearest the cut),
    `filtered_clip` (the highest-scoring filtered: nearest the cut from below), and each
    rejection reason (its first samples in input order)."""
    out: dict[str, list[str]] = {}
    status = pl.col("status").cast(pl.String)
    kept = samples.filter(status == "kept").sort("clip_score", "uid", nulls_last=True)
    if kept.height:
        out["kept"] = kept["uid"].head(per_group).to_list()
    below = samples.filter(status == "filtered_clip").sort(
        ["clip_score", "uid"], descending=[True, False], nulls_last=True
    )
    if below.height:
        out["filtered_clip"] = below["uid"].head(per_group).to_list()
    rejected = samples.filter(status.is_in(_PICTURED) & pl.col("error").is_not_null())
    for (reason,), rows in rejected.group_by("error", maintain_order=True):
        out[str(reason)] = rows["uid"].head(per_group).to_list()
    return dict(sorted(out.items(), key=lambda kv: (kv[0] != "kept", kv[0] != "filtered_clip")))


def grid_name(group: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in group)
    return f"plots/examples_{safe}.png"


def _thumb(data: bytes | None) -> Any:
    try:
        img = Image.open(io.BytesIO(data or b""))
        img.draft("RGB", (THUMB * 2, THUMB * 2))
        img = img.convert("RGB")
        img.thumbnail((THUMB, THUMB))
        return img
    except Exception:
        return None


def draw_grid(items: list[tuple[bytes | None, str]], title: str) -> Any:
    """A matplotlib figure: one small image per item with its label under it."""
    cols = min(len(items), PER_GROUP)
    rows = -(-len(items) // cols)
    fig = Figure(figsize=(2.0 * cols, 2.4 * rows), dpi=DPI)
    for k, (data, label) in enumerate(items):
        ax = fig.add_subplot(rows, cols, k + 1)
        img = _thumb(data)
        if img is not None:
            ax.imshow(img)
        ax.set_axis_off()
        ax.set_title("\n".join(textwrap.wrap(label, 24)[:4]), fontsize=6)
    fig.suptitle(title, fontsize=9)
    return fig


def _distance(member: dict[str, Any]) -> str:
    method, d = member.get("method"), member.get("distance")
    if method == "perceptual" and d is not None:
        return f"pHash distance {d:g}"
    if method == "semantic" and d is not None:
        return f"cosine {d:.4f}"
    return str(method)


def _label(row: dict[str, Any]) -> str:
    score = row.get("clip_score")
    caption = (row.get("caption") or "")[:60]
    return f"{row['uid']} · {'-' if score is None else f'{score:.3f}'} · {caption}"


def write_example_grids(
    samples: pl.DataFrame,
    images: Callable[[pl.DataFrame], dict[str, bytes]],
    dedup_groups: pl.DataFrame | None,
    out_url: str,
    so: dict | None,
) -> tuple[list[str], dict[str, list[str]]]:
    """Write examples.json and one grid per group; returns (files written, the choice)."""
    chosen = pick_examples(samples)
    groups: list[list[str]] = []
    if dedup_groups is not None and dedup_groups.height:
        for (_,), rows in dedup_groups.group_by("group", maintain_order=True):
            groups.append(rows["uid"].head(PER_GROUP).to_list())
            if len(groups) == DEDUP_GROUPS:
                break
    wanted = {u for us in chosen.values() for u in us} | {u for g in groups for u in g}
    # a repeated uid has several rows: picture the one that was not quarantined
    rows = (
        samples.filter(pl.col("uid").is_in(list(wanted)))
        .sort(pl.col("status").cast(pl.String) == "quarantined", maintain_order=True)
        .unique("uid", keep="first", maintain_order=True)
    )
    data = images(rows)
    by_uid = {r["uid"]: r for r in rows.iter_rows(named=True)}
    written = []
    for group, uids in chosen.items():
        items = [(data.get(u), _label(by_uid[u])) for u in uids]
        written.append(save_figure(draw_grid(items, group), out_url, grid_name(group), so))
    if groups:
        assert dedup_groups is not None
        dist = {(r["group"], r["uid"]): r for r in dedup_groups.iter_rows(named=True)}
        items = []
        for g in groups:
            for u in g:
                d = dist.get((g[0], u), {})
                what = "survivor" if d.get("survivor") else _distance(d)
                items.append((data.get(u), f"{u} · {what}"))
        fig = draw_grid(items, "duplicate groups (survivor first)")
        written.append(save_figure(fig, out_url, grid_name("duplicate_groups"), so))
        chosen = {**chosen, "duplicate_groups": [u for g in groups for u in g]}
    storage.write_json(storage.join(out_url, EXAMPLES_FILE), chosen, so)
    return [*written, EXAMPLES_FILE], chosen


def examples_markdown(chosen: dict[str, list[str]]) -> list[str]:
    return [f"### {group}\n\n![{group}]({grid_name(group)})" for group in chosen]


def read_images(
    rows: pl.DataFrame, read: Callable[[str, list[int]], Iterable[tuple[int, bytes | None]]]
) -> dict[str, bytes]:
    """uid -> image bytes of `rows`, one pass over each source shard they come from."""
    out: dict[str, bytes] = {}
    for (source,), part in rows.group_by("source", maintain_order=True):
        uid_of = dict(zip(part["index"].to_list(), part["uid"].to_list(), strict=True))
        for index, data in read(str(source), sorted(uid_of)):
            if data is not None and index in uid_of:
                out[uid_of[index]] = data
    return out
