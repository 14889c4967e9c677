"""Markdown and plot helpers shared by the pool and video reports.

A report is for a person deciding whether last night's run looks right, so it leads with the
numbers that must add up (input = every status) and shows the check instead of trusting it.

Figures are built with `matplotlib.figure.Figure`, never pyplot: pyplot keeps global state
that is not thread-safe, and flows write reports from worker threads. Drawing is not
thread-safe either (mathtext's parser, which lays out log-scale tick labels, and the shared
FreeType fonts), and a backfill draws the reports of several partitions at once: every figure
is drawn only in `save_figure`, under one process-wide lock.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np
from matplotlib.figure import Figure

from tasks.io import storage

logger = logging.getLogger(__name__)

FIGSIZE = (6.0, 3.5)
DPI = 100
TOP_REASONS = 15

PLOT_STATUS = "plots/status_counts.png"
PLOT_REASONS = "plots/top_reasons.png"

# Held while a figure is laid out and rendered: the only place matplotlib draws.
_DRAW_LOCK = threading.Lock()


class ReportError(RuntimeError):
    """A report (or one of its figures) could not be drawn or written.

    The report is part of the published version, so the run fails; everything before it
    (per-input scores, matches, embeddings) is already cached, so a re-run only selects and
    publishes again.
    """


def first_line(err: BaseException) -> str:
    """The first non-blank line of an error (mathtext's messages start with a newline)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def partition_report(write: Callable[[], list[str]], partition: str) -> list[str]:
    """`write()`, with any failure but the store's (OSError) or memory's as one ReportError
    line that says what is lost: nothing was published, no scoring is."""
    try:
        return write()
    except (OSError, MemoryError):
        raise  # infrastructure: reported as what it is
    except Exception as err:
        what = str(err) if isinstance(err, ReportError) else first_line(err)
        raise ReportError(
            f"report of {partition} not written ({what}); nothing was published and the "
            "scores stay cached: re-run to publish"
        ) from err


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


def render_png(fig: Figure) -> bytes:
    """`fig` laid out and rendered as PNG, under the drawing lock.

    A caption in a script the bundled font lacks draws as boxes: its warning says nothing
    a reader of the log can act on. The filter is set under the lock too (warning filters
    are process-global).
    """
    buf = io.BytesIO()
    with _DRAW_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def save_figure(fig: Figure, out_url: str, rel: str, storage_options: dict | None) -> str:
    """Render `fig` as PNG to `out_url/rel` through storage (works on object stores); a
    figure that cannot be drawn is a `ReportError` naming it."""
    try:
        data = render_png(fig)
    except MemoryError:
        raise
    except Exception as err:
        raise ReportError(f"figure {rel}: {first_line(err)}") from err
    storage.write_bytes(storage.join(out_url, rel), data, storage_options)
    return rel


def no_data(ax: Any, text: str) -> None:
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
        no_data(ax, "no rejected items")
    ax.set_title(f"Top {TOP_REASONS} reasons")
    return save_figure(fig, out_url, rel, so)


def write_text(out_url: str, rel: str, text: str, so: dict | None) -> str:
    storage.write_bytes(storage.join(out_url, rel), text.encode("utf-8"), so)
    return rel
